"""The protocol strings: codes `[K, T]` <-> `<so..><p0><p1>…<eo..>`, and responses -> segments.

RVQ codebooks are flattened frame-major with a layer offset: frame t, layer k is the token of index
`code + codebook_size * k` (REFERENCE.md §1). Parsing validates every span (range, layer order, whole
frames, fixed length); strict mode raises with the character position, lenient mode repairs and warns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from anygpt_core.errors import GenerationError
from anygpt_core.spec import ModalitySpec

if TYPE_CHECKING:
    import torch

__all__ = [
    "SpanSegment",
    "TextSegment",
    "check_codes",
    "codes_to_string",
    "flatten_codes",
    "frames_from_flat",
    "parse_response",
    "string_to_codes",
    "unflatten_codes",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextSegment:
    """Plain text between spans."""

    text: str


@dataclass(frozen=True)
class SpanSegment:
    """A well-formed modality span.

    Attributes:
        modality: the modality name.
        codes: int64 [num_codebooks, T].
        position: character (or token) offset of the start token in the parsed input.
        repairs: what lenient parsing changed, empty for a clean span.
    """

    modality: str
    codes: torch.Tensor
    position: int
    repairs: tuple[str, ...] = field(default=())


def check_codes(
    codes: torch.Tensor,
    *,
    name: str,
    num_codebooks: int,
    codebook_size: int,
    frames: int | None = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Codes as int64 [num_codebooks, T], or a `GenerationError` saying what is wrong with them.

    The one check of the core (before codes become tokens) and of every codec (before it decodes),
    so the same bad codes fail alike everywhere. A 1-D tensor is one codebook's [T].

    Args:
        codes: integer codes [K, T] (or [T] when `num_codebooks` is 1).
        name: the modality, named in the error.
        num_codebooks: K.
        codebook_size: codes lie in [0, codebook_size).
        frames: T when every item has this many frames (an image's 32).
        allow_empty: whether T may be 0.
    """
    import torch

    codes = torch.as_tensor(codes)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise GenerationError(f"{name}: codes must be integers, got {codes.dtype}")
    if codes.ndim == 1 and num_codebooks == 1:
        codes = codes[None]
    width = "T" if frames is None else str(frames)
    if (
        codes.ndim != 2
        or codes.shape[0] != num_codebooks
        or (frames is not None and codes.shape[1] != frames)
    ):
        raise GenerationError(
            f"{name}: codes must have shape [{num_codebooks}, {width}], got {list(codes.shape)}"
        )
    if codes.shape[1] == 0 and not allow_empty:
        raise GenerationError(f"{name}: no codes to decode")
    if codes.numel():
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= codebook_size:
            raise GenerationError(
                f"{name}: code {low if low < 0 else high} out of range: each codebook holds "
                f"0..{codebook_size - 1}"
            )
    return codes.to(torch.long)


def flatten_codes(spec: ModalitySpec, codes: torch.Tensor) -> torch.Tensor:
    """Flatten codes int64 [K, T] frame-major with layer offsets into indices int64 [T*K].

    Raises:
        GenerationError: see `check_codes`.
    """
    import torch

    codes = check_codes(
        codes,
        name=spec.name,
        num_codebooks=spec.num_codebooks,
        codebook_size=spec.codebook_size,
        allow_empty=True,
    )
    offsets = torch.arange(spec.num_codebooks, dtype=torch.long)[:, None] * spec.codebook_size
    return (codes + offsets).T.reshape(-1)


def unflatten_codes(spec: ModalitySpec, flat: torch.Tensor) -> torch.Tensor:
    """Inverse of `flatten_codes` for a valid index sequence: int64 [T*K] -> [K, T]."""
    import torch

    flat = torch.as_tensor(flat, dtype=torch.long)
    frames = flat.reshape(-1, spec.num_codebooks)
    return (frames % spec.codebook_size).T.contiguous()


def codes_to_string(spec: ModalitySpec, codes: torch.Tensor) -> str:
    """Serialize codes int64 [K, T] as the protocol string `<start><p i>…<end>` (no separators)."""
    flat = flatten_codes(spec, codes).tolist()
    prefix = spec.prefix
    return spec.start + "".join(f"<{prefix}{i}>" for i in flat) + spec.end


def frames_from_flat(
    spec: ModalitySpec,
    flat: Sequence[int],
    positions: Sequence[int],
    *,
    strict: bool,
    where: str,
) -> tuple[torch.Tensor, list[str]]:
    """Check a span's flattened indices and turn them into codes int64 [K, T].

    Args:
        spec: the span's modality.
        flat: the indices between start and end token.
        positions: the offset of each index in the parsed input, for messages.
        strict: raise on the first problem instead of repairing it.
        where: how to name the span in messages (e.g. `span <somu> at 12`).

    Returns:
        The codes and the repairs made (lenient mode only).
    """
    import torch

    k_count, size = spec.num_codebooks, spec.codebook_size
    repairs: list[str] = []

    def problem(message: str) -> None:
        if strict:
            raise GenerationError(f"{where}: {message}")
        repairs.append(message)

    kept: list[int] = []
    for index, pos in zip(flat, positions, strict=True):
        if index >= spec.vocab_size:
            problem(f"code {index} at {pos} is out of range [0, {spec.vocab_size})")
            continue
        expected = len(kept) % k_count
        if index // size != expected:
            problem(
                f"code {index} at {pos} belongs to codebook {index // size}, expected {expected}"
            )
            if expected:  # drop the broken frame and resynchronise on the next layer-0 code
                del kept[len(kept) - expected :]
            if index // size != 0:
                continue
        kept.append(index)
    if len(kept) % k_count:
        problem(f"ends inside a frame ({len(kept) % k_count} of {k_count} codebooks)")
        del kept[len(kept) - len(kept) % k_count :]
    frames = len(kept) // k_count
    if spec.fixed_frames is not None and frames != spec.fixed_frames:
        problem(f"has {frames} codes, {spec.name} needs exactly {spec.fixed_frames}")
        if frames > spec.fixed_frames:
            kept = kept[: spec.fixed_frames * k_count]
        elif frames == 0:
            raise GenerationError(f"{where}: no codes to repeat")
        else:
            kept += kept[-k_count:] * (spec.fixed_frames - frames)
    if not kept:
        raise GenerationError(f"{where}: span holds no codes")
    return unflatten_codes(spec, torch.tensor(kept, dtype=torch.long)), repairs


def _code_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(r"\s*<" + re.escape(prefix) + r"(\d+)>")


def string_to_codes(spec: ModalitySpec, text: str, *, strict: bool = True) -> torch.Tensor:
    """Parse exactly one span of `spec` (surrounding whitespace allowed) into codes int64 [K, T]."""
    segments = parse_response(text.strip(), {spec.name: spec}, strict=strict)
    spans = [s for s in segments if isinstance(s, SpanSegment)]
    stray = "".join(s.text for s in segments if isinstance(s, TextSegment)).strip()
    if len(spans) != 1 or (stray and strict):
        raise GenerationError(
            f"expected one {spec.start}…{spec.end} span, found {len(spans)}"
            + (f" and text {stray[:30]!r}" if stray else "")
        )
    return spans[0].codes


def parse_response(
    text: str, modalities: Mapping[str, ModalitySpec], *, strict: bool = True
) -> list[TextSegment | SpanSegment]:
    """Split a response into text and modality spans.

    Whitespace between span tokens is ignored (older transformers joined added tokens with spaces).

    Raises:
        GenerationError (strict): an unclosed span, foreign text inside a span, a stray end token, a
            code out of range, a broken frame or a wrong length, naming the character position.
    """
    specs = list(modalities.values())
    if not specs:
        return [TextSegment(text)] if text else []
    starts = {s.start: s for s in specs}
    ends = {s.end: s for s in specs}
    marker = re.compile(
        "|".join(re.escape(t) for t in sorted({*starts, *ends}, key=len, reverse=True))
    )
    segments: list[TextSegment | SpanSegment] = []
    buffer: list[str] = []
    pos = 0
    while pos < len(text):
        found = marker.search(text, pos)
        if found is None:
            buffer.append(text[pos:])
            break
        buffer.append(text[pos : found.start()])
        token = found.group(0)
        if token in ends:
            message = f"end token {token} at {found.start()} without a start"
            if strict:
                raise GenerationError(message)
            logger.warning("%s; dropped", message)
            pos = found.end()
            continue
        spec = starts[token]
        span, pos = _read_span(text, spec, found.start(), found.end(), strict=strict)
        if "".join(buffer):
            segments.append(TextSegment("".join(buffer)))
        buffer = []
        segments.append(span)
    if "".join(buffer):
        segments.append(TextSegment("".join(buffer)))
    return segments


def _read_span(
    text: str, spec: ModalitySpec, start: int, pos: int, *, strict: bool
) -> tuple[SpanSegment, int]:
    where = f"span {spec.start} at {start}"
    pattern = _code_pattern(spec.prefix)
    flat: list[int] = []
    positions: list[int] = []
    repairs: list[str] = []
    while True:
        match = pattern.match(text, pos)
        if match:
            flat.append(int(match.group(1)))
            positions.append(match.start(1) - len(spec.prefix) - 1)
            pos = match.end()
            continue
        rest = text[pos:].lstrip()
        skipped = len(text) - pos - len(rest)
        if rest.startswith(spec.end):
            pos += skipped + len(spec.end)
        elif rest:
            message = f"unexpected {rest[:12]!r} at {pos + skipped} before {spec.end}"
            if strict:
                raise GenerationError(f"{where}: {message}")
            repairs.append(message + "; span closed there")
        elif strict:
            raise GenerationError(f"{where}: not closed by {spec.end}")
        else:
            repairs.append(f"not closed by {spec.end}")
        break
    codes, more = frames_from_flat(spec, flat, positions, strict=strict, where=where)
    repairs += more
    for message in repairs:
        logger.warning("%s: %s", where, message)
    return SpanSegment(spec.name, codes, start, tuple(repairs)), pos
