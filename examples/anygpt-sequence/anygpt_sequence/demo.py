"""Seeded synthetic series and the demo codec fitted on them (used by `anygpt_demo_assets`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from anygpt_sequence.codec import fit_codebooks, save_checkpoint

if TYPE_CHECKING:
    import numpy as np

__all__ = ["synthetic_series", "write_demo_codec"]


def synthetic_series(count: int, length: int = 64, *, seed: int = 0) -> list[np.ndarray]:
    """`count` noisy sine waves float32 [length]; frequency, phase, amplitude, offset seeded."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    out = []
    for _ in range(count):
        freq, phase, amp, offset = torch.rand(4, generator=generator).tolist()
        wave = (0.2 + amp) * torch.sin(t * (0.05 + 0.4 * freq) + 6.283 * phase) + (offset - 0.5)
        out.append((wave + 0.02 * torch.randn(length, generator=generator)).numpy())
    return out


def write_demo_codec(directory: Path) -> Path:
    """Fit and save the demo codec (deterministic, well under a second)."""
    tensors = fit_codebooks(synthetic_series(64), iterations=10, seed=0)
    return save_checkpoint(tensors, directory / "sequence_codec.safetensors")
