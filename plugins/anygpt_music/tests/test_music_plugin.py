"""The plugin as the core sees it: discovery, specs, options, decoding defaults and demo assets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from anygpt_music import plugin
from anygpt_music.audio import AudioCodec
from anygpt_music.music import MusicCodec
from anygpt_music.tiny import audio_config, music_config, seeded_signal
from safetensors.torch import load_file

from anygpt_core.plugins import discover


def test_music_entry_point_is_discovered():
    plugins = discover(load_only=["music"])
    info = next(i for i in plugins.infos if i.name == "music")
    assert info.state == "loaded", info.error
    assert info.distribution == "anygpt-music"
    assert [m.name for m in info.modalities] == ["music", "audio"]
    assert set(info.hooks) == {"anygpt_modalities", "anygpt_demo_assets", "anygpt_eval_tasks"}


def test_music_plugin_import_is_cheap():
    code = (
        "import sys, anygpt_music.plugin; "
        "print(sorted({'torch', 'transformers', 'encodec'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_music_spec_tokens():
    spec = plugin.MUSIC
    assert (spec.start, spec.end, spec.prefix) == ("<somu>", "<eomu>", "\U0001f3b6")
    assert (spec.codebook_size, spec.num_codebooks, spec.vocab_size) == (2048, 4, 8192)
    tokens = spec.token_strings()
    assert tokens[0] == "<🎶0>"
    assert tokens[8191] == "<🎶8191>"
    assert tokens[-2:] == ["<somu>", "<eomu>"]
    assert spec.frame_rate == 50
    assert spec.output_extension == ".wav"
    assert {".wav", ".flac", ".ogg", ".mp3"} <= set(spec.input_extensions)


def test_music_audio_spec_tokens():
    spec = plugin.AUDIO
    assert (spec.start, spec.end, spec.prefix) == ("<soau>", "<eoau>", "\U0001f442")
    assert (spec.codebook_size, spec.num_codebooks, spec.vocab_size) == (1024, 4, 4096)
    assert spec.token_strings()[4095] == "<👂4095>"


def test_music_decoding_defaults_are_the_reference_effective_values():
    config = plugin.MUSIC.decoding
    assert config.model_dump(exclude={"num_beams", "vc_steps"}) == {
        "do_sample": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 200,
        "repetition_penalty": 1.15,
        "max_new_tokens": 2000,
        "min_new_tokens": 0,
    }


def test_music_options_carry_the_modality_prefix():
    for spec in (plugin.MUSIC, plugin.AUDIO):
        for option in spec.options:
            assert option.flag.startswith(f"--{spec.name}-")
    flags = {o.flag: o.default for o in plugin.MUSIC.options}
    assert flags == {"--music-tokenizer-path": "facebook/encodec_32khz", "--music-seconds": 20.0}


def test_music_instructions_are_many_and_distinct():
    for spec in (plugin.MUSIC, plugin.AUDIO):
        for phrasings in (spec.instructions.to_text, spec.instructions.from_text):
            assert len(phrasings) >= 20
            assert len(set(phrasings)) == len(phrasings)
            assert all(p[-1] in ".?!" and p[0].isupper() for p in phrasings)


def test_music_factory_does_not_load_weights(tmp_path):
    options = {o.name: o.default for o in plugin.MUSIC.options}
    options["music_tokenizer_path"] = str(tmp_path / "not-yet-there")
    codec = plugin.MUSIC.codec_factory(options)
    assert isinstance(codec, MusicCodec)
    assert not codec.loaded
    assert codec.max_seconds == 20.0
    audio = plugin.AUDIO.codec_factory({o.name: o.default for o in plugin.AUDIO.options})
    assert isinstance(audio, AudioCodec)
    assert audio.options.audio_tokenizer_path == "facebook/encodec_24khz"
    assert not audio.loaded


def test_hook_anygpt_modalities():
    assert plugin.anygpt_modalities() == [plugin.MUSIC, plugin.AUDIO]


def test_hook_anygpt_demo_assets(tmp_path):
    values = plugin.anygpt_demo_assets(directory=tmp_path / "a")
    assert set(values) == {"music_tokenizer_path", "audio_tokenizer_path"}
    music_dir = Path(values["music_tokenizer_path"])
    assert sorted(p.name for p in music_dir.iterdir()) == ["config.json", "model.safetensors"]
    written = json.loads((music_dir / "config.json").read_text())
    for key, value in music_config().items():
        assert key in written
        if key not in {"num_filters", "hidden_size", "codebook_dim"}:
            assert written[key] == value, key
    audio_written = json.loads((Path(values["audio_tokenizer_path"]) / "config.json").read_text())
    assert audio_written["target_bandwidths"] == audio_config()["target_bandwidths"]
    again = plugin.anygpt_demo_assets(directory=tmp_path / "b")
    for name in ("music_tokenizer_path", "audio_tokenizer_path"):
        first = load_file(str(Path(values[name]) / "model.safetensors"))
        second = load_file(str(Path(again[name]) / "model.safetensors"))
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
    codes = MusicCodec(music_tokenizer_path=music_dir).encode(seeded_signal(32_000, 1.0, seed=1))
    assert codes.shape == (4, 50)
    assert len(set(codes[0].tolist())) > 20
    audio_codes = AudioCodec(audio_tokenizer_path=values["audio_tokenizer_path"]).encode(
        seeded_signal(24_000, 1.0)
    )
    assert audio_codes.shape == (4, 75)


def test_music_plugins_set_demo_assets_through_the_core(tmp_path):
    plugins = discover(load_only=["music"])
    values = plugins.demo_assets(tmp_path)
    assert Path(values["music_tokenizer_path"]).is_relative_to(tmp_path / "music")
