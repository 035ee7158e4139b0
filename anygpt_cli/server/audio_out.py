"""Audio answers on the wire: whole files, OpenAI's raw PCM16 at 24 kHz, and streams of both.

OpenAI's raw audio (`pcm` on /v1/audio/speech, `pcm16` in chat completions and the Realtime API)
is 16-bit signed little-endian mono PCM at 24 kHz with no header; the speech codec speaks at its
own rate (16 kHz), so raw audio is resampled to 24 kHz. A streamed answer is resampled chunk by
chunk with enough of the samples around each seam that the chunks join into exactly the
resampling of the whole waveform (`Resampler`). A streamed wav keeps the codec's rate and starts
with a header whose sizes say "unknown" (0xFFFFFFFF), as streamed wav files do.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from anygpt_core.api import Media

__all__ = [
    "PCM_RATE",
    "RAW",
    "STREAMED",
    "AudioStream",
    "Resampler",
    "audio_bytes",
    "from_pcm16",
    "pcm16",
    "wav_header",
]

#: The rate of OpenAI's raw PCM16 audio, in and out.
PCM_RATE = 24000
#: OpenAI's names of raw PCM16 at `PCM_RATE`: /v1/audio/speech's and chat completions'.
RAW = frozenset({"pcm", "pcm16"})
#: Formats an answer streams in chunk by chunk; the others (mp3, opus, flac) come whole at its end.
STREAMED = RAW | {"wav"}
#: Input samples kept on each side of a seam: torchaudio's sinc kernel (width 6 at the lower rate)
#: reaches at most 7 input samples out at 16 -> 24 kHz; 64 leaves room for any rate pair.
_MARGIN = 64


class Resampler:
    """Resamples a waveform that arrives in chunks, as one resampling of the whole would.

    Each `push` resamples the samples whose right neighbours have arrived, with `_MARGIN` samples
    of context on both sides; `flush` gives the rest. Together they equal
    `torchaudio.functional.resample` of the whole waveform, to float precision.

    Args:
        orig: the rate of the chunks pushed.
        new: the rate of the samples returned.
    """

    def __init__(self, orig: int, new: int) -> None:
        gcd = math.gcd(orig, new)
        self.orig, self.new = orig, new
        self._step = orig // gcd  # input samples per `_out` output samples
        self._out = new // gcd
        margin = -(-_MARGIN // self._step) * self._step  # whole steps
        self._margin = margin
        self._buffer: torch.Tensor | None = None  # input from `_first` on
        self._first = 0  # input index of `_buffer[0]`
        self._done = 0  # input samples whose output was returned (a multiple of `_step`)
        self._total = 0  # input samples pushed

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        """Add float32 [n] samples at `orig`; return the float32 samples at `new` now final."""
        import torch

        samples = samples.reshape(-1).float()
        self._buffer = samples if self._buffer is None else torch.cat([self._buffer, samples])
        self._total += samples.numel()
        ready = (self._total - self._margin) // self._step * self._step
        return self._emit(ready)

    def flush(self) -> torch.Tensor:
        """The samples at `new` left at the end."""
        return self._emit(self._total, last=True)

    def _emit(self, ready: int, *, last: bool = False) -> torch.Tensor:
        import torch
        import torchaudio.functional as AF

        if self._buffer is None or (ready <= self._done and not last):
            return torch.zeros(0)
        if self.orig == self.new:
            out = self._buffer[self._done - self._first : ready - self._first]
        else:
            start = max(0, self._done - self._margin)  # a multiple of `_step`
            wav = AF.resample(self._buffer[start - self._first :], self.orig, self.new)
            skip = (self._done - start) // self._step * self._out
            count = wav.numel() - skip if last else (ready - self._done) // self._step * self._out
            out = wav[skip : skip + count]
        self._done = ready
        keep = max(0, self._done - self._margin)
        self._buffer, self._first = self._buffer[keep - self._first :], keep
        return out


def pcm16(samples: torch.Tensor) -> bytes:
    """16-bit signed little-endian PCM of float samples in [-1, 1] (clipped)."""
    import numpy as np

    array = np.asarray(samples.detach().cpu().reshape(-1), dtype=np.float32)
    return (np.clip(array, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def from_pcm16(data: bytes) -> torch.Tensor:
    """Float32 samples in [-1, 1) of 16-bit signed little-endian PCM (an even number of bytes)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)


def wav_header(rate: int) -> bytes:
    """The header of a streamed 16-bit mono wav: its sizes unknown (0xFFFFFFFF)."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, 16-bit
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", unknown)
    )


class AudioStream:
    """One answer's audio in a streamed format, chunk by chunk.

    Args:
        fmt: `pcm` / `pcm16` (raw PCM16 at 24 kHz) or `wav` (PCM16 at the codec's rate).
        rate: the rate of the samples pushed.
    """

    def __init__(self, fmt: str, rate: int) -> None:
        self.fmt = fmt
        self.rate = rate
        self._resampler = Resampler(rate, PCM_RATE) if fmt in RAW else None
        self._started = False

    def push(self, samples: torch.Tensor) -> bytes:
        """The bytes of the next samples (float32 [n] at `rate`); the first call adds a header."""
        head = b""
        if not self._started and self.fmt == "wav":
            head = wav_header(self.rate)
        self._started = True
        if self._resampler is not None:
            samples = self._resampler.push(samples)
        return head + pcm16(samples)

    def finish(self) -> bytes:
        """The bytes left at the end (the resampler's tail)."""
        if self._resampler is None:
            return b""
        return pcm16(self._resampler.flush())


def audio_bytes(media: Media, fmt: str, rate: int) -> bytes:
    """A whole answer's audio as a file in `fmt` (raw PCM16 at 24 kHz for `pcm` / `pcm16`).

    Args:
        media: a decoded span (a float32 waveform).
        fmt: the format's name, OpenAI's (mp3, opus, wav, flac, pcm, pcm16).
        rate: the waveform's rate.
    """
    if fmt not in RAW:
        return media.data("." + fmt)
    stream = AudioStream(fmt, rate)
    return stream.push(media.value) + stream.finish()
