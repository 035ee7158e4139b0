"""The plugin's registration: entry point, spec facts, cheap import, demo assets, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile as sf
import torch
from anygpt_speech import plugin
from anygpt_speech.plugin import SPEECH

from anygpt_core.plugins import discover
from anygpt_core.testing import run_cli


def test_plugin_entry_point_is_discovered():
    plugins = discover(load_only=["speech"])
    info = next(i for i in plugins.infos if i.name == "speech")
    assert info.state == "loaded", info.error
    assert info.distribution == "anygpt-speech"
    assert set(info.hooks) == {"anygpt_modalities", "anygpt_demo_assets", "anygpt_eval_tasks"}
    assert plugins.modality("speech") is SPEECH


def test_plugin_import_is_cheap():
    heavy = "('torch', 'speechtokenizer', 'transformers')"
    code = f"import sys, anygpt_speech.plugin; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_spec_tokens():
    assert SPEECH.prefix == "\U0001f5e3\ufe0f"
    tokens = SPEECH.token_strings()
    assert len(tokens) == 1026
    assert tokens[0] == "<\U0001f5e3\ufe0f0>"
    assert tokens[1023] == "<\U0001f5e3\ufe0f1023>"
    assert tokens[-2:] == ["<sosp>", "<eosp>"]
    assert (SPEECH.codebook_size, SPEECH.num_codebooks, SPEECH.frame_rate) == (1024, 1, 50.0)
    assert SPEECH.output_extension == ".wav"


def test_plugin_decoding_defaults_are_the_reference_effective_ones():
    assert SPEECH.decoding.model_dump() == {
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 50,
        "repetition_penalty": 1.05,
        "max_new_tokens": 1500,
        "min_new_tokens": 0,
        "num_beams": 1,
        "vc_steps": 3,
    }
    assert (
        next(o for o in SPEECH.options if o.name == "soundstorm_steps").default is None
    )  # vc_steps rules


def test_plugin_options_carry_speech_prefixes():
    for option in SPEECH.options:
        assert option.flag.startswith(("--speech-", "--soundstorm-", "--voice-prompt-")), (
            option.flag
        )
    defaults = {o.name: o.default for o in SPEECH.options}
    assert defaults["voice_prompt_seconds"] == 3.0
    assert (
        defaults["speech_tokenizer_path"]
        == defaults["soundstorm_path"]
        == "fnlp/AnyGPT-speech-modules"
    )


def test_plugin_instructions_are_many_and_distinct():
    for phrasings in (SPEECH.instructions.to_text, SPEECH.instructions.from_text):
        assert len(phrasings) >= 20
        assert len(set(phrasings)) == len(phrasings)


def test_hook_anygpt_demo_assets_is_deterministic(tmp_path):
    first = plugin.anygpt_demo_assets(tmp_path / "a")
    second = plugin.anygpt_demo_assets(tmp_path / "b")
    assert set(first) <= {o.name for o in SPEECH.options}
    for name in ("speech_tokenizer_path", "soundstorm_path"):
        a = torch.load(first[name], weights_only=True)
        b = torch.load(second[name], weights_only=True)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    for suffix in ("speechtokenizer/config.json", "soundstorm/config.json"):
        assert json.loads((tmp_path / "a" / suffix).read_text()) == json.loads(
            (tmp_path / "b" / suffix).read_text()
        )
    assert (tmp_path / "a/soundstorm/speechtokenizer_soundstorm_mls.pt").is_file()
    assert (tmp_path / "a/speechtokenizer/ckpt.dev").is_file()


def test_hook_anygpt_modalities():
    assert plugin.anygpt_modalities() == [SPEECH]


@pytest.fixture(scope="module")
def anygpt_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("anygpt_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANYGPT_HOME", str(home))
        patch.setenv("ANYGPT_LOAD_PLUGINS", "speech")
        yield home


def test_cli_encode_decode_and_zero_shot_tts(anygpt_home, audio_dir, tmp_path, capsys):
    wav = str(audio_dir / "mono16k.wav")
    code, span, err = run_cli(["encode", "speech", wav, "--demo"], capsys)
    assert code == 0, err
    assert span.startswith("<sosp><\U0001f5e3\ufe0f")
    assert span.strip().endswith("<eosp>")
    assert span.count("\U0001f5e3") == 100

    out = tmp_path / "voiced.wav"
    args = [
        "decode",
        "speech",
        span.strip(),
        "--voice-prompt",
        str(audio_dir / "voice22k.wav"),
        "-o",
        str(out),
        "--seed",
        "1",
        "--demo",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    info = sf.info(str(out))
    assert (info.samplerate, info.frames) == (16000, 100 * 320)

    code, _, err = run_cli(
        [
            "run",
            f"text|speech|good morning|{audio_dir / 'voice22k.wav'}",
            "--seed",
            "2",
            "--max-new-tokens",
            "30",
            "--output-dir",
            str(tmp_path / "tts"),
        ],
        capsys,
    )
    assert code == 0, err
    written = list((tmp_path / "tts").glob("*.wav"))
    assert len(written) == 1
    assert sf.info(str(written[0])).samplerate == 16000

    code, _, err = run_cli(
        ["run", f"speech|text|{wav}", "--seed", "2", "--max-new-tokens", "5"], capsys
    )
    assert code == 0, err


def test_cli_bad_voice_prompt_is_one_line(anygpt_home, audio_dir, tmp_path, capsys):
    args = [
        "decode",
        "speech",
        "<sosp><\U0001f5e3\ufe0f1><\U0001f5e3\ufe0f2><eosp>",
        "--voice-prompt",
        str(audio_dir / "notes.txt"),
        "-o",
        str(tmp_path / "x.wav"),
        "--demo",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 3
    lines = [line for line in err.splitlines() if "notes.txt" in line]
    assert len(lines) == 1
    assert "not a readable audio file" in lines[0]


def test_vc_steps_is_a_field_the_speech_plugin_declares(tmp_path):
    """The core's DecodingConfig names no speech field; a config file holding it serves speech."""
    from anygpt_core.config import DecodingConfig, load_decoding_config

    assert "vc_steps" not in DecodingConfig.model_fields
    assert isinstance(SPEECH.decoding, plugin.SpeechDecodingConfig)
    assert SPEECH.decoding.vc_steps == 3
    path = tmp_path / "speech.json"
    path.write_text('{"vc_steps": 5, "top_k": 10}')
    loaded = load_decoding_config(path, base=SPEECH.decoding)
    assert (loaded.vc_steps, loaded.top_k, loaded.repetition_penalty) == (5, 10, 1.05)
