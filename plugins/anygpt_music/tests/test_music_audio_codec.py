"""Audio codec (reserved `audio` modality): encodec package vs transformers layouts, same codes."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from anygpt_music.audio import AudioCodec, build_encodec_model
from anygpt_music.keys import to_encodec_names
from anygpt_music.tiny import audio_config, build_seeded_encodec, seeded_signal
from transformers import EncodecModel

from anygpt_core.errors import CheckpointError, GenerationError, InputError


@pytest.fixture(scope="module")
def real_size_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, EncodecModel]:
    """Real-size seeded EnCodec 24 kHz weights as a transformers folder and an original .th file."""
    root = tmp_path_factory.mktemp("audio_real")
    model = build_seeded_encodec(audio_config(), seed=2, seconds=2.0)
    folder = root / "hf"
    model.save_pretrained(str(folder))
    package_model = build_encodec_model(None)
    renamed = to_encodec_names(model.state_dict(), package_model.state_dict().keys())
    original = root / "encodec_24khz-d7cc33bc.th"
    torch.save(renamed, original)
    return folder, original, model


def test_music_rename_table_maps_all_252_tensors_one_to_one():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        package = build_encodec_model(None).state_dict()
    with torch.device("meta"):
        from transformers import EncodecConfig

        hf = EncodecModel(EncodecConfig.from_dict(audio_config())).state_dict()
    assert len(package) == len(hf) == 252
    renamed = to_encodec_names(hf, package.keys())
    assert set(renamed) == set(package)
    for key, value in renamed.items():
        assert tuple(value.shape) == tuple(package[key].shape), key


def test_music_audio_original_and_transformers_layouts_give_same_codes(real_size_pair):
    folder, original, hf_model = real_size_pair
    wav = seeded_signal(24_000, 1.0, seed=11)
    from_hf = AudioCodec(audio_tokenizer_path=folder).encode(wav)
    from_th = AudioCodec(audio_tokenizer_path=original).encode(wav)
    from_th_dir = AudioCodec(audio_tokenizer_path=original.parent).encode(wav)
    with torch.inference_mode():
        expected = hf_model.encode(wav[None, None], bandwidth=3.0, return_dict=True).audio_codes[
            0, 0
        ]
    assert from_hf.shape == (4, math.ceil(wav.numel() / 320))
    for layer in from_hf:
        assert len(set(layer.tolist())) >= 30
    torch.testing.assert_close(from_hf, from_th, rtol=0, atol=0)
    torch.testing.assert_close(from_th_dir, from_th, rtol=0, atol=0)
    torch.testing.assert_close(from_hf, expected, rtol=0, atol=0)


def test_music_audio_decode_matches_transformers(real_size_pair, tmp_path):
    _folder, original, hf_model = real_size_pair
    codec = AudioCodec(audio_tokenizer_path=original)
    codes = codec.encode(seeded_signal(24_000, 0.5, seed=12))
    wav = codec.decode(codes)
    with torch.inference_mode():
        expected = hf_model.decode(codes[None, None], [None]).audio_values[0, 0]
    assert wav.shape == (codes.shape[1] * 320,)
    torch.testing.assert_close(wav, expected, rtol=1e-4, atol=1e-4)
    import soundfile as sf

    codec.save(wav, tmp_path / "a.wav")
    info = sf.info(str(tmp_path / "a.wav"))
    assert (info.samplerate, info.channels) == (24_000, 1)


def test_music_tiny_audio_codec_matches_transformers(tiny_audio_dir, write_audio):
    path = write_audio("sound.wav", 16_000, 1.5, channels=2)
    codec = AudioCodec(audio_tokenizer_path=tiny_audio_dir)
    codes = codec.encode(path)
    assert codes.shape == (4, math.ceil(1.5 * 24_000 / 320))
    assert len(set(codes[0].tolist())) >= 30
    reference = EncodecModel.from_pretrained(str(tiny_audio_dir)).eval()
    from anygpt_core.audio import load_audio

    with torch.inference_mode():
        wav = load_audio(path, 24_000)
        expected = reference.encode(wav[None, None], bandwidth=3.0, return_dict=True).audio_codes[
            0, 0
        ]
    torch.testing.assert_close(codes, expected, rtol=0, atol=0)


def test_music_audio_rejects_bad_codes_and_files(tiny_audio_dir, tmp_path):
    codec = AudioCodec(audio_tokenizer_path=tiny_audio_dir)
    with pytest.raises(GenerationError, match="code 1024 out of range"):
        codec.decode(torch.full((4, 3), 1024))
    with pytest.raises(GenerationError, match=r"shape \[4, T\]"):
        codec.decode(torch.zeros(8, 3, dtype=torch.long))
    bad = tmp_path / "x.flac"
    bad.write_text("not audio")
    with pytest.raises(InputError, match=r"x\.flac: not a readable audio file"):
        codec.encode(bad)


def test_music_audio_wrong_original_checkpoint(tmp_path):
    path = tmp_path / "encodec_24khz-00000000.th"
    torch.save({"encoder.model.0.conv.conv.bias": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="missing") as err:
        AudioCodec(audio_tokenizer_path=path).encode(torch.zeros(320))
    assert "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_music_audio_rejects_the_music_codec(tiny_music_dir):
    with pytest.raises(CheckpointError, match="24 kHz"):
        AudioCodec(audio_tokenizer_path=tiny_music_dir).encode(torch.zeros(320))


def test_music_audio_codec_contract(tiny_audio_dir, write_audio, tmp_path):
    from anygpt_music.plugin import AUDIO

    from anygpt_core.testing import check_codec_contract

    sample = write_audio("contract.flac", 48_000, 1.0)
    codes = check_codec_contract(
        AUDIO, {"audio_tokenizer_path": str(tiny_audio_dir)}, sample, tmp_path, min_distinct=50
    )
    assert codes.shape == (4, 75)
