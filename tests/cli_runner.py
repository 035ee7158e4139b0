"""Shared by the core's tests (a uniquely named module: plugin test dirs have conftests too)."""

from __future__ import annotations

from pathlib import Path

from anygpt_core.testing import run_cli

__all__ = ["TOY_DIR", "run_cli"]

#: Where the toy plugins' modules live (their dist-infos are written by conftest's `toy_site`).
TOY_DIR = Path(__file__).parent / "toy"
