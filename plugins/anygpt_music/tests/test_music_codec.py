"""Music codec: parity with transformers' EncodecModel, input handling, code checks, checkpoints."""

from __future__ import annotations

import io
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from anygpt_music.music import MusicCodec
from anygpt_music.tiny import music_config, seeded_signal
from safetensors.torch import load_file, save_file
from transformers import EncodecModel

from anygpt_core.audio import to_mono_tensor
from anygpt_core.errors import CheckpointError, ConfigError, GenerationError, InputError


@pytest.fixture(scope="module")
def codec(tiny_music_dir: Path) -> MusicCodec:
    return MusicCodec(music_tokenizer_path=tiny_music_dir, music_seconds=20.0)


@pytest.fixture(scope="module")
def reference(tiny_music_dir: Path) -> EncodecModel:
    return EncodecModel.from_pretrained(str(tiny_music_dir)).eval()


def _reference_codes(model: EncodecModel, wav: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(wav[None, None], return_dict=True).audio_codes[0, 0]


def test_music_codes_equal_transformers_encode(codec, reference, write_audio):
    path = write_audio("tone.wav", 32_000, 3.0)
    wav = torch.from_numpy(sf.read(str(path), dtype="float32")[0])
    codes = codec.encode(path)
    expected = _reference_codes(reference, wav)
    assert codes.dtype == torch.int64
    assert codes.shape == (4, math.ceil(wav.numel() / 640)) == expected.shape
    torch.testing.assert_close(codes, expected, rtol=0, atol=0)


def test_music_codes_are_not_degenerate(codec):
    codes = codec.encode(seeded_signal(32_000, 4.0, seed=3))
    for layer in codes:
        assert len(set(layer.tolist())) >= 50
    assert int(codes.min()) >= 0
    assert int(codes.max()) < 2048


def test_music_decode_equals_transformers_decode_and_saves_wav(codec, reference, tmp_path):
    codes = codec.encode(seeded_signal(32_000, 2.0, seed=4))
    wav = codec.decode(codes)
    with torch.inference_mode():
        expected = reference.decode(codes[None, None], [None]).audio_values[0, 0]
    assert wav.dtype == torch.float32
    assert wav.shape == (codes.shape[1] * 640,)
    torch.testing.assert_close(wav, expected)
    out = tmp_path / "out.wav"
    codec.save(wav, out)
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (32_000, 1, "PCM_16")
    assert info.frames == wav.numel()


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_music_saves_in_memory_as_on_disk(codec, tmp_path, suffix):
    wav = codec.decode(codec.encode(seeded_signal(32_000, 1.0, seed=6)))
    buffer = io.BytesIO()
    codec.save(wav, buffer, suffix=suffix)
    path = tmp_path / f"out{suffix}"
    codec.save(wav, path)
    assert buffer.getvalue() == path.read_bytes()
    in_memory, rate = sf.read(io.BytesIO(buffer.getvalue()), dtype="int16")
    on_disk, _ = sf.read(str(path), dtype="int16")
    assert rate == 32_000
    assert in_memory.shape == (wav.numel(),)
    np.testing.assert_array_equal(in_memory, on_disk)
    np.testing.assert_allclose(in_memory / 32768, wav.numpy(), atol=1 / 16384)


def test_music_save_to_a_file_object_needs_a_suffix(codec):
    with pytest.raises(InputError, match="needs a suffix"):
        codec.save(torch.zeros(640), io.BytesIO())


def test_music_encode_of_decoded_audio_is_stable_in_shape(codec):
    codes = codec.encode(seeded_signal(32_000, 1.0, seed=5))
    again = codec.encode(codec.decode(codes))
    assert again.shape == codes.shape


def test_music_stereo_44k_flac_is_averaged_and_resampled(codec, write_audio):
    path = write_audio("stereo.flac", 44_100, 2.0, channels=2)
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    expected = codec.encode(to_mono_tensor(data, rate, 32_000))
    codes = codec.encode(path)
    assert codes.shape == (4, math.ceil(2.0 * 32_000 / 640))
    torch.testing.assert_close(codes, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("clip.mp3", {"format": "MP3"}), ("clip.ogg", {"format": "OGG", "subtype": "VORBIS"})],
)
def test_music_compressed_formats_encode(codec, write_audio, name, kwargs):
    if kwargs["format"] not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write {kwargs['format']}")
    path = write_audio(name, 44_100, 2.0, channels=2, **kwargs)
    codes = codec.encode(path)
    # mp3 encoders pad the start, so allow a frame or two more than the 2 s of samples.
    assert codes.shape[0] == 4
    assert 100 <= codes.shape[1] <= 104
    assert len(set(codes[0].tolist())) > 10


def test_music_long_input_is_clipped_from_its_start(tiny_music_dir, write_audio, caplog):
    path = write_audio("long.wav", 32_000, 3.0)
    short = MusicCodec(music_tokenizer_path=tiny_music_dir, music_seconds=1.0)
    with caplog.at_level(logging.WARNING):
        codes = short.encode(path)
    assert codes.shape == (4, 50)
    assert "clipped to its first 1 s" in caplog.text
    head = torch.from_numpy(sf.read(str(path), dtype="float32")[0][:32_000])
    torch.testing.assert_close(codes, short.encode(head), rtol=0, atol=0)


def test_music_long_array_is_clipped(tiny_music_dir, caplog):
    short = MusicCodec(music_tokenizer_path=tiny_music_dir, music_seconds=0.5)
    with caplog.at_level(logging.WARNING):
        assert short.encode(np.zeros(32_000, dtype=np.float32)).shape == (4, 25)
    assert "clipped" in caplog.text


def _one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    assert name in text


def test_music_bad_files_raise_one_line_input_error(codec, tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(64)))
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio\n" * 20)
    missing = tmp_path / "missing.flac"
    for path in (empty, corrupt, text, missing):
        with pytest.raises(InputError) as err:
            codec.encode(path)
        _one_line_naming(err, str(path))
        assert err.value.exit_code == 3


def test_music_empty_or_non_finite_arrays_raise(codec):
    with pytest.raises(InputError, match="empty"):
        codec.encode(np.zeros(0, dtype=np.float32))
    with pytest.raises(InputError, match="NaN"):
        codec.encode(torch.full((640,), float("nan")))


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (torch.zeros(4, 10, 2, dtype=torch.long), r"shape \[4, T\]"),
        (torch.zeros(3, 10, dtype=torch.long), r"shape \[4, T\], got \[3, 10\]"),
        (torch.zeros(4, 0, dtype=torch.long), "no codes"),
        (torch.full((4, 5), 2048), "code 2048 out of range"),
        (torch.full((4, 5), -1), "code -1 out of range"),
        (torch.zeros(4, 5), "must be integers"),
    ],
)
def test_music_decode_rejects_bad_codes(codec, codes, message):
    with pytest.raises(GenerationError, match=message):
        codec.decode(codes)


def test_music_decode_takes_no_condition(codec, tmp_path):
    with pytest.raises(InputError, match="takes no condition"):
        codec.decode(torch.zeros(4, 2, dtype=torch.long), condition=tmp_path / "voice.wav")


def test_music_weights_load_lazily(tiny_music_dir):
    codec = MusicCodec(music_tokenizer_path=tiny_music_dir)
    assert not codec.loaded
    codec.decode(torch.zeros(4, 3, dtype=torch.long))
    assert codec.loaded


def test_music_old_weight_norm_names_load(tiny_music_dir, tmp_path, codec):
    folder = tmp_path / "old_names"
    folder.mkdir()
    shutil.copy(tiny_music_dir / "config.json", folder / "config.json")
    state = load_file(str(tiny_music_dir / "model.safetensors"))
    old = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        ): v
        for k, v in state.items()
    }
    assert any(k.endswith(".weight_g") for k in old)
    save_file(old, str(folder / "model.safetensors"))
    wav = seeded_signal(32_000, 1.0, seed=9)
    torch.testing.assert_close(
        MusicCodec(music_tokenizer_path=folder).encode(wav), codec.encode(wav), rtol=0, atol=0
    )


def test_music_missing_tensor_is_a_checkpoint_error(tiny_music_dir, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(tiny_music_dir / "config.json", folder / "config.json")
    state = load_file(str(tiny_music_dir / "model.safetensors"))
    del state["quantizer.layers.2.codebook.embed"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"1 missing key \(quantizer.layers.2.codebook.embed\)"
    ):
        MusicCodec(music_tokenizer_path=folder).encode(np.zeros(640, dtype=np.float32))


def test_music_rejects_a_24khz_codec(tiny_audio_dir):
    with pytest.raises(CheckpointError, match="sampling_rate 24000 \\(need 32000\\)"):
        MusicCodec(music_tokenizer_path=tiny_audio_dir).decode(torch.zeros(4, 2, dtype=torch.long))


def test_music_missing_checkpoint_messages(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder") as err:
        MusicCodec(music_tokenizer_path=tmp_path / "nowhere").decode(
            torch.zeros(4, 2, dtype=torch.long)
        )
    _one_line_naming(err, "nowhere")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache") as err:
        MusicCodec(music_tokenizer_path="someone/not-cached-encodec").decode(
            torch.zeros(4, 2, dtype=torch.long)
        )
    _one_line_naming(err, "someone/not-cached-encodec")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        MusicCodec(music_tokenizer_path=tmp_path / "empty_dir").decode(
            torch.zeros(4, 2, dtype=torch.long)
        )


def test_music_corrupt_weights_are_a_checkpoint_error(tiny_music_dir, tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    shutil.copy(tiny_music_dir / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        MusicCodec(music_tokenizer_path=folder).decode(torch.zeros(4, 2, dtype=torch.long))


def test_music_hub_id_resolves_from_the_local_cache(tiny_music_dir, tmp_path, monkeypatch):
    revision = "0" * 40
    repo = tmp_path / "hub" / "models--facebook--encodec_32khz"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_music_dir / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    codec = MusicCodec(music_tokenizer_path="facebook/encodec_32khz")
    assert codec.encode(np.zeros(1280, dtype=np.float32)).shape == (4, 2)


def test_music_published_config_builds_the_published_architecture():
    from transformers import EncodecConfig

    config = EncodecConfig.from_dict(music_config())
    with torch.device("meta"):
        model = EncodecModel(config)
    state = model.state_dict()
    assert config.frame_rate == 50
    assert config.num_quantizers == 4
    assert state["quantizer.layers.3.codebook.embed"].shape == (2048, 128)
    assert state["encoder.layers.0.conv.parametrizations.weight.original1"].shape == (64, 1, 7)
    assert not any(".shortcut." in k for k in state)  # use_conv_shortcut false on main
    assert sum(v.numel() for k, v in state.items() if "codebook" not in k) > 50_000_000


def test_music_codec_contract(tiny_music_dir, write_audio, tmp_path):
    from anygpt_music.plugin import MUSIC

    from anygpt_core.testing import check_codec_contract

    sample = write_audio("contract.wav", 22_050, 1.0, channels=2)
    codes = check_codec_contract(
        MUSIC, {"music_tokenizer_path": str(tiny_music_dir)}, sample, tmp_path, min_distinct=50
    )
    assert codes.shape == (4, 50)


def test_music_seconds_must_be_positive(tiny_music_dir):
    with pytest.raises(ConfigError, match="--music-seconds 0: Input should be greater than 0"):
        MusicCodec(music_tokenizer_path=tiny_music_dir, music_seconds=0).encode(
            np.zeros(640, dtype=np.float32)
        )
    with pytest.raises(ConfigError, match="--music-seconds"):
        MusicCodec(music_tokenizer_path=tiny_music_dir, music_seconds="soon").encode(
            np.zeros(640, dtype=np.float32)
        )
