"""`anygpt serve` on loopback: 16 concurrent text requests vs the same 16 one after another.

Builds an AnyGPT-shaped small model (LLaMA, hidden 256, intermediate 688 as LLaMA-2-7B's ratio,
4 layers, the demo's tokenizer), starts `anygpt serve` on a free loopback port (text only), and
in the same run measures:
  * throughput of 16 greedy requests sent at once against the same 16 sent one by one (target
    >= 8x), with p50 / p95 latency of each, and that every answer is identical both ways;
  * one request over HTTP against the same turn through the Python API in this process
    (`Conversation.send`, same model, same greedy answer): target <= 1.15x.
It also prints the ceiling that this machine's kernels put on the throughput ratio (`ceiling.py`):
one text row's step against 16 rows', body, vocabulary projection and argmax timed bare.
Prints ratios, never asserts timings.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from ceiling import ceiling
from small_llama import build_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["ANYGPT_LOAD_PLUGINS"] = "__none__"  # text only: a random model's spans are noise
ANYGPT = Path(sys.executable).with_name("anygpt")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def start(
    model: Path, log: Path, prefix_cache_mb: int = 256
) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(ANYGPT),
                "serve",
                "--model-name-or-path",
                str(model),
                "--device",
                "cpu",
                "--port",
                "0",
                "--max-batch",
                "16",
                "--served-model-name",
                "bench",
                "--prefix-cache-mb",
                str(prefix_cache_mb),
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise SystemExit("server failed: " + log.read_text())
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def ask(client: httpx.Client, prompt: str, tokens: int) -> tuple[float, str, int]:
    started = time.perf_counter()
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "bench",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": tokens,
        },
    )
    response.raise_for_status()
    body = response.json()
    return (
        time.perf_counter() - started,
        body["choices"][0]["message"]["content"],
        body["usage"]["completion_tokens"],
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--prefix-cache-mb", type=int, default=256, help="the server's (0: every prompt in full)"
    )
    args = parser.parse_args()

    from anygpt_core.api import AnyGPT
    from anygpt_core.chat import Conversation

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    proc = None
    try:
        model = build_model(work)
        proc, url = start(model, work / "server.log", args.prefix_cache_mb)
        prompts = [f"Tell me about topic number {i}, please." for i in range(args.requests)]
        client = httpx.Client(base_url=url, timeout=600)
        ask(client, prompts[0], 4)  # warm-up
        one_by_one: list[float] = []
        together: list[float] = []
        seq_lat: list[float] = []
        par_lat: list[float] = []
        tokens = 0
        identical = True
        for _ in range(args.reps):
            started = time.perf_counter()
            seq = [ask(client, p, args.tokens) for p in prompts]
            one_by_one.append(time.perf_counter() - started)
            seq_lat += [s for s, _, _ in seq]
            with ThreadPoolExecutor(args.requests) as pool:
                started = time.perf_counter()
                par = list(pool.map(lambda p: ask(client, p, args.tokens), prompts))
                together.append(time.perf_counter() - started)
            par_lat += [s for s, _, _ in par]
            tokens = sum(n for _, _, n in seq)
            identical &= [t for _, t, _ in seq] == [t for _, t, _ in par]
        seq_time, par_time = min(one_by_one), min(together)
        say(
            f"{args.requests} requests x {args.tokens} tokens ({tokens} generated), "
            f"answers {'identical' if identical else 'DIFFERENT'} one by one and together"
        )
        say(
            f"one by one: {seq_time:.2f} s, {tokens / seq_time:.0f} tokens/s, latency p50 "
            f"{percentile(seq_lat, 0.5):.3f} s p95 {percentile(seq_lat, 0.95):.3f} s"
        )
        say(
            f"together:   {par_time:.2f} s, {tokens / par_time:.0f} tokens/s, latency p50 "
            f"{percentile(par_lat, 0.5):.3f} s p95 {percentile(par_lat, 0.95):.3f} s"
        )
        say(f"throughput ratio: {seq_time / par_time:.2f}x (target >= 8x)")

        gpt = AnyGPT.load(model, device="cpu", prefix_cache_mb=args.prefix_cache_mb)
        conversation = Conversation(gpt, do_sample=False, max_new_tokens=args.tokens)
        api_times, http_times = [], []
        same = True
        for _ in range(max(3, args.reps * 3)):
            # one process at a time: each side's idle BLAS threads must not share the cores
            time.sleep(0.3)
            started = time.perf_counter()
            local = conversation.send(prompts[0]).text
            api_times.append(time.perf_counter() - started)
            conversation.clear()
            time.sleep(0.3)
            seconds, remote, _ = ask(client, prompts[0], args.tokens)
            http_times.append(seconds)
            same &= local == remote
        api, http = statistics.median(api_times), statistics.median(http_times)
        say(
            f"one request: HTTP {http * 1000:.1f} ms vs Python API {api * 1000:.1f} ms: "
            f"{http / api:.2f}x (target <= 1.15x), answers {'identical' if same else 'DIFFERENT'}"
        )
        prompt = len(gpt.tokenizer(f"[Human]: {prompts[0]}<eoh> [MMGPT]:").input_ids)
        bound, alone, batch = ceiling(
            gpt.generator.backend, [None] * args.requests, args.requests, prompt=prompt
        )
        say(
            f"ceiling on this machine at {args.requests} together: {bound:.2f}x (a row's step "
            f"{alone:.2f} ms, {args.requests} rows' {batch:.2f} ms; bare operations)"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
