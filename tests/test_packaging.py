"""Every distribution's wheel ships all of its modules, py.typed and data, and nothing else top-level."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# the .gitignore'd outputs a build or a test run leaves beside the sources
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "anygpt_output",
)


def _packages(source: Path) -> dict[str, Path]:
    """Import name of each top-level package of a distribution, mapped to its source folder."""
    if source == ROOT:
        return {"anygpt_core": ROOT / "anygpt_core", "anygpt_cli": ROOT / "anygpt_cli"}
    name = source.name.replace("-", "_")
    return {name: source / name}


DISTRIBUTIONS = [
    ROOT,
    *sorted(path.parent for path in (ROOT / "plugins").glob("*/pyproject.toml")),
    ROOT / "examples" / "anygpt-sequence",
    ROOT / "engines" / "anygpt_vllm",
]


def expected_files(source: Path) -> set[str]:
    """Wheel paths of the modules, py.typed markers and core data files of a source tree."""
    expected = set()
    for name, folder in _packages(source).items():
        shipped = [*folder.rglob("*.py"), folder / "py.typed"]
        if name == "anygpt_core":
            shipped += [*(folder / "data").glob("*.json"), *(folder / "data").glob("*.txt")]
        for path in shipped:
            if "__pycache__" not in path.parts:
                expected.add(f"{name}/{path.relative_to(folder).as_posix()}")
    return expected


def build_wheel(source: Path, tmp_path: Path) -> Path:
    """Build the wheel of a copy of `source`, so no build/ or *.egg-info lands in the repository."""
    copy = tmp_path / "src"
    shutil.copytree(source, copy, ignore=IGNORED)
    out = tmp_path / "wheel"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run(
        [*pip, "-w", str(out), str(copy)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.mark.parametrize(
    "source", DISTRIBUTIONS, ids=lambda path: path.name if path != ROOT else "anygpt"
)
def test_wheel_ships_every_module_and_nothing_else(source, tmp_path):
    # --no-build-isolation builds offline with this interpreter's setuptools
    pytest.importorskip("setuptools", minversion="68")
    with zipfile.ZipFile(build_wheel(source, tmp_path)) as wheel:
        names = set(wheel.namelist())
    missing = sorted(expected_files(source) - names)
    assert not missing, f"missing from the wheel: {', '.join(missing)}"
    top = {name.split("/", 1)[0] for name in names}
    extra = sorted(t for t in top - set(_packages(source)) if not t.endswith(".dist-info"))
    assert not extra, f"unexpected top-level entries in the wheel: {', '.join(extra)}"
