"""`anygpt run`: tasks in the seed's instruction format, from arguments, a file or stdin."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.common import (
    DecodingFlags,
    EngineChoice,
    InstructionsFile,
    ModelChoice,
    load_model,
    stdin_lines,
)
from anygpt_cli.options import with_codec_options
from anygpt_core.errors import AnyGPTError, InputError, first_line
from anygpt_core.files import check_input_file, check_output_dir

if TYPE_CHECKING:
    from anygpt_core.api import AnyGPT, Result
    from anygpt_core.plugins import PluginSet

__all__ = ["register"]

HELP = """Run tasks in the seed's format SOURCE|TARGET|INPUT[|VOICE_PROMPT].

Examples: 'text|image|a red bus', 'image|text|photo.jpg', 'speech|text|question.wav',
'text|speech|Hello there|voice.wav', 'text|music|calm piano', 'text|text|Tell me a joke'.
With no INSTRUCTION and no --input-file, instructions are read from stdin, one per line,
with the model kept loaded. Blank lines and lines starting with # are skipped.
"""


def _lines(instructions: list[str] | None, input_file: Path | None) -> Iterable[str]:
    if instructions:
        yield from instructions
    if input_file is not None:
        check_input_file(input_file)
        try:  # a line that is not UTF-8 fails alone, when it is parsed
            text = input_file.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as err:
            raise InputError(f"{input_file}: not a readable text file ({err})") from err
        yield from (line for line in text.splitlines() if _is_task(line))
    if not instructions and input_file is None:
        for line in stdin_lines():
            if line.strip() in {"quit", "exit"}:
                return
            if _is_task(line):
                yield line


def _is_task(line: str) -> bool:
    """Blank lines and `#` comments in a task file or on stdin are skipped."""
    return bool(line.strip()) and not line.lstrip().startswith("#")


_Instruction = Annotated[
    list[str] | None,
    typer.Argument(help="Tasks like 'text|image|a red bus'.", show_default=False),
]
_InputFile = Annotated[
    Path | None,
    typer.Option(
        "--input-file",
        help="Read instructions from a file, one per line.",
        readable=False,  # ours says what is wrong, exit 3 (click's would exit 2)
    ),
]
_NoForceSpan = Annotated[
    bool,
    typer.Option(
        "--no-force-span",
        help="For text->media, leave the span to the model (default: opened after the prompt).",
    ),
]
_DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the prompt and stop.")]
_BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        max=256,
        help="Generate up to N tasks together (output still per task, in input order).",
    ),
]


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `run` command with the installed plugins' options."""

    @app.command("run", help=HELP)
    @with_codec_options(plugins.options(), plugins.option_panels())
    @ModelChoice.options(output_dir=True)
    @DecodingFlags.options()
    @EngineChoice.options()
    def run_command(
        instruction: _Instruction = None,
        *,
        input_file: _InputFile = None,
        model: ModelChoice,
        decoding: DecodingFlags,
        instructions: InstructionsFile = None,
        no_force_span: _NoForceSpan = False,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per task.")] = False,
        dry_run: _DryRun = False,
        batch_size: _BatchSize = 1,
        engine: EngineChoice,
        codec_options: dict[str, Any],
    ) -> None:
        _check_task(plugins, instruction)  # one task fails before loading anything
        model.check()  # an unknown mode fails before loading
        decoding.check(plugins)  # a bad file or flag value fails before the model loads
        url = engine.url()
        if (
            not dry_run
        ):  # a file in the way, no permission or a full disk: found now, not at the end
            check_output_dir(model.output_dir)
        gpt = load_model(
            plugins, model, codec_options=codec_options, instructions=instructions, vllm_url=url
        )
        gpt.engine.max_batch = batch_size
        options = {"config": decoding.config, "seed": decoding.seed, **decoding.overrides}
        options["force_span"] = not no_force_span
        lines = _lines(instruction, input_file)
        single = len(instruction or []) == 1 and input_file is None
        if batch_size == 1 or dry_run:
            failures = _run_each(
                gpt, lines, options, as_json=as_json, dry_run=dry_run, single=single
            )
        else:
            typed = not instruction and input_file is None and _terminal()
            groups = _chunks(lines, batch_size) if typed else [list(lines)]
            failures = sum(
                _run_batch(gpt, group, options, as_json=as_json, single=single) for group in groups
            )
        if failures:
            raise typer.Exit(1)


def _check_task(plugins: PluginSet, instruction: list[str] | None) -> None:
    """One task's modalities must be installed (in a batch, a bad task fails alone, later)."""
    from anygpt_core.tasks import parse_instruction

    for line in instruction if instruction and len(instruction) == 1 else []:
        task = parse_instruction(line)
        for name in {task.source, task.target} - {"text"}:
            plugins.modality(name)


def _run_each(
    gpt: AnyGPT,
    lines: Iterable[str],
    options: dict[str, Any],
    *,
    as_json: bool,
    dry_run: bool,
    single: bool,
) -> int:
    """Run tasks one at a time; print each result or error; return the failures."""
    failures = 0
    for line in lines:
        try:
            _run_one(gpt, line.strip(), options, as_json=as_json, dry_run=dry_run)
        except AnyGPTError as err:
            if single:
                raise
            failures += 1
            sys.stderr.write(f"Error: {first_line(err)}\n")
    return failures


def _terminal() -> bool:
    """Whether stdin is a terminal: tasks typed there run a group at a time, as they come."""
    isatty = getattr(sys.stdin, "isatty", None)
    return bool(isatty and isatty())


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lines in groups of `size` (the last may be shorter), as they are typed."""
    chunk: list[str] = []
    for line in lines:
        chunk.append(line.strip())
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_batch(
    gpt: AnyGPT, lines: list[str], options: dict[str, Any], *, as_json: bool, single: bool
) -> int:
    """Run tasks together; print each result or error in input order; return the failures.

    All tasks go to the engine at once, so it refills a row as soon as one ends, and each
    result is printed as soon as it and those before it are done.
    """
    from anygpt_cli.console import stderr

    failures: list[AnyGPTError] = []

    def show(_: int, result: Result | AnyGPTError) -> None:
        if isinstance(result, AnyGPTError):
            failures.append(result)
            if not single:
                sys.stderr.write(f"Error: {first_line(result)}\n")
        else:
            _show(result, as_json=as_json)

    tasks = [line.strip() for line in lines]
    with _BatchProgress(stderr, len(tasks), enabled=not as_json and stderr.is_terminal) as bar:
        gpt.run_many(tasks, on_event=bar.update, on_result=show, **options)
    if single and failures:
        raise failures[0]
    return len(failures)


def _run_one(
    gpt: AnyGPT, line: str, options: dict[str, Any], *, as_json: bool, dry_run: bool
) -> None:
    from anygpt_cli.console import stderr, stdout

    if dry_run:
        result = gpt.run(line, dry_run=True, **options)
        if as_json:
            typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
        else:
            stdout.print(result.prompt, markup=False)
        return
    with _Progress(stderr, enabled=not as_json and stderr.is_terminal) as progress:
        result = gpt.run(line, on_event=progress.update, **options)
    _show(result, as_json=as_json)


def _show(result: Result, *, as_json: bool) -> None:
    """A task's notices on stderr, then its JSON object or its summary on stdout."""
    from anygpt_cli.console import stderr

    for notice in result.notices:
        stderr.print(f"[yellow]{notice}[/yellow]", markup=True, highlight=False)
    if as_json:
        typer.echo(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        _summary(result)


def _summary(result: Result) -> None:
    from anygpt_cli.console import stdout

    stdout.print(f"[bold]{result.instruction}[/bold]", markup=True)
    if result.text:
        stdout.print(result.text, markup=False)
    for path in result.files:
        stdout.print(f"[green]wrote[/green] {path}")
    stdout.print(
        f"[dim]{result.new_tokens} tokens in {result.seconds:.2f} s · {result.finish_reason} · "
        f"seed {result.seed}[/dim]"
    )


def _bar(console: Any) -> Any:  # noqa: ANN401 - rich Console and Progress
    """A started transient progress bar on `console`: description, bar, done/total."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )
    progress.start()
    return progress


class _BatchProgress:
    """Tasks finished and tokens generated by a batch, on stderr."""

    def __init__(self, console: Any, count: int, *, enabled: bool) -> None:  # noqa: ANN401
        self.console = console
        self.count = count
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.tokens = 0

    def __enter__(self) -> _BatchProgress:
        if self.enabled:
            self.progress = _bar(self.console)
            self.task = self.progress.add_task(f"{self.count} tasks together", total=self.count)
        return self

    def update(self, _: int, event: object) -> None:
        from anygpt_core.engine.events import Done, TokenEvent

        if self.progress is None:
            return
        if isinstance(event, TokenEvent):
            self.tokens += 1
            if self.tokens % 16 == 0:
                self.progress.update(
                    self.task, description=f"{self.count} tasks together, {self.tokens} tokens"
                )
        elif isinstance(event, Done):
            self.progress.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


class _Progress:
    """Live token count and span progress on stderr, from the loop's events."""

    def __init__(self, console: Any, *, enabled: bool) -> None:  # noqa: ANN401 - rich Console
        self.console = console
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.progress = _bar(self.console)
            self.task = self.progress.add_task("generating text", total=None)
        return self

    def update(self, event: object) -> None:
        from anygpt_core.engine.events import Done, SpanClosed, SpanOpened, TokenEvent

        if self.progress is None:
            return
        if isinstance(event, SpanOpened):
            self.progress.update(
                self.task,
                description=f"writing {event.modality}",
                completed=0,
                total=event.max_tokens,
            )
        elif isinstance(event, SpanClosed):
            self.progress.update(self.task, description="generating text", total=None, completed=0)
        elif isinstance(event, Done) and event.spans:
            names = ", ".join(sorted({s.modality for s in event.spans}))
            self.progress.update(
                self.task, description=f"decoding {names}", total=None, completed=0
            )
        elif isinstance(event, TokenEvent):
            self.progress.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
