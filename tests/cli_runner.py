"""Run the console script in-process (a uniquely named module: plugin test dirs have conftests too)."""

from __future__ import annotations

import sys
from pathlib import Path


def run_cli(
    args: list[str], capsys, stdin: str | None = None, monkeypatch=None
) -> tuple[int, str, str]:
    """Call the console script's `main()` in-process; return (exit code, stdout, stderr)."""
    import io

    from anygpt_cli.app import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


#: Where the toy plugins' modules live (their dist-infos are written by conftest's `toy_site`).
TOY_DIR = Path(__file__).parent / "toy"
