"""The code style and types the project holds itself to (STYLE.md), checked with the pinned tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = [
    "anygpt_core",
    "cli",
    "plugins/anygpt_image/anygpt_image",
    "plugins/anygpt_speech/anygpt_speech",
    "plugins/anygpt_music/anygpt_music",
    "examples/anygpt-sequence/anygpt_sequence",
]


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
    typed = _run("mypy", "--no-incremental", "--cache-dir", "/dev/null", *PACKAGES)
    assert typed.returncode == 0, typed.stdout + typed.stderr
