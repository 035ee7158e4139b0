"""The example plugin installed for real with pip, then discovered and used through its entry point."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "anygpt-sequence"


@pytest.mark.slow
def test_pip_installed_example_plugin_is_discovered_and_encodes(tmp_path):
    source = tmp_path / "anygpt-sequence"  # a copy: building writes build/ and *.egg-info beside it
    shutil.copytree(
        EXAMPLE,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".venv*"),
    )
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = venv / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # this interpreter's packages (torch, anygpt) stay visible, as with a system interpreter
    parents = [p for p in (*site.getsitepackages(), *sys.path) if p.endswith("site-packages")]
    lines = [
        f"import site; site.addsitedir({p!r})" for p in dict.fromkeys(parents)
    ]  # runs their .pth
    (Path(target) / "_parent.pth").write_text("\n".join(lines) + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    series = tmp_path / "s.csv"
    series.write_text("\n".join(str(i / 10) for i in range(16)))
    script = (
        "import sys\nfrom anygpt_cli.app import main\n"
        "for args in (['plugins', '--json'], ['encode', 'sequence', sys.argv[1], '--demo']):\n"
        "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "ANYGPT_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "ANYGPT_LOAD_PLUGINS": "sequence",
    }
    proc = subprocess.run(
        [str(python), "-c", script, str(series)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    span = proc.stdout.strip().splitlines()[-1]
    rows = {r["name"]: r for r in json.loads(proc.stdout[: proc.stdout.rindex("]") + 1])}
    assert (
        rows["sequence"]["distribution"] == "anygpt-sequence"
        and rows["sequence"]["state"] == "loaded"
    )
    assert span.startswith("<sosq><📈") and span.endswith("<eosq>") and span.count("<📈") == 8
