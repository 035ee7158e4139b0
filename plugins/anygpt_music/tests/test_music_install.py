"""`pip install` of the plugin into a fresh virtual environment makes the core discover it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
CORE_ROOT = PLUGIN_ROOT.parents[1]


@pytest.mark.slow
def test_music_entry_point_is_discovered_after_pip_install(tmp_path):
    # Copy only what the build reads (never a virtual environment that lives in the checkout), so
    # the build leaves no build/ or egg-info in the repository.
    core = tmp_path / "core"
    core.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CORE_ROOT / name, core / name)
    for name in ("anygpt_core", "anygpt_cli"):
        shutil.copytree(
            CORE_ROOT / name,
            core / name,
            ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"),
        )
    music = shutil.copytree(
        PLUGIN_ROOT,
        tmp_path / "anygpt_music",
        ignore=shutil.ignore_patterns("tests", "*.egg-info", "__pycache__", "build", ".venv*"),
    )
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Dependencies (torch, pydantic, ...) come from this interpreter's site-packages, after the
    # new environment's own, so the freshly installed copies of anygpt-core and anygpt-music win.
    (Path(target_site) / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(core),
            str(music),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    probe = (
        "import anygpt_music.plugin as p; from anygpt_core.plugins import discover; "
        "info = next(i for i in discover().infos if i.name == 'music'); "
        "print(info.state, info.distribution, info.version, [m.name for m in info.modalities]); "
        "print(p.__file__)"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    state_line, location = out.stdout.strip().splitlines()
    assert state_line == "loaded anygpt-music 0.1.0 ['music', 'audio']"
    assert location.startswith(target_site)
