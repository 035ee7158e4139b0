from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from anygpt_core.audio import write_wav
from anygpt_core.errors import InputError


def _tone(rate: int = 16_000, seconds: float = 0.25) -> torch.Tensor:
    t = torch.arange(int(rate * seconds)) / rate
    return 0.5 * torch.sin(2 * torch.pi * 220 * t)


@pytest.mark.parametrize(("suffix", "magic"), [(".wav", b"RIFF"), (".flac", b"fLaC")])
def test_write_wav_to_bytesio_equals_the_file(tmp_path, suffix, magic):
    wav = _tone()
    path = tmp_path / f"tone{suffix}"
    write_wav(wav, path, 16_000)
    buffer = io.BytesIO()
    write_wav(wav, buffer, 16_000, suffix=suffix)
    data = buffer.getvalue()
    assert data.startswith(magic)
    assert data == path.read_bytes()
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 16_000
    assert sf.info(str(path)).subtype == "PCM_16"
    np.testing.assert_allclose(samples, wav.numpy(), atol=1 / 16384)


def test_write_wav_stereo_flac_keeps_channels(tmp_path):
    stereo = np.stack([_tone().numpy(), -_tone().numpy()])  # [C, T]
    write_wav(stereo, tmp_path / "s.flac", 16_000)
    samples, _ = sf.read(str(tmp_path / "s.flac"), dtype="float32")
    assert samples.shape == (stereo.shape[1], 2)


def test_write_wav_rejects_other_suffixes(tmp_path):
    with pytest.raises(
        InputError,
        match=r"^\S*out\.aac: cannot write audio as '\.aac'; use \.wav, \.flac, \.mp3, \.opus$",
    ):
        write_wav(_tone(), tmp_path / "out.aac", 16_000)
    assert not (tmp_path / "out.aac").exists()
    with pytest.raises(InputError, match=r"^cannot write audio as '\.ogg'; use \.wav, .*\.opus$"):
        write_wav(_tone(), io.BytesIO(), 16_000, suffix=".ogg")


@pytest.mark.parametrize(("rate", "written"), [(16_000, 16_000), (32_000, 48_000)])
def test_write_wav_mp3_and_opus(tmp_path, rate, written):
    import torch

    tone = torch.sin(torch.arange(rate) / rate * 2 * torch.pi * 440) * 0.3  # 1 s at `rate`
    write_wav(tone, tmp_path / "a.mp3", rate)
    write_wav(tone, tmp_path / "a.opus", rate)
    mp3, opus = sf.info(str(tmp_path / "a.mp3")), sf.info(str(tmp_path / "a.opus"))
    assert (mp3.format, mp3.samplerate) == ("MP3", rate)
    assert (opus.format, opus.subtype, opus.samplerate) == ("OGG", "OPUS", written)
    for info in (mp3, opus):  # encoders pad a little
        assert 0.95 < info.duration < 1.15


def test_write_wav_to_a_file_object_needs_a_suffix():
    with pytest.raises(InputError, match="needs a suffix"):
        write_wav(_tone(), io.BytesIO(), 16_000)
