"""`anygpt data prepare`: encode a manifest's media into training JSONL with protocol strings."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.options import with_codec_options
from anygpt_core.errors import InputError

if TYPE_CHECKING:
    from rich.progress import Progress

    from anygpt_core.plugins import PluginSet
    from anygpt_core.training.data import PrepareSummary

__all__ = ["register"]

_SHOWN = 20


_Manifest = Annotated[
    Path,
    typer.Argument(
        help="JSONL manifest: text + media paths, or chats.",
        readable=False,  # ours says what is wrong, exit 3 (click's would exit 2)
    ),
]
_Out = Annotated[Path, typer.Argument(help="Training JSONL to write (resumed if interrupted).")]
_MaxTokens = Annotated[
    int, typer.Option("--max-tokens", help="Most span tokens per example; longer are skipped.")
]
_Overwrite = Annotated[bool, typer.Option("--overwrite", help="Start again from scratch.")]
_Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="K/N",
        help="Prepare only the K-th of N parts of the manifest (one per machine), "
        "into OUT.0000K-of-0000N; join them with `anygpt data merge OUT`.",
    ),
]
_Demo = Annotated[
    bool,
    typer.Option("--demo", help="Use the embedded demo's tiny codecs for options not given."),
]


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `data` command group with the installed plugins' codec options."""
    group = typer.Typer(help="Prepare training data.", no_args_is_help=True)
    app.add_typer(group, name="data")

    @group.command("prepare")
    @with_codec_options(plugins.options(), plugins.option_panels())
    def prepare_command(
        manifest: _Manifest,
        out: _Out,
        *,
        workers: Annotated[int, typer.Option("--workers", "-j", help="Encoding processes.")] = 1,
        max_tokens: _MaxTokens = 4096,
        overwrite: _Overwrite = False,
        shard: _Shard = None,
        demo: _Demo = False,
        codec_options: dict[str, Any],
    ) -> None:
        """Replace media paths by protocol strings; bad lines are skipped and listed by number."""
        from anygpt_core.training.data import parse_shard, prepare_dataset

        part = parse_shard(shard) if shard is not None else None
        options = _with_demo(plugins, codec_options) if demo else dict(codec_options)
        progress, update = _progress()
        with progress, _write_errors(out):
            summary = prepare_dataset(
                manifest,
                out,
                plugins=plugins,
                options=options,
                workers=workers,
                max_tokens=max_tokens,
                overwrite=overwrite,
                on_progress=update,
                shard=part,
            )
        _report(summary)
        if summary.written == 0 and part is None:  # a shard's block may hold only bad lines
            raise InputError(f"{manifest}: no usable examples; nothing written to {out}")

    _add_merge(group)


def _add_merge(group: typer.Typer) -> None:
    @group.command("merge")
    def merge_command(
        out: Annotated[
            Path, typer.Argument(help="The OUT all shards were prepared for; written here.")
        ],
        *,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
        ] = False,
    ) -> None:
        """Join OUT.0000K-of-0000N (from `prepare --shard K/N`) into OUT, as one run writes it."""
        from anygpt_core.training.data import merge_shards

        summary = merge_shards(out, overwrite=overwrite)
        _report(summary)
        if summary.written == 0:
            raise InputError(f"{out}: the shards hold no usable examples")


def _with_demo(plugins: PluginSet, codec_options: dict[str, Any]) -> dict[str, Any]:
    """The demo's codec options under those given, said on stderr."""
    from anygpt_cli.console import stderr
    from anygpt_core.demo import ensure_demo

    stderr.print("[yellow]Using the demo codecs: their codes are meaningless.[/yellow]")
    return {**ensure_demo(plugins).options, **codec_options}


def _progress() -> tuple[Progress, Callable[[int, int, int], None]]:
    """A progress bar of the examples encoded (terminals only), and its update callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from anygpt_cli.console import stderr

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=True,
        disable=not stderr.is_terminal,
    )
    task = progress.add_task("encoding", total=None)

    def update(done: int, total: int, skipped: int) -> None:
        progress.update(
            task, completed=done, total=total, description=f"encoding ({skipped} skipped)"
        )

    return progress, update


@contextlib.contextmanager
def _write_errors(out: Path) -> Iterator[None]:
    """A full disk or a read-only one while writing `out`: one line (the run resumes later)."""
    from anygpt_core.files import WRITE_ERRNOS, write_failure

    try:
        yield
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(Path(err.filename) if err.filename else out, err) from err


def _report(summary: PrepareSummary) -> None:
    from rich.table import Table

    from anygpt_cli.console import stdout

    resumed = ""
    if summary.was_complete:
        resumed = " (already complete; --overwrite to start again)"
    elif summary.resumed_at:
        resumed = f" (resumed at line {summary.resumed_at + 1})"
    part = ""
    if summary.shard is not None:
        index, count = summary.shard
        part = f" (shard {index}/{count}: manifest lines {summary.first}-{summary.last})"
    stdout.print(
        f"[green]wrote[/green] {summary.out}: {summary.written} examples from {summary.total} "
        f"lines{part}, {len(summary.skipped)} skipped{resumed}"
    )
    if not summary.skipped:
        return
    counts = Counter(s.kind for s in summary.skipped)
    stdout.print("skipped: " + ", ".join(f"{n} {kind}" for kind, n in counts.most_common()))
    table = Table("line", "reason", box=None, pad_edge=False)
    for item in summary.skipped[:_SHOWN]:
        table.add_row(str(item.line), item.reason)
    stdout.print(table)
    if len(summary.skipped) > _SHOWN:
        stdout.print(f"… and {len(summary.skipped) - _SHOWN} more (see {summary.out}.state.json)")
