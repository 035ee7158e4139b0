"""Streamed speech decoding: semantic codes in windows, waveform chunks trimmed at the seams.

`SpeechCodec.decode_stream` cuts the semantic codes into windows of `window` frames as they arrive.
SoundStorm fills each window's acoustic layers with the last `context` frames before it (all RVQ
layers, fixed) as its prompt, after the voice prompt. SpeechTokenizer's decoder then runs over the
new frames plus the same `context` frames on their left, the warm-up of its LSTM. Its convolutions
look about 3 frames ahead, so the last `overlap` frames of each decode are held back and decoded
again, with their right context, by the next one (overlap-trim; a cross-fade would mix in the
error it should hide). With 25 frames of context and 4 of overlap the decoder's seams vanish: the
chunks equal one decode of the streamed codes to float precision; what streaming changes is the
acoustic codes SoundStorm predicts without the frames after a window. The chunks add up to exactly
frames * hop samples; a window that covers the whole span gives the whole-span waveform.

The defaults (window 50 frames = 1 s, context 50, overlap 4) come from
`benchmarks/bench_stream_codec.py`; docs/streaming.md has the table and the reasoning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from anygpt_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CONTEXT",
    "DEFAULT_OVERLAP",
    "DEFAULT_WINDOW",
    "WaveStitcher",
    "check_stream_sizes",
    "predict_windows",
    "stitch",
    "windows",
]

#: Semantic frames per SoundStorm window (50 = 1 s of speech).
DEFAULT_WINDOW = 50
#: Frames before a window that SoundStorm and the decoder see again as its left context.
DEFAULT_CONTEXT = 50
#: Frames at the right edge of each decode held back and cross-faded into the next decode.
DEFAULT_OVERLAP = 4


def check_stream_sizes(*, window: int, context: int, overlap: int = 0) -> None:
    """Check the window sizes of a stream.

    Raises:
        ConfigError: a window below 1 frame, a negative context or overlap, or an overlap that is
            not shorter than the window.
    """
    if window < 1:
        raise ConfigError(f"speech stream window {window}: expected at least 1 frame")
    if context < 0 or overlap < 0:
        raise ConfigError(
            f"speech stream context {context}, overlap {overlap}: expected 0 or more frames"
        )
    if overlap >= window:
        raise ConfigError(
            f"speech stream overlap {overlap}: expected fewer frames than the window ({window})"
        )


def windows(pieces: Iterable[torch.Tensor], window: int) -> Iterator[torch.Tensor]:
    """Cut a stream of codes into windows, each as soon as its last frame is in.

    Args:
        pieces: int64 [n] codes as they arrive (any n, 0 included).
        window: frames per window.

    Yields:
        int64 [window] codes, then the rest (fewer frames) once `pieces` ends.
    """
    import torch

    pending: list[torch.Tensor] = []
    count = 0
    for piece in pieces:
        pending.append(piece)
        count += piece.numel()
        while count >= window:
            joined = torch.cat(pending)
            yield joined[:window]
            pending, count = [joined[window:]], count - window
    if count:
        yield torch.cat(pending)


def predict_windows(
    predict: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    pieces: Iterable[torch.Tensor],
    prompt: torch.Tensor | None,
    *,
    window: int,
    context: int,
) -> Iterator[torch.Tensor]:
    """All RVQ codes of each window, predicted after the voice prompt and the frames before it.

    Args:
        predict: SoundStorm: semantic codes int64 [n] and a prompt int64 [1, P, n_q] (or None)
            -> all RVQ codes int64 [n_q, n].
        pieces: semantic codes int64 [n] as they arrive.
        prompt: all RVQ codes int64 [1, P, n_q] of the voice prompt, or None.
        window: frames per window.
        context: frames before a window added to its prompt (fewer at the start).

    Yields:
        int64 [n_q, window] codes of each window; the last may be shorter.
    """
    import torch

    recent: torch.Tensor | None = None  # (n_q, <= context): the frames before the next window
    for semantic in windows(pieces, window):
        given = prompt
        if recent is not None and recent.shape[1]:
            frames = recent.T[None]  # (1, C, n_q)
            given = frames if prompt is None else torch.cat([prompt, frames.to(prompt.device)], 1)
        layers = predict(semantic, given)
        yield layers
        joined = layers if recent is None else torch.cat([recent, layers], dim=1)
        recent = joined[:, max(0, joined.shape[1] - context) :]


class WaveStitcher:
    """Decodes codes as they grow and joins the decodes into one waveform, chunk by chunk.

    Each `push` decodes the new frames with `context` frames on their left and returns their
    samples but those of the last `overlap` frames, which the next `push` decodes again with the
    frames after them (or `flush` returns at the end). One `push` of every frame and a `flush` give
    exactly `decode` of every frame.

    Args:
        decode: all RVQ codes int64 [n_q, n] -> waveform float32 [n * hop].
        hop: samples per code frame.
        context: frames decoded again left of the first new one.
        overlap: frames at the right edge of each decode held back for the next.
    """

    def __init__(
        self,
        decode: Callable[[torch.Tensor], torch.Tensor],
        *,
        hop: int,
        context: int,
        overlap: int,
    ) -> None:
        self._decode = decode
        self._hop = hop
        self._context = context
        self._overlap = overlap
        self._codes: torch.Tensor | None = None  # (n_q, F): frames from `_first` on
        self._first = 0  # frame index of `_codes[:, 0]`
        self._emitted = 0  # frames whose samples are returned
        self._held: torch.Tensor | None = None  # float32 samples of frames `_emitted`..end

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Add frames int64 [n_q, n]; return the samples that are now final (float32, maybe [0])."""
        import torch

        self._codes = codes if self._codes is None else torch.cat([self._codes, codes], dim=1)
        end = self._first + self._codes.shape[1]
        start = max(self._first, self._emitted - self._context)
        wav = self._decode(self._codes[:, start - self._first :])  # (frames * hop,)
        fresh = wav[(self._emitted - start) * self._hop :]  # frames `_emitted`..end
        keep = min(self._overlap, end - self._emitted)  # frames held back
        cut = (end - keep - self._emitted) * self._hop
        chunk, self._held = fresh[:cut], fresh[cut:]
        self._emitted = end - keep
        # Drop the frames no later decode reads again.
        drop = max(0, self._emitted - self._context - self._first)
        self._codes, self._first = self._codes[:, drop:], self._first + drop
        return chunk

    def flush(self) -> torch.Tensor:
        """The samples held back at the end of the codes (float32, maybe [0])."""
        import torch

        held = self._held if self._held is not None else torch.zeros(0)
        self._held = None
        if self._codes is not None:
            self._emitted = self._first + self._codes.shape[1]
        return held


def stitch(blocks: Iterable[torch.Tensor], stitcher: WaveStitcher) -> Iterator[torch.Tensor]:
    """Waveform chunks float32 [n] of code blocks int64 [n_q, frames]; empty chunks are skipped."""
    for block in blocks:
        chunk = stitcher.push(block)
        if chunk.numel():
            yield chunk
    chunk = stitcher.flush()
    if chunk.numel():
        yield chunk
