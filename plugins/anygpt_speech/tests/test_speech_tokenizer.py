"""SpeechTokenizer loading and encoding, against the `speechtokenizer` package itself."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from anygpt_speech.codec import SpeechCodec
from anygpt_speech.tokenizer import SpeechTokenizerConfig, build_speech_tokenizer

from anygpt_core.errors import CheckpointError, ConfigError


def package_codes(directory: Path, audio: Path) -> torch.Tensor:
    """Layer-0 codes the way the package's own API gives them (its loader, its encode)."""
    from speechtokenizer import SpeechTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SpeechTokenizer.load_from_checkpoint(
            str(directory / "speechtokenizer/config.json"),
            str(directory / "speechtokenizer/ckpt.dev"),
        ).eval()
    data, rate = sf.read(str(audio), dtype="float32", always_2d=True)
    wav = torch.from_numpy(data).mean(dim=1)
    if rate != 16000:
        wav = AF.resample(wav, rate, 16000)
    with torch.inference_mode():
        return model.encode(wav[None, None])[0]  # (1, T): layer 0, batch row


def codec_for(directory: Path) -> SpeechCodec:
    return SpeechCodec(
        {
            "speech_tokenizer_path": str(directory / "speechtokenizer/ckpt.dev"),
            "speech_max_seconds": 60.0,
            "speech_device": "cpu",
        }
    )


@pytest.mark.parametrize("name", ["mono16k.wav", "stereo44k.flac", "voice22k.wav"])
def test_tokenizer_codes_equal_package_encode_snake(tiny_options, tiny_dir, audio_dir, name):
    ours = codec_for(tiny_dir).encode(audio_dir / name)
    assert ours.dtype == torch.long
    assert torch.equal(ours, package_codes(tiny_dir, audio_dir / name))


def test_tokenizer_codes_equal_package_encode_elu(elu_dir, audio_dir):
    ours = codec_for(elu_dir).encode(audio_dir / "stereo44k.flac")
    assert torch.equal(ours, package_codes(elu_dir, audio_dir / "stereo44k.flac"))


def test_tokenizer_frame_rate_is_50_per_second(tiny_options, tiny_dir, audio_dir):
    codes = codec_for(tiny_dir).encode(audio_dir / "mono16k.wav")  # 2.0 s
    assert codes.shape == (1, 100)


def test_tokenizer_tiny_codebooks_are_not_degenerate(tiny_options, tiny_dir, audio_dir):
    codes = codec_for(tiny_dir).encode(audio_dir / "mono16k.wav")
    assert len(torch.unique(codes)) >= 20
    state = torch.load(tiny_dir / "speechtokenizer/ckpt.dev", weights_only=True)
    embed = state["quantizer.vq.layers.0._codebook.embed"]
    assert len(torch.unique(embed, dim=0)) == 1024


def test_tokenizer_array_input_matches_file(tiny_options, tiny_dir, audio_dir):
    codec = codec_for(tiny_dir)
    data, _ = sf.read(str(audio_dir / "mono16k.wav"), dtype="float32")
    assert torch.equal(codec.encode(data), codec.encode(audio_dir / "mono16k.wav"))
    assert torch.equal(codec.encode(torch.from_numpy(data)), codec.encode(data))


@pytest.mark.parametrize(("activation", "keys"), [("ELU", 166), ("Snake", 192)])
def test_tokenizer_published_architecture_key_counts(activation, keys):
    config = SpeechTokenizerConfig.published().model_copy(update={"activation": activation})
    with torch.device("meta"):
        model = build_speech_tokenizer(config)
    state = model.state_dict()
    assert len(state) == keys
    assert state["quantizer.vq.layers.7._codebook.embed"].shape == (1024, 1024)
    assert state["transform.weight"].shape == (768, 1024)


def test_tokenizer_config_activation_mismatch_is_one_line(tiny_options, tiny_dir, tmp_path):
    config = json.loads((tiny_dir / "speechtokenizer/config.json").read_text())
    config["activation"] = "ELU"
    (tmp_path / "elu.json").write_text(json.dumps(config))
    codec = SpeechCodec(
        {
            "speech_tokenizer_path": str(tiny_dir / "speechtokenizer/ckpt.dev"),
            "speech_tokenizer_config": str(tmp_path / "elu.json"),
            "speech_max_seconds": 60.0,
            "speech_device": "cpu",
        }
    )
    with pytest.raises(CheckpointError) as err:
        _ = codec.tokenizer
    message = str(err.value)
    assert "\n" not in message
    assert (
        "ckpt.dev: does not match the SpeechTokenizer model: 26 unexpected keys (encoder.model.1.block.0.alpha"
        in message
    )
    assert "activation 'ELU'" in message


def test_tokenizer_bad_config_fields_are_named(tiny_options, tiny_dir, tmp_path):
    config = json.loads((tiny_dir / "speechtokenizer/config.json").read_text())
    config["activation"] = "GELU"
    config["codebook_size"] = 2048
    del config["n_q"]
    (tmp_path / "speechtokenizer").mkdir()
    shutil.copy(tiny_dir / "speechtokenizer/ckpt.dev", tmp_path / "speechtokenizer/ckpt.dev")
    (tmp_path / "speechtokenizer/config.json").write_text(json.dumps(config))
    codec = codec_for(tmp_path)
    with pytest.raises(ConfigError) as err:
        codec.encode(np.zeros(16000, np.float32))
    message = str(err.value)
    assert message.startswith(str(tmp_path / "speechtokenizer/config.json") + ": ")
    assert "activation: Value error, expected 'ELU' or 'Snake', got 'GELU'" in message
    assert "codebook_size: Value error, the speech modality has 1024 codes, got 2048" in message
    assert "n_q: Field required" in message


def test_tokenizer_missing_config_beside_checkpoint(tiny_options, tiny_dir, tmp_path):
    (tmp_path / "speechtokenizer").mkdir()
    shutil.copy(tiny_dir / "speechtokenizer/ckpt.dev", tmp_path / "speechtokenizer/ckpt.dev")
    with pytest.raises(
        ConfigError, match=r"no config\.json beside it; pass --speech-tokenizer-config"
    ):
        codec_for(tmp_path).encode(np.zeros(16000, np.float32))


class Payload:
    """Any class instance makes a checkpoint that needs pickled code."""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty checkpoint file"),
        (b"garbage bytes, not a checkpoint", "not a readable checkpoint"),
        ("pickle", "not a readable checkpoint"),
        ("list", "expected a flat state dict of named tensors"),
    ],
)
def test_tokenizer_bad_checkpoint_is_one_line(tiny_options, tiny_dir, tmp_path, content, expected):
    (tmp_path / "speechtokenizer").mkdir()
    shutil.copy(tiny_dir / "speechtokenizer/config.json", tmp_path / "speechtokenizer/config.json")
    ckpt = tmp_path / "speechtokenizer/ckpt.dev"
    if content == "pickle":
        torch.save({"weights": Payload()}, ckpt)
    elif content == "list":
        torch.save([torch.zeros(1)], ckpt)
    else:
        ckpt.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        codec_for(tmp_path).encode(np.zeros(16000, np.float32))
    assert expected in str(err.value)
    assert "\n" not in str(err.value)
