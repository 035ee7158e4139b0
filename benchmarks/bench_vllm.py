"""16 concurrent requests through the vLLM engine vs the local engine: same model, same machine.

The model is the demo's tokenizer with a tiny seeded LLaMA of head_dim 64 (vLLM's CPU attention
refuses the demo's 16), hidden 128, 2 layers, float32. `vllm serve` (vLLM's CPU build, from the
environment `.ci/vllm_env.sh` builds) runs the anygpt-vllm processor; the gateway is an `AnyGPT`
whose engine is `VLLMEngine`. Both sides get the same 16 tasks (text answers, image, speech, music
and sequence spans), greedy, the same budget, all submitted at once; the ids must be identical.

Reported, each the best of `--reps` interleaved repetitions:
- local: `LocalEngine` with max_batch 16 (one static batch of 16 rows);
- vLLM: `VLLMEngine`, 16 streams in flight; the ratio local time / vLLM time;
- vLLM without the rules: the same prompts as ordinary requests of the same lengths (no payload,
  `ignore_eos`), so the difference to the line above is what the span rules cost inside vLLM.

Usage: python benchmarks/bench_vllm.py [--reps 3] [--tokens 96] [--vllm-python .venv-vllm/bin/python]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anygpt_core.api import AnyGPT

logger = logging.getLogger("bench")

ROOT = Path(__file__).parents[1]
TASKS = [
    "text|image|a red bus at dawn",
    "text|music|a calm piano piece",
    "text|speech|hello there",
    "text|sequence|a slow wave",
    "text|text|tell me a story",
]


def tasks() -> list[str]:
    return [f"{TASKS[i % len(TASKS)]} number {i}" for i in range(16)]


def run(gpt: AnyGPT, budget: int) -> tuple[float, list[list[int]]]:
    """Seconds for the 16 tasks submitted together, and each one's ids."""
    from anygpt_core.engine.events import Done

    requests = []
    for i, t in enumerate(tasks()):
        # greedy in every state: a text answer may open a span of another modality
        request = gpt.request(gpt.prepare(t, seed=i, max_new_tokens=budget))
        row = request.row
        row = replace(
            row,
            text_config=row.text_config.merged(do_sample=False),
            span_configs={n: c.merged(do_sample=False) for n, c in row.span_configs.items()},
        )
        requests.append(replace(request, row=row))
    ids: list[list[int]] = [[] for _ in requests]
    started = time.perf_counter()
    for index, event in gpt.engine.submit(requests):
        if isinstance(event, Done):
            ids[index] = event.token_ids
    return time.perf_counter() - started, ids


def plain(url: str, prompts: list[list[int]], lengths: list[int]) -> float:
    """Seconds for the same prompts as ordinary vLLM requests of the same lengths, together."""
    from concurrent.futures import ThreadPoolExecutor

    def one(pair: tuple[list[int], int]) -> None:
        body = {
            "model": "anygpt-test",
            "prompt": pair[0],
            "max_tokens": pair[1],
            "min_tokens": pair[1],
            "ignore_eos": True,
            "temperature": 0,
        }
        request = urllib.request.Request(
            f"{url}/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as answer:
            answer.read()

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, zip(prompts, lengths, strict=True)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96, help="budget of each task")
    parser.add_argument("--vllm-python", type=Path, default=ROOT / ".venv-vllm" / "bin" / "python")
    args = parser.parse_args()

    from anygpt_core.api import AnyGPT
    from anygpt_core.demo import ensure_demo, write_demo_model
    from anygpt_core.plugins import discover
    from anygpt_core.testing import VLLMServer

    if not args.vllm_python.is_file():
        raise SystemExit(f"{args.vllm_python}: no vLLM environment; run .ci/vllm_env.sh")
    demo = ensure_demo(discover())
    with tempfile.TemporaryDirectory() as tmp:
        model = write_demo_model(demo.model_dir, Path(tmp) / "model", hidden_size=128, num_heads=2)
        local = AnyGPT.load(model, device="cpu", codec_options=demo.options)
        local.engine.max_batch = 16
        started = time.perf_counter()
        with VLLMServer(args.vllm_python, model, Path(tmp) / "serve.log") as server:
            logger.info(f"vllm serve answered after {time.perf_counter() - started:.0f} s")
            gateway = AnyGPT.load(vllm_url=server.url)
            run(local, 40)  # warm up both
            run(gateway, 40)
            best = {"local": float("inf"), "vllm": float("inf"), "plain": float("inf")}
            for _ in range(args.reps):
                t_local, ids_local = run(local, args.tokens)
                t_vllm, ids_vllm = run(gateway, args.tokens)
                if ids_local != ids_vllm:
                    differ = [
                        i
                        for i, (a, b) in enumerate(zip(ids_local, ids_vllm, strict=True))
                        if a != b
                    ]
                    raise SystemExit(f"tasks {differ}: vLLM and the local engine chose other ids")
                prompts = [
                    gateway.request(gateway.prepare(t, seed=i)).input_ids.reshape(-1).tolist()
                    for i, t in enumerate(tasks())
                ]
                t_plain = plain(server.url, prompts, [len(i) for i in ids_vllm])
                best = {
                    "local": min(best["local"], t_local),
                    "vllm": min(best["vllm"], t_vllm),
                    "plain": min(best["plain"], t_plain),
                }
    tokens = sum(len(i) for i in ids_local)
    logger.info(f"16 concurrent tasks, {tokens} tokens in all, identical ids on both engines")
    for name, label in (
        ("local", "local engine (one batch of 16)"),
        ("vllm", "vLLM engine with the span rules"),
        ("plain", "vLLM, same lengths, no span rules"),
    ):
        logger.info(f"{label}: {best[name]:.2f} s, {tokens / best[name]:.0f} tokens/s")
    logger.info(f"vLLM / local: {best['local'] / best['vllm']:.2f}x")
    logger.info(f"span rules inside vLLM: {best['vllm'] / best['plain']:.2f}x the plain time")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
