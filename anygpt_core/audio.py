"""Audio file I/O shared by audio plugins: any file `soundfile` reads, to mono at one rate.

Channels are always mixed the same way, by averaging (the reference kept channel 0 for speech input,
averaged exactly-stereo voice prompts and averaged music: REFERENCE.md §9.10). Import cost is kept low:
torch and torchaudio load only when a function is called.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from anygpt_core.errors import InputError, first_line
from anygpt_core.files import check_input_file
from anygpt_core.spec import save_format

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["AUDIO_SUFFIXES", "WRITE_FORMATS", "load_audio", "to_mono_tensor", "write_wav"]

logger = logging.getLogger(__name__)

#: Suffixes libsndfile reads (mp3 since libsndfile 1.1).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
#: Suffixes `write_wav` writes -> libsndfile (container, subtype): 16-bit PCM, lossless, or MP3
#: and Ogg Opus (libsndfile 1.1+, as the soundfile wheels bundle it: LAME and libopus).
WRITE_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".opus": ("OGG", "OPUS"),
}
#: The rates Opus encodes; audio at another rate is resampled to 48 kHz for it.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def to_mono_tensor(
    samples: np.ndarray | torch.Tensor, source_rate: int, target_rate: int
) -> torch.Tensor:
    """Mix an array to mono by averaging channels and resample it.

    Args:
        samples: float [T], [T, C] (soundfile layout) or [C, T] with C < T.
        source_rate: sample rate of `samples`.
        target_rate: wanted sample rate.

    Returns:
        float32 [T'] at `target_rate`.
    """
    import torch

    wav = torch.as_tensor(samples, dtype=torch.float32)
    if wav.ndim == 2:
        channel_axis = 1 if wav.shape[1] <= wav.shape[0] else 0
        wav = wav.mean(dim=channel_axis)
    elif wav.ndim != 1:
        raise InputError(f"audio array must be [T] or [T, channels], got shape {tuple(wav.shape)}")
    if source_rate != target_rate:
        import torchaudio.functional as AF

        wav = AF.resample(wav, source_rate, target_rate)
    return wav.contiguous()


def load_audio(
    path: str | Path,
    sample_rate: int,
    *,
    max_seconds: float | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Read an audio file from its start as mono float32 [T] at `sample_rate`.

    Args:
        path: any file libsndfile reads (wav, flac, ogg, mp3, ...), any rate and channel count.
        sample_rate: output rate.
        max_seconds: longest input accepted.
        clip: if True a longer file is cut to `max_seconds` with a logged notice; if False it is an error.

    Raises:
        InputError: the file is missing, empty, unreadable, not audio, or too long (with `clip=False`).
    """
    import soundfile as sf

    path = check_input_file(path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise InputError(f"{path}: not a readable audio file ({first_line(err)})") from err
    frames = info.frames
    if max_seconds is not None and frames > max_seconds * info.samplerate:
        seconds = frames / info.samplerate
        if not clip:
            raise InputError(f"{path}: {seconds:.1f} s is longer than the {max_seconds:g} s limit")
        logger.warning("%s: %.1f s clipped to its first %g s", path, seconds, max_seconds)
        frames = int(max_seconds * info.samplerate)
    try:
        data, rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise InputError(f"{path}: not a readable audio file ({first_line(err)})") from err
    if data.shape[0] == 0:
        raise InputError(f"{path}: no audio samples")
    return to_mono_tensor(data, rate, sample_rate)


def write_wav(
    wav: torch.Tensor | np.ndarray,
    target: str | Path | BinaryIO,
    sample_rate: int,
    *,
    suffix: str | None = None,
) -> None:
    """Write mono or [C, T] float audio, wav, flac, mp3 or opus by suffix (`WRITE_FORMATS`).

    Args:
        wav: float [T], [1, T] or [C, T] in [-1, 1]; values outside are clipped.
        target: a path, or a writable binary file object (left open).
        sample_rate: rate of `wav`.
        suffix: picks the format (".wav", ".flac", ".mp3", ".opus"); required with a file object,
            else the path's.

    Raises:
        InputError: an unsupported suffix, or a file object without `suffix`.
    """
    import numpy as np
    import soundfile as sf

    container, subtype = save_format(target, suffix, WRITE_FORMATS, "audio")
    array = np.asarray(wav.detach().cpu() if hasattr(wav, "detach") else wav, dtype=np.float32)
    array = np.squeeze(array)
    if subtype == "OPUS" and sample_rate not in OPUS_RATES:
        import torch
        import torchaudio.functional as AF

        array = AF.resample(torch.from_numpy(array), sample_rate, 48000).numpy()
        sample_rate = 48000
    if array.ndim == 2:
        array = array.T  # soundfile wants [T, C]
    destination = str(target) if isinstance(target, (str, Path)) else target
    sf.write(destination, np.clip(array, -1.0, 1.0), sample_rate, subtype=subtype, format=container)
