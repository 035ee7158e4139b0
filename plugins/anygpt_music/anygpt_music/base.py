"""What the music and audio codecs share: reading input, checking codes, writing wav files."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, TypeVar

from anygpt_core.audio import load_audio, to_mono_tensor, write_wav
from anygpt_core.codec import CodecOptions, LazyCodec
from anygpt_core.errors import InputError
from anygpt_core.protocol import check_codes

if TYPE_CHECKING:
    import numpy as np
    import torch

    from anygpt_core.config import DecodingConfig

__all__ = ["WaveCodec"]

logger = logging.getLogger(__name__)

OptionsT = TypeVar("OptionsT", bound=CodecOptions)


class WaveCodec(LazyCodec[OptionsT], ABC):
    """An RVQ audio codec: mono audio at one rate <-> int64 codes [num_codebooks, T].

    Subclasses set their options and sizes, load their model in `_load` (called once, on the
    first encode or decode, whichever thread gets there first) and implement `_encode_wave` and
    `_decode_codes`; this class handles files, arrays, length limits, code checks and saving.
    """

    #: Modality name used in messages.
    name: ClassVar[str]
    sample_rate: ClassVar[int]
    num_codebooks: ClassVar[int]
    codebook_size: ClassVar[int]
    frame_rate: ClassVar[int]

    @property
    @abstractmethod
    def max_seconds(self) -> float | None:
        """Longest input in seconds; longer input is clipped with a notice. None: no limit."""

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (they load on the first encode or decode)."""
        return self.is_loaded("model")

    def model(self) -> Any:  # noqa: ANN401 - each subclass holds its own model type
        """The underlying model, loaded on first use."""
        return self.lazy("model", self._load)

    @abstractmethod
    def _load(self) -> Any:  # noqa: ANN401 - see `model`
        """Load and return the model in eval mode."""

    @abstractmethod
    def _encode_wave(self, wav: torch.Tensor) -> torch.Tensor:
        """Codes int64 [num_codebooks, T] of mono float32 wav [samples] at `sample_rate`."""

    @abstractmethod
    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Mono float32 wav [samples] of checked codes int64 [num_codebooks, T]."""

    def encode(self, source: Path | str | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Encode an audio file, or an array already at `sample_rate`.

        Args:
            source: a file libsndfile reads (any rate and channel count, read from its start), or
                float samples [T], [T, C] or [C, T] at `sample_rate`.

        Returns:
            codes: int64 [num_codebooks, T], each value in [0, codebook_size).

        Raises:
            InputError: the file is missing, empty, corrupt or not audio, or the array is empty.
        """
        import numpy as np
        import torch

        limit_s = self.max_seconds
        if isinstance(source, (str, Path)):
            wav = load_audio(source, self.sample_rate, max_seconds=limit_s, clip=True)
            what = str(source)
        else:
            what = f"{self.name} array"
            if np.size(source) == 0 if isinstance(source, np.ndarray) else source.numel() == 0:
                raise InputError(f"{what}: empty")
            wav = to_mono_tensor(source, self.sample_rate, self.sample_rate)
            if limit_s is not None and wav.shape[-1] > int(limit_s * self.sample_rate):
                seconds = wav.shape[-1] / self.sample_rate
                logger.warning("%s: %.1f s clipped to its first %g s", what, seconds, limit_s)
                wav = wav[: int(limit_s * self.sample_rate)]
        if not torch.isfinite(wav).all():
            raise InputError(f"{what}: audio holds NaN or infinite samples")
        with torch.inference_mode():
            codes = self._encode_wave(wav)
        return codes.to(torch.int64).contiguous()

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Validate decoder input and return it as int64 [num_codebooks, T].

        Raises:
            GenerationError: see `anygpt_core.protocol.check_codes`.
        """
        return check_codes(
            codes,
            name=self.name,
            num_codebooks=self.num_codebooks,
            codebook_size=self.codebook_size,
        )

    def decode(
        self,
        codes: torch.Tensor,
        *,
        condition: Path | None = None,
        seed: int | None = None,
        config: DecodingConfig | None = None,
    ) -> torch.Tensor:
        """Decode codes into a waveform.

        Args:
            codes: int64 [num_codebooks, T].
            condition: not used by EnCodec; giving one is an error.
            seed: ignored (EnCodec decoding is deterministic).
            config: ignored (no decoding-time settings).

        Returns:
            wav: float32 [T * hop] at `sample_rate`, mono.

        Raises:
            InputError: a condition file was given.
            GenerationError: bad codes.
        """
        import torch

        del seed  # deterministic decoder
        if condition is not None:
            raise InputError(f"{condition}: {self.name} decoding takes no condition file")
        codes = self.check_codes(codes)
        with torch.inference_mode():
            wav = self._decode_codes(codes)
        return wav.detach().to(torch.float32).reshape(-1).cpu()

    def save(
        self, media: torch.Tensor, target: Path | BinaryIO, *, suffix: str | None = None
    ) -> None:
        """Write a waveform as 16-bit PCM .wav or .flac at `sample_rate`.

        Raises:
            InputError: another suffix, or a file object without `suffix`.
        """
        write_wav(media, target, self.sample_rate, suffix=suffix)
