"""Decode speed on one GPU: a LLaMA-2-7B-shaped model with the AnyGPT vocabulary, random float16 weights.

Measures, in one run that fits in about 5 minutes on an H100-class GPU:
- the device's copy bandwidth (a large device-to-device copy), hence the batch-1 bound: bandwidth / bytes
  of weights read per token;
- tokens/s at each batch size for `model.generate` and for our loop (`Generator.generate_batch`), greedy
  text answers, with identical token ids required between the two;
- the fraction of the bandwidth bound our loop reaches at batch 1 (goal on an H100: >= 180 tokens/s, the
  bound being about 243).

CUDA graphs / `torch.compile` of the decode step are not used: the loop's per-row state and growing cache
would need static shapes, and the ids would have to be checked equal; not attempted here.

`--size tiny` runs a small model in seconds on the CPU (the tests do). Usage:
python benchmarks/bench_gpu.py [--device cuda] [--size 7b|tiny] [--tokens 128] [--batch 1,32]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from anygpt_core import DecodingConfig
from anygpt_core.engine.backends import make_backend
from anygpt_core.engine.constraint import Row
from anygpt_core.engine.events import Done, Request
from anygpt_core.engine.loop import Generator
from anygpt_core.tokens import ROLE_TOKENS, TokenSpace

logger = logging.getLogger("bench_gpu")
T = TypeVar("T")

SIZES = {
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "heads": 32},
    "tiny": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "heads": 4},
}
VOCAB = 49418  # fnlp/AnyGPT-base's


class Vocab:
    """A tokenizer stand-in with the AnyGPT role tokens at their published ids (32000..32003)."""

    eos_token_id = 2

    def __init__(self) -> None:
        tokens = [f"<base{i}>" for i in range(32000)] + list(ROLE_TOKENS)
        tokens += [f"<extra{i}>" for i in range(VOCAB - len(tokens))]
        self.vocab = {t: i for i, t in enumerate(tokens)}

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def __len__(self) -> int:
        return len(self.vocab)


def build_model(size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Random weights, made on the device directly (no CPU copy of 7B parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = SIZES[size]
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=dims["hidden_size"],
        intermediate_size=dims["intermediate_size"],
        num_hidden_layers=dims["num_hidden_layers"],
        num_attention_heads=dims["heads"],
        num_key_value_heads=dims["heads"],
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02 if "lm_head" not in name else 0.5)  # peaked logits
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def copy_bandwidth(device: torch.device) -> float:
    """Device copy bandwidth in bytes/s (read + write), best of a few 1 GiB (CPU: 256 MiB) copies."""
    size = (1 << 30) if device.type == "cuda" else (1 << 28)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src), device)[0] for _ in range(5))
    return 2 * size / best


def requests(batch: int, tokens: int, device: torch.device) -> list[Request]:
    greedy = DecodingConfig(do_sample=False, min_new_tokens=tokens)
    return [
        Request(
            torch.tensor(
                [1, 32000, *range(500 + 13 * i, 530 + 13 * i), 32002, 32001], device=device
            ),
            Row(greedy, {}, tokens),
        )
        for i in range(batch)
    ]


def ours(loop: Generator, reqs: list[Request]) -> list[list[int]]:
    ids: dict[int, list[int]] = {}
    with torch.inference_mode():
        for index, event in loop.generate_batch(reqs):
            if isinstance(event, Done):
                ids[index] = event.token_ids
    return [ids[i] for i in range(len(reqs))]


def theirs(
    model: torch.nn.Module, reqs: list[Request], tokens: int, stops: Sequence[int]
) -> list[list[int]]:
    prompts = torch.stack([r.input_ids for r in reqs])  # same length: no padding
    with torch.inference_mode():
        out = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            eos_token_id=list(stops),  # min_new_tokens then bars every stop id, as our loop does
            pad_token_id=0,
        )
    return out[:, prompts.shape[1] :].tolist()


def first_difference(a: list[list[int]], b: list[list[int]]) -> str:
    """Where two batches of ids first part: `row r, token t` (for the report)."""
    for row, (x, y) in enumerate(zip(a, b, strict=True)):
        for t, (i, j) in enumerate(zip(x, y, strict=False)):
            if i != j:
                return f"row {row}, token {t}"
    return "lengths"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batch", default="1,32", help="Comma-separated batch sizes.")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    logger.info(f"torch {torch.__version__}, device {name}, {args.size} model in {dtype}")

    bandwidth = copy_bandwidth(device)
    model = build_model(args.size, device, dtype)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes -= model.model.embed_tokens.weight.numel() * dtype.itemsize  # a lookup, not read
    bound = bandwidth / weight_bytes
    logger.info(
        f"{params / 1e9:.2f}B parameters; copy bandwidth {bandwidth / 1e9:.0f} GB/s -> batch-1 "
        f"bound {bound:.0f} tokens/s ({weight_bytes / 1e9:.1f} GB of weights per token)"
    )
    loop = Generator(make_backend(model), TokenSpace(Vocab(), {}), mask_stray=False)
    logger.info(f"backend: {type(loop.backend).__name__}")
    logger.info("torch.compile / CUDA graphs of the decode step: skipped (ids not shown equal)")
    stops = loop.space.stop_ids
    differ: list[str] = []
    for batch in (int(b) for b in args.batch.split(",")):
        reqs = requests(batch, args.tokens, device)
        ours(loop, requests(batch, 4, device))  # warm up
        theirs(model, requests(batch, 4, device), 4, stops)
        t_ours, a = timed(lambda reqs=reqs: ours(loop, reqs), device)
        t_theirs, b = timed(lambda reqs=reqs: theirs(model, reqs, args.tokens, stops), device)
        same = "identical ids" if a == b else f"ids DIFFER from {first_difference(a, b)}"
        n = batch * args.tokens
        line = (
            f"batch {batch}: our loop {n / t_ours:.1f} tokens/s, model.generate "
            f"{n / t_theirs:.1f} tokens/s ({same}) -> {t_theirs / t_ours:.2f}x"
        )
        if batch == 1:
            line += f"; {n / t_ours / bound:.0%} of the bandwidth bound"
        logger.info(line)
        if a != b:  # measure the other batch sizes before failing
            differ.append(str(batch))
    if differ:
        raise SystemExit(f"batch {', '.join(differ)}: our loop and model.generate chose other ids")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
