"""Choosing a token from logits as a decoding config says: penalty, temperature, top-k, top-p."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from anygpt_core.config import DecodingConfig

__all__ = ["sample", "warp"]


def sample(
    logits: torch.Tensor,
    config: DecodingConfig,
    *,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick one column of `logits` (float32 [N]) as `config` says.

    Applies, in transformers' order: repetition penalty (on columns where `seen` is True), then for
    sampling temperature, top-k and top-p, then a multinomial draw with `generator`.
    """
    import torch

    if config.repetition_penalty != 1.0 and seen is not None:
        penalty = config.repetition_penalty
        scaled = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(seen, scaled, logits)
    if not config.do_sample:
        return int(torch.argmax(logits))
    probs = torch.softmax(warp(logits, config), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def warp(logits: torch.Tensor, config: DecodingConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p of `config` on logits float32 [N] (cut ones: -inf)."""
    import torch

    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k and config.top_k < logits.numel():
        threshold = torch.topk(logits, config.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, -math.inf)
    if config.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        drop = before > config.top_p
        logits = logits.scatter(0, order, ordered.masked_fill(drop, -math.inf))
    return logits
