"""anygpt-image: the image modality of AnyGPT (SEED-2 tokenizer, Stable unCLIP decoder)."""

from __future__ import annotations

from anygpt_image.plugin import IMAGE

__all__ = ["IMAGE"]
