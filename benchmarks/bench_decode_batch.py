"""What a batch buys per decode step: tokens/s at batch 1, 8 and 16, small model against 7B.

Continuous batching pays where a decode step costs about the same for one row as for many: where
reading the weights, not multiplying them, bounds the step (a GPU; a large model on a CPU). This
measures that directly on the engine's backend (`make_backend`: prefill a batch of prompts, then
`step` one token per row), greedy, in one process:

- the AnyGPT-shaped small model of `bench_generate.py` (hidden 256, 4 layers, vocabulary 49,418),
  whose weights fit in the CPU's caches: its step is bound by arithmetic, so 8 rows cost several
  times one row;
- LLaMA-2-7B with the published 49,418-token vocabulary and seeded random weights (built as
  `bench_real_size.py` builds it: meta device, then materialised and quantised layer by layer),
  whose weights (7.6 GiB in int8) are read from memory at every step.

For each: the median time of `--steps` decode steps at each batch size, tokens/s (rows x steps /
time) and the ratio to batch 1. The prompts are 16 random token ids per row; lengths do not change
between steps, so every row runs every step (the most a batch can give; `bench_generate.py` (c)
measures mixed lengths).

Usage: python benchmarks/bench_decode_batch.py [--quantize int8|int4|none] [--steps 6]
                                               [--batches 1,8,16] [--skip-7b] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

logger = logging.getLogger("bench")


def step_times(model: torch.nn.Module, vocab: int, batch: int, steps: int) -> list[float]:
    """Seconds of each of `steps` decode steps for `batch` rows after a 16-token prefill."""
    from anygpt_core.engine.backends import make_backend

    backend = make_backend(model)
    generator = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(3, vocab, (16,), generator=generator) for _ in range(batch)]
    times = []
    with torch.inference_mode():
        session, hidden = backend.prefill(prompts)
        for _ in range(steps):
            start = time.perf_counter()
            tokens = backend.project(hidden).argmax(dim=-1)
            hidden = backend.step(session, tokens)
            times.append(time.perf_counter() - start)
    return times


def measure(name: str, model: torch.nn.Module, vocab: int, batches: list[int], steps: int) -> None:
    step_times(model, vocab, 1, 1)  # warm-up: first calls allocate and pick kernels
    base = 0.0
    for batch in batches:
        median = statistics.median(step_times(model, vocab, batch, steps))
        rate = batch / median
        base = base or rate
        logger.info(
            f"{name}: batch {batch:2d}: {median * 1e3:8.1f} ms a step, {rate:7.2f} tokens/s, "
            f"{rate / base:5.2f}x batch 1"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="int8", choices=["int8", "int4", "none"])
    parser.add_argument("--steps", type=int, default=6, help="decode steps timed per batch size")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--skip-7b", action="store_true", help="only the small model")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 steps (a test)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    steps = 2 if args.quick else args.steps
    logger.info(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")

    from bench_generate import small_model
    from bench_real_size import build_llm

    small = small_model()
    measure("AnyGPT-shaped small model", small, 49418, batches, steps)
    del small
    if args.skip_7b:
        return
    quantize = None if args.quantize == "none" else args.quantize
    start = time.perf_counter()
    torch.manual_seed(0)
    big = build_llm(
        49418, quick=args.quick, device=torch.device("cpu"), dtype=torch.bfloat16, quantize=quantize
    )
    size = "tiny" if args.quick else "7B"
    logger.info(f"{size} LLaMA ({args.quantize}) built in {time.perf_counter() - start:.0f} s")
    measure(f"{size} LLaMA, {args.quantize}", big, 49418, batches, steps)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
