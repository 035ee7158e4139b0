"""Shared by the core's tests (a uniquely named module: plugin test dirs have conftests too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anygpt_core.testing import run_cli

__all__ = ["TOY_DIR", "run_cli", "tiny_llama"]

#: Where the toy plugins' modules live (their dist-infos are written by conftest's `toy_site`).
TOY_DIR = Path(__file__).parent / "toy"


def tiny_llama(**overrides: Any) -> Any:
    """A seeded 2-layer LLaMA (vocabulary 300, hidden 32, 4 heads), config fields overridable."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    values = dict(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    config = LlamaConfig(**{**values, **overrides})
    return LlamaForCausalLM(config).eval()
