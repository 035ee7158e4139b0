"""`anygpt plugins`: what is installed, with token ranges and state. Imports no torch."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from anygpt_cli.catalogue import install_target
from anygpt_core.plugins import PluginSet

__all__ = ["register"]


def describe(plugins: PluginSet) -> list[dict[str, Any]]:
    """One dict per plugin (what `--json` prints)."""
    rows = []
    for info in plugins.infos:
        rows.append(
            {
                "name": info.name,
                "module": info.module,
                "distribution": info.distribution,
                "version": info.version,
                "state": info.state,
                "error": info.error,
                "hooks": info.hooks,
                "modalities": [
                    {
                        "name": m.name,
                        "prefix": m.prefix,
                        "start": m.start,
                        "end": m.end,
                        "codebooks": m.num_codebooks,
                        "codebook_size": m.codebook_size,
                        "tokens": f"<{m.prefix}0>…<{m.prefix}{m.vocab_size - 1}>",
                        "fixed_frames": m.fixed_frames,
                        "frame_rate": m.frame_rate,
                        "input_extensions": list(m.input_extensions),
                        "options": [o.flag for o in m.options],
                    }
                    for m in info.modalities
                ],
            }
        )
    return rows


def _frames(modality: dict[str, Any]) -> str:
    """`32 per item`, `50/s` or nothing: how a modality's spans are sized."""
    if modality["fixed_frames"]:
        return f"{modality['fixed_frames']}/item"
    return f"{modality['frame_rate']:g}/s" if modality["frame_rate"] else ""


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `plugins` command."""

    @app.command("plugins")
    def plugins_command(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """List installed plugins: version, modalities, tokens, state and errors."""
        rows = describe(plugins)
        if as_json:
            typer.echo(json.dumps(rows, ensure_ascii=False, indent=1))
            return
        from rich.console import Console
        from rich.table import Table

        from anygpt_cli.console import stdout

        if not rows:
            music = install_target("anygpt-music")
            stdout.print(f"No plugins installed: only text. Try `pip install {music}`.")
            return
        table = Table()
        for header in ("plugin", "version", "state", "modality"):
            table.add_column(header, overflow="fold")  # wrapped, never cut to "…"
        table.add_column("tokens", overflow="fold")  # and the start and end tokens below
        table.add_column("K × size", overflow="fold")
        table.add_column("frames", overflow="fold")
        for row in rows:
            mods = row["modalities"] or [None]
            for i, m in enumerate(mods):
                first = i == 0
                state = row["state"] + (f": {row['error']}" if row["error"] and first else "")
                table.add_row(
                    row["name"] if first else "",
                    (row["version"] or "") if first else "",
                    state if first else "",
                    m["name"] if m else "",
                    f"{m['tokens']}\n{m['start']} {m['end']}" if m else "",
                    f"{m['codebooks']} × {m['codebook_size']}" if m else "",
                    _frames(m) if m else "",
                )
        width = stdout.measure(table, options=stdout.options.update_width(1000)).maximum
        if not stdout.is_terminal:  # piped: as wide as the table needs (rich would cut at 80)
            Console(width=max(width, stdout.width), highlight=False).print(table)
        elif width <= stdout.width:
            stdout.print(table, soft_wrap=False)  # soft wrap lets a table overflow the terminal
        else:  # a narrower terminal: the same, a line per plugin and modality
            _print_narrow(rows)


def _print_narrow(rows: list[dict[str, Any]]) -> None:
    """The table's content for a terminal too narrow for it: a line per plugin and modality."""
    from anygpt_cli.console import stdout

    for row in rows:
        state = row["state"] + (f": {row['error']}" if row["error"] else "")
        stdout.print(" ".join(filter(None, (row["name"], row["version"], state))), markup=False)
        for m in row["modalities"]:
            frames = f", {_frames(m)}" if _frames(m) else ""
            stdout.print(
                f"  {m['name']}: {m['tokens']} {m['start']} {m['end']}, "
                f"{m['codebooks']} × {m['codebook_size']}{frames}",
                markup=False,
            )
