"""The speech codec through the plugin contract: encode, decode, voice prompts, bad inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from anygpt_speech.codec import SpeechCodec
from anygpt_speech.plugin import SPEECH

from anygpt_core.errors import CheckpointError, ConfigError, GenerationError, InputError
from anygpt_core.testing import check_codec_contract


@pytest.fixture(scope="module")
def codec(tiny_options) -> SpeechCodec:
    return SpeechCodec(tiny_options)


@pytest.fixture(scope="module")
def codes(codec, audio_dir) -> torch.Tensor:
    return codec.encode(audio_dir / "mono16k.wav")


def test_codec_contract(tiny_options, audio_dir, tmp_path):
    codes = check_codec_contract(
        SPEECH, tiny_options, audio_dir / "stereo44k.flac", tmp_path, min_distinct=10
    )
    assert codes.shape == (1, 75)


def test_codec_factory_is_lazy(tmp_path):
    paths = {
        "speech_tokenizer_path",
        "speech_tokenizer_config",
        "soundstorm_path",
        "soundstorm_config",
    }
    values = {
        o.name: str(tmp_path / "missing") if o.name in paths else o.default for o in SPEECH.options
    }
    codec = SPEECH.codec_factory(values)
    with pytest.raises(
        CheckpointError, match=r"--speech-tokenizer-path .*missing: no such file or folder"
    ):
        codec.encode(np.zeros(16000, np.float32))


def test_codec_decode_writes_16k_wav(codec, codes, tmp_path):
    wav = codec.decode(codes, seed=0)
    assert wav.dtype == torch.float32
    assert wav.shape == (codes.shape[1] * 320,)
    path = tmp_path / "out.wav"
    codec.save(wav, path)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, codes.shape[1] * 320)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_codec_saves_in_memory_as_on_disk(codec, codes, tmp_path, suffix):
    wav = codec.decode(codes, seed=0)
    buffer = io.BytesIO()
    codec.save(wav, buffer, suffix=suffix)
    path = tmp_path / f"out{suffix}"
    codec.save(wav, path)
    assert buffer.getvalue() == path.read_bytes()
    in_memory, rate = sf.read(io.BytesIO(buffer.getvalue()), dtype="int16")
    on_disk, _ = sf.read(str(path), dtype="int16")
    assert (rate, in_memory.shape) == (16000, (codes.shape[1] * 320,))
    np.testing.assert_array_equal(in_memory, on_disk)


def test_codec_save_rejects_other_audio_suffixes(codec):
    with pytest.raises(InputError, match=r"'\.aac'; use \.wav, \.flac, \.mp3, \.opus"):
        codec.save(torch.zeros(320), io.BytesIO(), suffix=".aac")


def test_codec_seeded_decoding_repeats_exactly(codec, codes, audio_dir):
    voice = audio_dir / "voice22k.wav"
    first = codec.all_layers(codes, condition=voice, seed=7)
    assert torch.equal(first, codec.all_layers(codes, condition=voice, seed=7))
    assert torch.equal(codec.decode(codes, seed=3), codec.decode(codes, seed=3))
    assert not torch.equal(codec.all_layers(codes, seed=3), codec.all_layers(codes, seed=4))


def test_codec_voice_prompt_changes_acoustic_codes(codec, codes, audio_dir):
    plain = codec.all_layers(codes, seed=0)
    voiced = codec.all_layers(codes, condition=audio_dir / "other_voice.wav", seed=0)
    assert plain.shape == voiced.shape == (8, codes.shape[1])
    assert torch.equal(plain[:1], codes)
    assert torch.equal(voiced[:1], codes)
    assert not torch.equal(plain[1:], voiced[1:])


def test_codec_voice_prompt_uses_its_first_seconds(codec, codes, audio_dir, tmp_path):
    data, rate = sf.read(str(audio_dir / "voice22k.wav"), dtype="float32")
    sf.write(tmp_path / "first3s.wav", data[: 3 * rate], rate)
    whole = codec.all_layers(codes, condition=audio_dir / "voice22k.wav", seed=2)
    first = codec.all_layers(codes, condition=tmp_path / "first3s.wav", seed=2)
    assert torch.equal(whole, first)
    shorter = SpeechCodec(codec.options, voice_prompt_seconds=1.0)
    assert not torch.equal(
        shorter.all_layers(codes, condition=audio_dir / "voice22k.wav", seed=2), whole
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("absent.wav", "absent.wav: no such file"),
        ("empty.wav", "empty.wav: empty file"),
        ("corrupt.wav", "corrupt.wav: not a readable audio file"),
        ("notes.txt", "notes.txt: not a readable audio file"),
        ("long.wav", "long.wav: 7.0 s is longer than the 5 s limit"),
        ("tiny.wav", "tiny.wav: 160 samples is shorter than one 20 ms code frame"),
    ],
)
def test_codec_bad_speech_input_is_one_line(tiny_options, audio_dir, name, expected):
    codec = SpeechCodec({**tiny_options, "speech_max_seconds": 5})
    with pytest.raises(InputError) as err:
        codec.encode(audio_dir / name)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name", ["absent.wav", "empty.wav", "corrupt.wav", "notes.txt", "tiny.wav"]
)
def test_codec_bad_voice_prompt_is_one_line(codec, codes, audio_dir, name):
    with pytest.raises(InputError) as err:
        codec.decode(codes, condition=audio_dir / name, seed=0)
    assert str(err.value).startswith(str(audio_dir / name) + ": ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (
            np.full(16000, np.nan, np.float32),
            "speech input array: audio holds NaN or infinite samples",
        ),
        (
            np.zeros(16000 * 61, np.float32),
            "speech input array: 61.0 s is longer than the 60 s limit",
        ),
        (np.zeros((0,), np.float32), "speech input array: 0 samples is shorter than one 20 ms"),
        (np.zeros((2, 2, 2), np.float32), "audio array must be [T] or [T, channels]"),
    ],
)
def test_codec_bad_arrays_are_one_line(codec, array, expected):
    with pytest.raises(InputError, match=None) as err:
        codec.encode(array)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (torch.tensor([[3, 1024]]), "code 1024 out of range: each codebook holds 0..1023"),
        (torch.tensor([[-1, 2]]), "code -1 out of range: each codebook holds 0..1023"),
        (torch.zeros(2, 5, dtype=torch.long), "codes must have shape [1, T], got [2, 5]"),
        (torch.zeros(1, 0, dtype=torch.long), "no codes to decode"),
        (torch.zeros(1, 4), "codes must be integers, got torch.float32"),
    ],
)
def test_codec_bad_codes_are_one_line(codec, bad, expected):
    """The core's check (`protocol.check_codes`): the same error and exit code as a bad span."""
    with pytest.raises(GenerationError) as err:
        codec.decode(bad, seed=0)
    assert str(err.value) == f"speech: {expected}"


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("soundstorm_steps", 0, "--soundstorm-steps 0: Input should be greater than 0"),
        (
            "voice_prompt_seconds",
            "x",
            "--voice-prompt-seconds x: Input should be a valid number, unable to parse string as a "
            "number",
        ),
        ("speech_device", "tpu:9", "--speech-device tpu:9: expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_codec_bad_options_are_config_errors(
    tiny_options, codes, audio_dir, option, value, expected
):
    codec = SpeechCodec({**tiny_options, option: value})
    with pytest.raises(ConfigError) as err:
        codec.decode(codes, condition=audio_dir / "voice22k.wav", seed=0)
    assert str(err.value) == expected


def test_codec_hub_id_not_cached_offline(tiny_options):
    codec = SpeechCodec(
        {
            **tiny_options,
            "speech_tokenizer_path": "nobody/no-such-speech-modules",
            "speech_tokenizer_config": None,
        }
    )
    with pytest.raises(CheckpointError) as err:
        codec.encode(np.zeros(16000, np.float32))
    assert str(err.value) == (
        "--speech-tokenizer-path nobody/no-such-speech-modules: speechtokenizer/ckpt.dev is not in "
        "the local Hugging Face cache (offline); run `hf download "
        "nobody/no-such-speech-modules` where there is network, or pass a local path"
    )


def test_codec_directory_in_published_layout(tiny_options, tiny_dir, audio_dir):
    by_dir = SpeechCodec(
        {
            **tiny_options,
            "speech_tokenizer_path": str(tiny_dir),
            "speech_tokenizer_config": None,
            "soundstorm_path": str(tiny_dir),
        }
    )
    codes = by_dir.encode(audio_dir / "mono16k.wav")
    assert torch.equal(codes, SpeechCodec(tiny_options).encode(audio_dir / "mono16k.wav"))
    assert by_dir.all_layers(codes, seed=0).shape == (8, 100)


def test_codec_missing_soundstorm_file(tiny_options, codes, tmp_path):
    codec = SpeechCodec({**tiny_options, "soundstorm_path": str(Path(tmp_path) / "nope.pt")})
    with pytest.raises(
        CheckpointError, match=r"--soundstorm-path .*nope\.pt: no such file or folder"
    ):
        codec.decode(codes, seed=0)


def test_codec_vc_steps_come_from_the_decoding_config(tiny_options, codes, monkeypatch):
    codec = SpeechCodec(tiny_options)
    seen: list[int] = []
    original = type(codec.soundstorm).generate

    def spy(self, *args, steps, **kwargs):
        seen.append(steps)
        return original(self, *args, steps=steps, **kwargs)

    monkeypatch.setattr(type(codec.soundstorm), "generate", spy)
    codec.decode(codes, seed=0)
    codec.decode(codes, seed=0, config=SPEECH.decoding.merged(vc_steps=5))
    flagged = SpeechCodec({**tiny_options, "soundstorm_steps": 2})
    flagged.decode(codes, seed=0, config=SPEECH.decoding.merged(vc_steps=5))
    assert seen == [3, 5, 2]  # default, the config's vc_steps, the flag over the config


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_speech_max_seconds_must_be_finite_and_positive(tiny_options, audio_dir, value):
    codec = SpeechCodec({**tiny_options, "speech_max_seconds": value})
    with pytest.raises(ConfigError) as err:  # nan and inf would switch the limit off
        codec.encode(audio_dir / "long.wav")
    problem = "Input should be greater than 0" if value < 0 else "Input should be a finite number"
    assert str(err.value) == f"--speech-max-seconds {value}: {problem}"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_refuses_a_speech_max_seconds_that_is_not_finite(audio_dir, capsys, value):
    from anygpt_core.testing import run_cli

    args = ["encode", "speech", str(audio_dir / "long.wav"), "--speech-max-seconds", value]
    code, out, err = run_cli(args, capsys)
    assert code == 6
    assert out == ""
    assert err == f"Error: --speech-max-seconds {float(value)}: expected a finite number\n"
