"""Choosing tokens from logits as decoding configs say: penalty, temperature, top-k, top-p.

`sample_rows` does it for a batch in one pass: each row's penalty, temperature, top-k and top-p
are tensors, and each row draws with its own generator. The draw is the exponential race that
`torch.multinomial` itself uses for one sample (the argmax of probabilities over exponential
noise), so a row consumes its generator exactly as `torch.multinomial` would, and its token does
not depend on the rows beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from anygpt_core.config import DecodingConfig

__all__ = ["sample", "sample_rows", "warp", "warp_rows"]


def sample(
    logits: torch.Tensor,
    config: DecodingConfig,
    *,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick one column of `logits` (float32 [N]) as `config` says (`sample_rows` of one row)."""
    chosen = sample_rows(
        logits[None],
        [config],
        seen=None if seen is None else seen[None],
        generators=[generator],
    )
    return int(chosen[0])


def sample_rows(
    logits: torch.Tensor,
    configs: Sequence[DecodingConfig],
    *,
    seen: torch.Tensor | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """One column of each row of `logits` (float32 [B, N]) as its config says: int64 [B].

    In transformers' order: repetition penalty (on columns where `seen` [B, N] is True), then
    for sampled rows temperature, top-k and top-p, and a draw with the row's generator (None:
    torch's global one); greedy rows take the argmax.
    """
    import torch

    device = logits.device
    penalties = [c.repetition_penalty for c in configs]
    if seen is not None and any(p != 1.0 for p in penalties):
        p = torch.tensor(penalties, dtype=logits.dtype, device=device)[:, None]
        scaled = torch.where(logits < 0, logits * p, logits / p)
        logits = torch.where(seen & (p != 1.0), scaled, logits)
    chosen = logits.argmax(dim=1)
    rows = [i for i, c in enumerate(configs) if c.do_sample]
    if not rows:
        return chosen
    picked = logits if len(rows) == len(configs) else logits[torch.tensor(rows, device=device)]
    probs = torch.softmax(warp_rows(picked, [configs[i] for i in rows]), dim=-1)
    noise = torch.empty_like(probs)
    for j, i in enumerate(rows):
        noise[j].exponential_(generator=None if generators is None else generators[i])
    drawn = (probs / noise).argmax(dim=1)
    if len(rows) == len(configs):
        return drawn
    chosen[torch.tensor(rows, device=device)] = drawn
    return chosen


def warp(logits: torch.Tensor, config: DecodingConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p of `config` on logits float32 [N] (cut ones: -inf)."""
    return warp_rows(logits[None], [config])[0]


def warp_rows(logits: torch.Tensor, configs: Sequence[DecodingConfig]) -> torch.Tensor:
    """Each row's temperature, then top-k, then top-p on logits float32 [B, N] (cut: -inf)."""
    import torch

    device = logits.device
    width = logits.shape[1]
    temperatures = [c.temperature for c in configs]
    if any(t != 1.0 for t in temperatures):
        logits = logits / torch.tensor(temperatures, dtype=logits.dtype, device=device)[:, None]
    cut_k = [c.top_k if c.top_k and c.top_k < width else 0 for c in configs]
    cut_p = [c.top_p for c in configs]
    if not any(cut_k) and all(p >= 1.0 for p in cut_p):
        return logits
    ordered, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    if any(cut_k):
        k = torch.tensor(cut_k, device=device)
        threshold = ordered.gather(1, (k - 1).clamp(min=0)[:, None])
        threshold = torch.where(k[:, None] > 0, threshold, -math.inf)
        logits = logits.masked_fill(logits < threshold, -math.inf)
        ordered = ordered.masked_fill(ordered < threshold, -math.inf)
    if any(p < 1.0 for p in cut_p):
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        top_p = torch.tensor(cut_p, dtype=probs.dtype, device=device)[:, None]
        drop = (before > top_p) & (top_p < 1.0)
        logits = logits.scatter(1, order, ordered.masked_fill(drop, -math.inf))
    return logits
