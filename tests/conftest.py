from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    # Each xdist worker gets its own system temp (and so do the processes it starts): a test that
    # watches the temp folder sees only what its own worker made.
    _temp = Path(tempfile.mkdtemp(prefix=f"anygpt-tests-{worker}-"))
    os.environ["TMPDIR"] = str(_temp)
    tempfile.tempdir = str(_temp)

    def pytest_unconfigure(config: pytest.Config) -> None:
        shutil.rmtree(_temp, ignore_errors=True)


TOY_DIR = Path(__file__).parent / "toy"
TOY_PLUGINS = {
    "toy": "anygpt_toy",
    "broken": "anygpt_broken",
    "clash": "anygpt_clash",
    "typo": "anygpt_typo",
}


def write_dist(site: Path, name: str, module: str) -> None:
    info = site / f"anygpt_{name}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: anygpt-{name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[anygpt]\n{name} = {module}\n")


@pytest.fixture(scope="session", autouse=True)
def anygpt_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("anygpt_home")
    os.environ["ANYGPT_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory whose dist-infos register the toy plugins through real entry points."""
    site = tmp_path_factory.mktemp("site")
    for name, module in TOY_PLUGINS.items():
        write_dist(site, name, module)
    return site


@pytest.fixture
def toy_env(toy_site: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Put the toy plugins on the path; only `toy` loads (set ANYGPT_LOAD_PLUGINS to change)."""
    import importlib

    monkeypatch.syspath_prepend(str(TOY_DIR))
    monkeypatch.syspath_prepend(str(toy_site))
    importlib.invalidate_caches()
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "toy")
    monkeypatch.delenv("ANYGPT_BLOCK_PLUGINS", raising=False)
    path = os.pathsep.join([str(toy_site), str(TOY_DIR), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "ANYGPT_LOAD_PLUGINS": "toy"}


@pytest.fixture
def toy_gpt(toy_env):
    """The demo model with the toy modality (built once per session, cached by plugin set)."""
    from anygpt_core.api import AnyGPT

    return AnyGPT.load(device="cpu")


@pytest.fixture
def text_only_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No plugins at all: the core alone."""
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "__none__")
