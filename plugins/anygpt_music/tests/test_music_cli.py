"""End to end through the core's CLI on the embedded demo model, with only this plugin loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import soundfile as sf

from anygpt_core.testing import run_cli


@pytest.fixture
def music_only(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "music")
    monkeypatch.delenv("ANYGPT_BLOCK_PLUGINS", raising=False)
    home = Path(tmp_path_factory.getbasetemp()) / "music_cli_home"  # one demo build per session
    monkeypatch.setenv("ANYGPT_HOME", str(home))


def test_music_cli_text_to_music_writes_a_32khz_wav(music_only, capsys, tmp_path):
    out_dir = tmp_path / "out"
    args = ["run", "text|music|a calm piano piece", "--max-new-tokens", "41", "--seed", "1"]
    code, out, err = run_cli([*args, "--json", "--output-dir", str(out_dir)], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["prompt"].endswith("This is input: a calm piano piece<eoh> [MMGPT]: <somu>")
    (path,) = map(Path, result["files"])
    frames = result["spans"][0]["shape"][1]
    assert result["spans"][0]["shape"][0] == 4
    assert frames >= 1
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (32_000, 1, "PCM_16")
    assert info.frames == frames * 640


def test_music_cli_music_to_text_prompt_holds_the_codes(music_only, capsys, write_audio):
    song = write_audio("song.flac", 44_100, 1.0, channels=2)
    code, out, err = run_cli(["run", f"music|text|{song}", "--dry-run", "--json"], capsys)
    assert code == 0, err
    prompt = json.loads(out)["prompt"]
    span = re.search(r"<somu>(.*)<eomu><eoh> \[MMGPT\]:$", prompt)
    assert span is not None
    codes = [int(c) for c in re.findall(r"<🎶(\d+)>", span.group(1))]
    assert len(codes) == 4 * 50
    assert all(2048 * (i % 4) <= c < 2048 * (i % 4 + 1) for i, c in enumerate(codes))


def test_music_cli_encode_decode_round_trip(music_only, capsys, write_audio, tmp_path):
    song = write_audio("song.wav", 16_000, 0.5)
    code, span, err = run_cli(["encode", "music", str(song), "--demo"], capsys)
    assert code == 0, err
    span = span.strip()
    assert span.startswith("<somu><🎶")
    assert span.endswith("<eomu>")
    assert span.count("<🎶") == 4 * 25
    out = tmp_path / "back.wav"
    code, _, err = run_cli(["decode", "music", span, "-o", str(out), "--demo"], capsys)
    assert code == 0, err
    info = sf.info(str(out))
    assert (info.samplerate, info.frames) == (32_000, 25 * 640)


def test_music_cli_bad_inputs_give_one_line(music_only, capsys, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all")
    code, _, err = run_cli(["encode", "music", str(bad), "--demo"], capsys)
    assert code == 3
    assert err.strip().splitlines()[-1].startswith(f"Error: {bad}: not a readable audio file")
    swapped = "<somu><🎶2049><🎶1><🎶4097><🎶8191><eomu>"
    code, _, err = run_cli(
        ["decode", "music", swapped, "-o", str(tmp_path / "x.wav"), "--demo"], capsys
    )
    assert code == 7
    assert "belongs to codebook 1, expected 0" in err.strip().splitlines()[-1]
    assert not (tmp_path / "x.wav").exists()
