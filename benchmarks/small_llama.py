"""A LLaMA of a chosen size with the embedded demo's tokenizer files, seeded, for the benchmarks.

LLaMA-2-7B's ratios (intermediate 11008/4096 of hidden, heads of 64), the demo's vocabulary, random
weights with a peaked output layer (normal, std 0.5) so greedy answers vary and run long.
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["build_model"]


def build_model(directory: Path, *, hidden: int = 256, layers: int = 4) -> Path:
    """Save the model and the demo's tokenizer files in `directory`/model; return that folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    demo = ensure_demo(discover(load_only=[]), home=directory / "home")
    target = directory / "model"
    target.mkdir()
    for item in demo.model_dir.iterdir():
        if item.name not in {"model.safetensors", "config.json"}:
            shutil.copy(item, target / item.name)
    base = LlamaConfig.from_pretrained(demo.model_dir)
    config = LlamaConfig(
        vocab_size=base.vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 11008 // 4096,  # 688 at hidden 256
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=4096,
        bos_token_id=base.bos_token_id,
        eos_token_id=base.eos_token_id,
        pad_token_id=base.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # peaked logits: varied, long greedy answers
    model.save_pretrained(target)
    return target
