"""What the docs' generated blocks hold: `--help` output, the exit codes, the modules of each package.

The pages call these from cog blocks (`<!-- [[[cog ... ]]] -->`); `tests/test_docs.py` fails when a
block is stale. Regenerate every block after changing the CLI, the errors or a module's docstring:

    .venv-test/bin/cog -r -I docs docs/*.md
"""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import cog  # cogapp's module for generated output, importable inside a cog run

ROOT = Path(__file__).resolve().parents[1]

#: The plugins the README's first command installs: `--help` shows their options and no others,
#: whatever else the environment holds.
SHIPPED_PLUGINS = "image,speech,music"

#: Folders that hold no package's modules.
_SKIP = {"tests", "toy", "build", "__pycache__", "benchmarks"}


def help_block(*command: str) -> None:
    """Write `anygpt COMMAND --help` as a fenced block, in plain text (Typer without rich)."""
    env = {
        **os.environ,
        "ANYGPT_LOAD_PLUGINS": SHIPPED_PLUGINS,
        "TYPER_USE_RICH": "0",
        "COLUMNS": "100",
        "NO_COLOR": "1",
    }
    env.pop("ANYGPT_BLOCK_PLUGINS", None)
    anygpt = Path(sys.executable).with_name("anygpt")
    result = subprocess.run(
        [str(anygpt), *command, "--help"], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode:
        raise RuntimeError(f"anygpt {' '.join(command)} --help failed: {result.stderr.strip()}")
    lines = [line.rstrip() for line in result.stdout.strip("\n").splitlines()]
    cog.outl("```text")
    cog.outl(" ".join(["$ anygpt", *command, "--help"]))
    for line in lines:
        cog.outl(line)
    cog.outl("```")


def exit_codes() -> None:
    """Write the table of exit codes: every error class of `anygpt_core.errors`, by family."""
    from anygpt_core import errors

    kinds = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.AnyGPTError)
    ]
    kinds.sort(key=lambda kind: (kind.exit_code, len(kind.__mro__), kind.__name__))
    rows = [("0", "", "Success.")]
    rows += [(str(k.exit_code), f"`{k.__name__}`", _first_paragraph(k.__doc__)) for k in kinds]
    rows.append(("2", "", "A usage error (Typer's): an unknown option or command, a bad value."))
    rows.append(
        ("1", "", "Anything unexpected: `internal error: …` (`ANYGPT_DEBUG=1`: the traceback).")
    )
    rows.append(("130", "", "Interrupted (Ctrl-C): `Interrupted` on stderr."))
    cog.outl("| exit | error | what it means |")
    cog.outl("|---|---|---|")
    for code, kind, doc in sorted(rows, key=lambda row: int(row[0])):  # stable: families stay
        cog.outl(f"| {code} | {kind} | {doc} |")


def package_tables() -> None:
    """Write, per package of the repository, its folder, its purpose and a table of its modules.

    Packages are found, not listed: the core and the CLI at the root, then those under `engines/`,
    `plugins/` and `examples/`; subpackages stay in their package's table.
    """
    folders = [p.parent for p in sorted(ROOT.glob("*/__init__.py"))]
    for group in ("engines", "plugins", "examples"):
        folders += [p.parent for p in sorted(ROOT.glob(f"{group}/*/*/__init__.py"))]
    for folder in folders:
        if _SKIP & set(folder.relative_to(ROOT).parts):
            continue
        init = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        cog.outl(f"### `{folder.relative_to(ROOT).as_posix()}/`")
        cog.outl("")
        cog.outl(_first_paragraph(init))
        cog.outl("")
        cog.outl("| module | what it holds |")
        cog.outl("|---|---|")
        for path in sorted(folder.rglob("*.py"), key=lambda p: p.relative_to(folder).parts):
            relative = path.relative_to(folder)
            if _SKIP & set(relative.parts) or not _is_package(path.parent):
                continue
            if path.name == "__init__.py" and path.parent == folder:
                continue
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
            cog.outl(f"| `{relative.as_posix()}` | {_first_paragraph(doc)} |")
        cog.outl("")


def _is_package(folder: Path) -> bool:
    return (folder / "__init__.py").is_file()


def _first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph on one line, safe in a table cell."""
    return _cell(" ".join((doc or "").strip().split("\n\n")[0].split()))


def _cell(text: str) -> str:
    r"""Text for a table cell: its pipes kept, on GitHub and in MkDocs alike.

    A code span with a pipe becomes `<code>` with `&#124;` (MkDocs would show `\|` inside backticks,
    GitHub would split the cell at a bare `|`); other pipes are escaped.
    """
    parts = re.split(r"(`[^`]*`)", text)
    for i, part in enumerate(parts):
        if part.startswith("`") and "|" in part:
            parts[i] = f"<code>{html.escape(part[1:-1], quote=False).replace('|', '&#124;')}</code>"
        elif not part.startswith("`"):
            parts[i] = part.replace("|", "\\|")
    return "".join(parts)
