"""What int8 and int4 weights cost in next-token predictions: top-1 agreement and KL divergence.

Two models, 256 teacher-forced positions each:

- the embedded demo, loaded as users load it (`load_language_model`, float32) against the same
  files loaded with `--quantize int8` / `int4` (bfloat16 compute, the real kernels) and in
  bfloat16; the positions are a sequence the float32 model samples after a chat prompt;
- a LLaMA-2-7B-sized model with seeded random weights (N(0, 0.02), the AnyGPT token layout of the
  demo tokenizer), streamed layer by layer so only one layer's weights exist at a time: float32
  weights against the same weights rounded to bfloat16, and quantised to int8 and int4 exactly as
  the kernels quantise them (dequantised, products in float32: the weights' error alone).

Random weights are not trained ones: their logits are flatter and their errors differ. The eval
harness (`anygpt eval --quantize`) measures what quantisation costs a real model on real tasks.

Run: python benchmarks/bench_quantize.py [--positions 256] [--skip-real-size] [--layers N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

#: The report: a script's output, through logging as everywhere in the project.
logger = logging.getLogger("bench")


def compare(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Top-1 agreement and mean KL(reference || other) of logits [positions, vocab]."""
    agree = (reference.argmax(-1) == other.argmax(-1)).float().mean().item()
    ref_log = F.log_softmax(reference.float(), dim=-1)
    other_log = F.log_softmax(other.float(), dim=-1)
    kl = (ref_log.exp() * (ref_log - other_log)).sum(-1).mean().item()
    return agree, kl


def demo(positions: int) -> None:
    """The demo model: float32 against bfloat16, int8 and int4 as `--quantize` loads them."""
    from anygpt_core.demo import ensure_demo
    from anygpt_core.loading import load_language_model
    from anygpt_core.plugins import discover

    directory = ensure_demo(discover()).model_dir
    reference, tokenizer = load_language_model(directory, device="cpu", dtype="float32")
    prompt = tokenizer("[Human]: Tell me about the sea.<eoh> [MMGPT]:", return_tensors="pt")
    generator = torch.Generator().manual_seed(0)
    ids = prompt.input_ids
    with torch.no_grad():
        while ids.shape[1] < prompt.input_ids.shape[1] + positions:
            logits = reference(ids).logits[0, -1].float()
            pick = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            ids = torch.cat([ids, pick[None]], dim=1)
        want = reference(ids).logits[0, -positions - 1 : -1]
        variants: dict[str, Callable[[], Any]] = {
            "bfloat16": lambda: load_language_model(directory, device="cpu", dtype="bfloat16"),
            "int8": lambda: load_language_model(directory, device="cpu", quantize="int8"),
            "int4": lambda: load_language_model(directory, device="cpu", quantize="int4"),
        }
        for name, load in variants.items():
            model, _ = load()
            got = model(ids).logits[0, -positions - 1 : -1]
            agree, kl = compare(want, got)
            logger.info(f"demo      {name:<9} top-1 agreement {agree:6.1%}   KL {kl:.5f} nats")


def _weights(weight: torch.Tensor, variant: str) -> torch.Tensor:
    """`weight` as a variant stores it, back in float32."""
    from anygpt_core.engine.quantize import dequantized

    if variant == "float32":
        return weight
    if variant == "bfloat16":
        return weight.to(torch.bfloat16).float()
    return dequantized(weight, variant)  # group 128: what the 7B's layers get


def real_size(positions: int, layers: int) -> None:
    """A 7B-sized random model, layer by layer: float32 against bfloat16, int8 and int4 weights."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from anygpt_core.demo import ensure_demo
    from anygpt_core.loading import load_tokenizer
    from anygpt_core.plugins import discover

    vocab = len(load_tokenizer(ensure_demo(discover()).model_dir))
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )
    config._attn_implementation = "sdpa"
    variants = ("float32", "bfloat16", "int8", "int4")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, positions), generator=generator)
    embed = torch.randn((vocab, 4096), generator=generator) * 0.02
    hidden = {v: F.embedding(ids, embed) for v in variants}
    position_ids = torch.arange(positions)[None]
    rotary = LlamaRotaryEmbedding(config)
    cos_sin = rotary(hidden["float32"], position_ids)
    started = time.perf_counter()
    with torch.no_grad():
        for index in range(layers):
            torch.manual_seed(index)
            with torch.device("meta"):
                layer = LlamaDecoderLayer(config, layer_idx=index).eval()
            layer = layer.to_empty(device="cpu")
            originals = {}
            for name, module in layer.named_modules():
                if isinstance(module, torch.nn.Linear):
                    originals[name] = module.weight.normal_(0.0, 0.02).clone()
                elif hasattr(module, "variance_epsilon"):  # RMSNorm: ones, as initialised
                    module.weight.fill_(1.0)
            for variant in variants:
                for name, weight in originals.items():
                    layer.get_submodule(name).weight.copy_(_weights(weight, variant))
                hidden[variant] = layer(
                    hidden[variant], position_ids=position_ids, position_embeddings=cos_sin
                )
            if index % 8 == 7 or index == layers - 1:
                logger.info(f"  layer {index + 1}/{layers} ({time.perf_counter() - started:.0f} s)")
        head = torch.randn((vocab, 4096), generator=generator) * 0.02
        logits = {}
        for variant in variants:
            h = hidden[variant]
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps)
            logits[variant] = (
                h[0] @ _weights(head, "bfloat16" if variant != "float32" else variant).T
            )
    for variant in variants[1:]:
        agree, kl = compare(logits["float32"], logits[variant])
        logger.info(f"7B-sized  {variant:<9} top-1 agreement {agree:6.1%}   KL {kl:.5f} nats")


def main() -> None:
    """Parse flags and run both comparisons."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=256)
    parser.add_argument("--layers", type=int, default=32, help="Layers of the 7B-sized model.")
    parser.add_argument("--skip-real-size", action="store_true", help="Only the demo.")
    args = parser.parse_args()
    logger.info(f"{args.positions} teacher-forced positions; reference: float32")
    demo(args.positions)
    if not args.skip_real_size:
        real_size(args.positions, args.layers)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
