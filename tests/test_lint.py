"""The code style and types the project holds itself to (STYLE.md), checked with the pinned tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
#: Import packages and the folders that hold them.
PACKAGES = {
    "anygpt_core": ".",
    "anygpt_cli": ".",
    "anygpt_image": "plugins/anygpt_image",
    "anygpt_speech": "plugins/anygpt_speech",
    "anygpt_music": "plugins/anygpt_music",
    "anygpt_sequence": "examples/anygpt-sequence",
    "anygpt_vllm": "engines/anygpt_vllm",
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_lint_and_format():
    lint = _run("ruff", "check", "--no-cache", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = _run("ruff", "format", "--check", "--no-cache", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_on_every_package():
    path = sorted({str(ROOT / d) for d in PACKAGES.values()})
    packages = [arg for name in PACKAGES for arg in ("-p", name)]
    typed = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null", *packages],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MYPYPATH": os.pathsep.join(path)},
    )
    assert typed.returncode == 0, typed.stdout + typed.stderr
    checked = int(typed.stdout.rsplit(" in ", 1)[1].split()[0])
    assert checked >= len(list(_sources()))  # every module was found (data folders count too)


def _sources():
    yield from (ROOT / "anygpt_core").rglob("*.py")
    yield from (ROOT / "anygpt_cli").rglob("*.py")
    for folder in list(PACKAGES.values())[2:]:
        yield from (ROOT / folder / Path(folder).name.replace("-", "_")).rglob("*.py")
