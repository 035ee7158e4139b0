"""A residual vector quantiser for numeric series: frames of `frame_size` values -> 2 x 64 codes.

The checkpoint is one safetensors file with `codebooks` float32 [num_codebooks, codebook_size,
frame_size] and `scale` float32 [1] (values are divided by it before quantising). `fit_codebooks`
learns the codebooks from your own series with seeded k-means, stage by stage on the residuals.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pydantic import Field

from anygpt_core import CheckpointError, InputError
from anygpt_core.checkpoints import read_state_dict, resolve_checkpoint
from anygpt_core.codec import CodecOptions, LazyCodec
from anygpt_core.protocol import check_codes
from anygpt_core.spec import save_suffix

if TYPE_CHECKING:
    import numpy as np
    import torch

    from anygpt_core.config import DecodingConfig

__all__ = [
    "CODEBOOK_SIZE",
    "NUM_CODEBOOKS",
    "SequenceCodec",
    "SequenceOptions",
    "fit_codebooks",
    "read_series",
    "save_checkpoint",
]

#: Codes per codebook and RVQ stages; the modality's tokens are `<📈0>`…`<📈127>`.
CODEBOOK_SIZE = 64
NUM_CODEBOOKS = 2


def read_series(path: Path) -> np.ndarray:
    """Read a 1-D series from `.npy` or text (`.csv`, `.txt`: numbers split by commas or spaces).

    A first line that is not numeric (a CSV header) is skipped.

    Returns:
        values: float32 [N].

    Raises:
        InputError: the file is missing, empty, not numeric or holds NaN / infinite values.
    """
    import numpy as np

    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False).astype(np.float32).reshape(-1)
        else:
            rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8").replace(" ", ","))))
            cells = [c for row in rows for c in row if c.strip()]
            if rows and cells and not _numeric(cells[0]):
                cells = [c for row in rows[1:] for c in row if c.strip()]
            values = np.array([float(c) for c in cells], dtype=np.float32)
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: not a numeric series ({str(err).splitlines()[0][:80]})") from err
    if values.size == 0:
        raise InputError(f"{path}: empty series")
    if not np.isfinite(values).all():
        raise InputError(f"{path}: series holds NaN or infinite values")
    return values


def _numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


class SequenceOptions(CodecOptions):
    """The codec's options: each field is a flag of `anygpt run`, `chat`, `encode`, `decode`."""

    sequence_codec_path: Path | None = Field(
        None, description="Sequence codec checkpoint: .safetensors with codebooks and scale."
    )


class SequenceCodec(LazyCodec[SequenceOptions]):
    """Encode a series to codes int64 [num_codebooks, T] (T frames) and back.

    Built from option values (`SequenceCodec(sequence_codec_path="codec.safetensors")`); the
    checkpoint is read on first use, once, so building the codec is free.
    """

    Options = SequenceOptions

    def _load(self) -> tuple[torch.Tensor, float]:
        return self.lazy("checkpoint", self._read)

    def _read(self) -> tuple[torch.Tensor, float]:
        path = self.options.sequence_codec_path
        if path is None:
            raise CheckpointError("sequence codec: pass --sequence-codec-path codec.safetensors")
        tensors = read_state_dict(resolve_checkpoint(path, flag="--sequence-codec-path"))
        books = tensors.get("codebooks")
        shape = (NUM_CODEBOOKS, CODEBOOK_SIZE)
        if books is None or books.ndim != 3 or tuple(books.shape[:2]) != shape:
            raise CheckpointError(
                f"{path}: expected tensors 'codebooks' [{shape[0]}, {shape[1]}, F] and 'scale'"
            )
        if "scale" not in tensors:
            raise CheckpointError(f"{path}: expected a tensor 'scale'")
        return books.float(), float(tensors["scale"].reshape(-1)[0])

    @property
    def frame_size(self) -> int:
        """Values per frame (loads the checkpoint)."""
        return int(self._load()[0].shape[2])

    def encode(self, source: Path | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Quantise a series; the last frame is padded by repeating the last value.

        Returns:
            codes: int64 [num_codebooks, ceil(N / frame_size)].
        """
        import torch

        books, scale = self._load()
        values = read_series(source) if isinstance(source, Path) else source
        x = torch.as_tensor(values, dtype=torch.float32).reshape(-1) / scale
        if x.numel() == 0:
            raise InputError("sequence codec: empty series")
        frame = books.shape[2]
        pad = (-x.numel()) % frame
        x = torch.cat([x, x[-1:].expand(pad)])
        return _quantise(x.view(-1, frame), books)

    def decode(
        self,
        codes: torch.Tensor,
        *,
        condition: Path | None = None,
        seed: int | None = None,
        config: DecodingConfig | None = None,
    ) -> np.ndarray:
        """Sum the chosen codewords of each stage: codes int64 [K, T] -> float32 [T * frame].

        Deterministic: `seed` and `config` are not read; a `condition` never comes (the spec
        declares none, and the core refuses one).
        """
        codes = check_codes(
            codes, name="sequence", num_codebooks=NUM_CODEBOOKS, codebook_size=CODEBOOK_SIZE
        )
        books, scale = self._load()
        frames = books[0][codes[0]]  # (T, frame)
        for k in range(1, books.shape[0]):
            frames = frames + books[k][codes[k]]
        return (frames.reshape(-1) * scale).numpy()

    def save(
        self, media: np.ndarray, target: Path | BinaryIO, *, suffix: str | None = None
    ) -> None:
        """Write values as `.npy`, or as text with one value per line (any other suffix).

        Raises:
            InputError: a file object without `suffix`.
        """
        import numpy as np

        buffer = io.BytesIO()
        if save_suffix(target, suffix) == ".npy":
            np.save(buffer, np.asarray(media, dtype=np.float32))
        else:
            buffer.write("".join(f"{v:.6g}\n" for v in np.asarray(media).tolist()).encode())
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(buffer.getvalue())
        else:
            target.write(buffer.getvalue())


def _quantise(frames: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """Residual quantisation: frames float32 [T, F], books [K, V, F] -> codes int64 [K, T]."""
    import torch

    residual = frames.clone()
    codes = []
    for book in books:
        index = torch.cdist(residual, book).argmin(dim=1)  # (T,)
        residual -= book[index]
        codes.append(index)
    return torch.stack(codes).long()


def fit_codebooks(
    series: Sequence[np.ndarray],
    *,
    frame_size: int = 4,
    codebook_size: int = CODEBOOK_SIZE,
    num_codebooks: int = NUM_CODEBOOKS,
    iterations: int = 20,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Learn RVQ codebooks with seeded k-means, one stage at a time on the previous residuals.

    Args:
        series: 1-D float arrays; each is cut into frames of `frame_size` (a short tail is dropped).
        frame_size: values per frame.
        codebook_size: codewords per stage.
        num_codebooks: residual stages.
        iterations: k-means iterations per stage.
        seed: seeds the choice of initial centres.

    Returns:
        The checkpoint tensors: `codebooks` float32 [K, V, F] and `scale` float32 [1] (the largest
        absolute value seen, so quantised values lie in [-1, 1]).
    """
    import torch

    chunks = []
    for values in series:
        x = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
        usable = x.numel() - x.numel() % frame_size
        chunks.append(x[:usable].view(-1, frame_size))
    frames = torch.cat(chunks)
    if len(frames) < codebook_size:
        raise InputError(f"fit_codebooks: {len(frames)} frames, need at least {codebook_size}")
    scale = frames.abs().max().clamp(min=1e-8)
    residual = frames / scale
    generator = torch.Generator().manual_seed(seed)
    books = []
    for _ in range(num_codebooks):
        centres = residual[
            torch.randperm(len(residual), generator=generator)[:codebook_size]
        ].clone()
        for _ in range(iterations):
            assign = torch.cdist(residual, centres).argmin(dim=1)
            sums = torch.zeros_like(centres).index_add_(0, assign, residual)
            counts = torch.bincount(assign, minlength=codebook_size).unsqueeze(1)
            centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        residual = residual - centres[torch.cdist(residual, centres).argmin(dim=1)]
        books.append(centres)
    return {"codebooks": torch.stack(books).contiguous(), "scale": scale.reshape(1)}


def save_checkpoint(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """Write checkpoint tensors (from `fit_codebooks`) as safetensors."""
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return Path(path)
