"""`anygpt chat` driven through a pseudo-terminal, as a person uses it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from anygpt_cli.catalogue import install_target

pexpect = pytest.importorskip("pexpect")

ANYGPT = str(Path(sys.executable).parent / "anygpt")

SPEECH_PLUGIN = install_target("anygpt-speech")


def spawn(args, env, cwd):
    child = pexpect.spawn(
        ANYGPT,
        ["chat", *args],
        env=env,
        cwd=str(cwd),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    child.expect_exact("/help for commands")
    child.expect_exact("> ")
    return child


def test_interactive_session(toy_env, tmp_path):
    series = tmp_path / "series.txt"
    series.write_text("0.1 0.5 -0.3 0.9")
    out_dir = tmp_path / "out"
    child = spawn(
        ["--seed", "0", "--max-new-tokens", "12", "--output-dir", str(out_dir)], toy_env, tmp_path
    )
    try:
        child.sendline("hello")
        child.expect(r"12 tokens in [\d.]+ s")  # the streamed answer, then its footer
        child.expect_exact("> ")
        child.sendline(f"/toy {series}")
        child.expect_exact("(1 toy) > ")
        child.sendline("/to toy")
        child.expect_exact("(to toy, 1 toy) > ")
        child.sendline("describe it")
        child.expect(r"\[toy\]")
        child.expect(r"wrote\S* (\S+)")
        written = Path(child.match.group(1))
        child.expect_exact("(to toy) > ")
        assert written.parent == out_dir and written.is_file()
        child.sendline("/speech nothing.wav")
        child.expect_exact(f"Error: modality 'speech' needs a plugin: pip install {SPEECH_PLUGIN}")
        child.expect_exact("(to toy) > ")
        child.sendline("/history")
        child.expect_exact("[Human]: hello<eoh>")
        child.expect_exact("describe it<eoh>")
        child.expect_exact("(to toy) > ")
        child.sendline("/clear")
        child.expect("history cleared")
        child.sendline("/history")
        child.expect_exact("images and audio.")
        child.expect_exact("(to toy) > ")
        assert "[Human]" not in child.before
        child.sendcontrol("c")  # at the prompt: drops the line, stays
        child.expect_exact("(to toy) > ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_and_keeps_the_history(toy_env, tmp_path):
    config = tmp_path / "long.json"
    config.write_text(json.dumps({"min_new_tokens": 3000, "max_new_tokens": 3000}))
    child = spawn(["--seed", "0", "--config", str(config)], toy_env, tmp_path)
    try:
        child.sendline("talk for a long time")
        child.expect_exact("talk for a long time\r\n")  # the terminal's echo of the line
        child.expect(r"\w\w\w")  # text is streaming
        child.sendcontrol("c")
        child.expect("interrupted: reply discarded, history unchanged")
        child.expect_exact("> ")
        child.sendline("/history")
        child.expect_exact("images and audio.")
        child.expect_exact("> ")
        assert "[Human]" not in child.before
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert list(tmp_path.iterdir()) == [config]


def test_beam_search_shows_a_status_until_the_answer(toy_env, tmp_path):
    child = spawn(["--seed", "0", "--max-new-tokens", "8", "--num-beams", "3"], toy_env, tmp_path)
    try:
        child.sendline("hello")
        child.expect_exact("searching 3 beams…")
        child.expect_exact("\r\x1b[K")  # cleared when the answer arrives
        child.expect(r"8 tokens in [\d.]+ s")
        child.expect_exact("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
