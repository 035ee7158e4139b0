"""The README and docs/ say what the code does: generated blocks current, commands that run as shown."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anygpt_core.testing import run_cli

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: What the README's first command installs: the runs below see these plugins and no others.
SHIPPED_PLUGINS = "image,speech,music"


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)\n```$", text, flags=re.M | re.S)


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def slug(heading: str) -> str:
    """The anchor GitHub and MkDocs (toc) both give a heading of plain words."""
    words = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return re.sub(r"[ ]+", "-", words.strip())


def test_docs_generated_blocks_are_current():
    pages = sorted(p for p in DOCS.glob("*.md") if "[[[cog" in p.read_text(encoding="utf-8"))
    assert pages, "no page has a cog block"
    result = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "--diff", "-I", "docs", *map(str, pages)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        "docs/ is stale: regenerate with `.venv-test/bin/cog -r -I docs docs/*.md`\n"
        + result.stdout[-6000:]
        + result.stderr[-2000:]
    )


def test_readme_is_at_most_10_kb():
    assert len(README.read_bytes()) <= 10 * 1024


def test_readme_two_commands_set_up_and_run():
    """The first command installs and runs the demo; the second is CI's script, as on the home page."""
    commands = fenced(README.read_text(encoding="utf-8"), "bash")
    first, second = commands[0], commands[1]
    assert first.startswith(
        "python3 -m venv .venv && .venv/bin/pip install . ./plugins/anygpt_image"
    )
    assert '.venv/bin/anygpt run "text|image|a red bus at dawn"' in first
    assert second == "bash .ci/run"
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "set -euo pipefail" in script and "mkdocs build --strict" in script
    home = fenced((DOCS / "index.md").read_text(encoding="utf-8"), "bash")
    assert home[:2] == [first, second]


def test_readme_commands_table_lists_every_command():
    import typer

    from anygpt_cli.app import build_app
    from anygpt_core.plugins import discover

    table = section(README.read_text(encoding="utf-8"), "Commands")
    group = typer.main.get_command(build_app(discover()))
    names = []
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", None)
        names += [f"{name} {sub}" for sub in subcommands] if subcommands else [name]
    missing = [name for name in names if f"`anygpt {name}`" not in table]
    assert not missing, f"README's command table lacks: {', '.join(missing)}"


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        assert (ROOT / path).exists(), f"README links to {path}, which does not exist"
        if anchor:
            page = (ROOT / path).read_text(encoding="utf-8")
            headings = [slug(h) for h in re.findall(r"^#+ (.+)$", page, flags=re.M)]
            assert anchor in headings, f"README links to {target}: no such heading"


def test_mkdocs_nav_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(nav: list) -> list[str]:
        found = []
        for item in nav:
            for value in item.values():
                found += pages(value) if isinstance(value, list) else [value]
        return found

    assert sorted(pages(config["nav"])) == sorted(p.name for p in DOCS.glob("*.md"))


def test_documented_exit_codes_are_the_families():
    """Every exit code the errors page gives a case is one the CLI uses."""
    from anygpt_core import errors

    codes = {0, 1, 2} | {
        kind.exit_code
        for kind in vars(errors).values()
        if isinstance(kind, type) and issubclass(kind, errors.AnyGPTError)
    }
    page = (DOCS / "errors.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|.*\| (\d+|—) \|$", section(page, "Bad input, and what it gets"), re.M)
    assert len(rows) > 10
    assert {int(code) for code in rows if code != "—"} <= codes


# --- the README's examples, run ------------------------------------------------------------------


def normalise(line: str) -> str:
    """A run's line without what changes from run to run: the time and the file names' timestamps."""
    line = re.sub(r"_\d{4}_\d{6}(\.\w+)$", r"_MMDD_HHMMSS\1", line)
    return re.sub(r" in \d+\.\d+ s ", " in S s ", line)


@pytest.fixture
def shipped_plugins(monkeypatch, tmp_path):
    """What the README's first command sets up: the three shipped plugins, a fresh folder."""
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", SHIPPED_PLUGINS)
    monkeypatch.delenv("ANYGPT_BLOCK_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_readme_first_run_prints_what_the_readme_shows(shipped_plugins, capsys):
    text = README.read_text(encoding="utf-8")
    command = fenced(text, "bash")[0].split(" && ")[-1]
    args = shlex.split(command)
    assert args[0] == ".venv/bin/anygpt"
    shown = fenced(section(text, "Install and first run"), "text")[0].splitlines()

    code, out, err = run_cli(args[1:], capsys)

    assert code == 0, err
    assert err.splitlines() == shown[:1]
    assert [normalise(line) for line in out.splitlines()] == [normalise(line) for line in shown[1:]]
    written = sorted(p.name for p in (shipped_plugins / "anygpt_output").iterdir())
    named = sorted(line.split("/")[-1] for line in shown if line.startswith("wrote "))
    assert [normalise(n) for n in written] == sorted(normalise(n) for n in named)


@pytest.mark.slow
def test_readme_python_example_runs(shipped_plugins, capsys):
    source = fenced(section(README.read_text(encoding="utf-8"), "Python API"), "python")[0]

    exec(compile(source, "README.md", "exec"), {})

    out = capsys.readouterr().out
    assert "anygpt_output/" in out and "[Human]:" in out
