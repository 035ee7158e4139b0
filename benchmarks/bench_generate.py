"""Generation loop benchmarks, each a ratio against a baseline measured in the same run.

(a) our KV-cached loop vs `model.generate`, greedy, batch 1, 256 new tokens, identical token ids, on the
    demo-size model and on an AnyGPT-shaped small model (hidden 256, intermediate 688 as LLaMA-2-7B's
    ratio, 4 layers, the published 49,418-token vocabulary); targets >= 1.2x and >= 1.0x.
(b) inside a speech span on the small model: scoring only the span's 1,025 legal rows of the output
    embedding vs full-vocabulary logits then a gather; target >= 2x.
(c) batching on the small model: 16 different tasks (text answers, image, speech and music spans, prompts
    and budgets of different lengths), greedy, static batches of 2, 4, 8, 16 (chunks run until their
    longest row ends) and continuous batches (the engine refills a row as it ends) vs the same tasks one
    by one in the same run: aggregate tokens/s and the ratio; every task's ids must be identical;
    targets (continuous) >= 5x at batch 8, >= 7x at 16. With each size, the ceiling that this
    machine's kernels put on the ratio (`ceiling.py`): the same mix of rows, every row busy, each
    step's body, projections and argmax timed bare.
(d) the same span constraint through `model.generate` (a logits processor) vs our loop, same requests,
    identical ids, batch 1 and 4.
(e) 32 requests arriving as a Poisson process (about twice what one-at-a-time serving keeps up with),
    max batch 8: continuous batching (the engine) vs static batching (take what arrived, run it to
    its end): throughput, p50 and p95 latency, identical ids.

Median of interleaved repetitions for (a) and (b), best of `--reps` for (c) and (d) (in (c)
interleaved too).
Usage: python benchmarks/bench_generate.py [--reps 5] [--tokens 256] [--only a,b,c,d,e] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ceiling import ceiling

from anygpt_core import DecodingConfig, Instructions, ModalitySpec
from anygpt_core.engine import threads
from anygpt_core.engine.backends import make_backend
from anygpt_core.engine.batcher import LocalEngine
from anygpt_core.engine.constraint import Row, SpanConstraint
from anygpt_core.engine.events import Done, Request
from anygpt_core.engine.hf import generate_ids
from anygpt_core.engine.loop import Generator
from anygpt_core.tokens import ROLE_TOKENS, TokenSpace

#: The report: a script's output, through logging as everywhere in the project.
logger = logging.getLogger("bench")

SPEECH = ModalitySpec(
    name="speech",
    prefix="🗣️",
    start="<sosp>",
    end="<eosp>",
    codebook_size=1024,
    decoding=DecodingConfig(do_sample=False),
    output_extension=".wav",
    instructions=Instructions(to_text=("x",), from_text=("y",)),
    codec_factory=lambda options: None,
)


IMAGE = SPEECH.model_copy(
    update={
        "name": "image",
        "prefix": "👀",
        "start": "<soim>",
        "end": "<eoim>",
        "codebook_size": 8192,
    }
).model_copy(update={"fixed_frames": 32})
MUSIC = SPEECH.model_copy(
    update={
        "name": "music",
        "prefix": "🎶",
        "start": "<somu>",
        "end": "<eomu>",
        "codebook_size": 2048,
        "num_codebooks": 4,
    }
)


class VocabOnly:
    """A tokenizer stand-in with the published AnyGPT vocabulary layout (what TokenSpace reads)."""

    eos_token_id = 2

    def __init__(self) -> None:
        tokens = [f"<base{i}>" for i in range(32000)] + list(ROLE_TOKENS)
        tokens += [f"<👀{i}>" for i in range(8192)] + ["<soim>", "<eoim>"]
        tokens += SPEECH.token_strings()
        tokens += [f"<🎶{i}>" for i in range(8192)] + ["<somu>", "<eomu>"]
        self.vocab = {t: i for i, t in enumerate(tokens)}

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def __len__(self) -> int:
        return len(self.vocab)


def small_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49418,
        hidden_size=256,
        intermediate_size=688,  # LLaMA-2-7B's ratio, 11008 / 4096, at hidden 256
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)  # peaked logits, varied greedy paths
    return model


def demo_model() -> tuple[torch.nn.Module, object]:
    import os

    from anygpt_core.demo import ensure_demo
    from anygpt_core.loading import load_language_model
    from anygpt_core.plugins import discover

    home = Path(os.environ.get("ANYGPT_HOME") or tempfile.mkdtemp())
    demo = ensure_demo(discover(load_only=[]), home=home)
    return load_language_model(demo.model_dir, device="cpu")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare_with_generate(
    name: str,
    model: torch.nn.Module,
    space: TokenSpace,
    prompt: torch.Tensor,
    tokens: int,
    reps: int,
) -> None:
    loop = Generator(make_backend(model), space, mask_stray=False)
    greedy = DecodingConfig(do_sample=False, min_new_tokens=tokens)  # always the full length

    def ours() -> list[int]:
        with torch.inference_mode():
            *_, done = loop.generate(
                prompt, text_config=greedy, span_configs={}, max_new_tokens=tokens
            )
        assert isinstance(done, Done)
        return done.token_ids

    def theirs() -> list[int]:
        with torch.inference_mode():
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                eos_token_id=list(space.stop_ids),
                pad_token_id=0,
            )
        return out[0, prompt.shape[1] :].tolist()

    ours(), theirs()  # warm up
    t_ours, t_theirs = [], []
    for _ in range(reps):
        t, ids_ours = timed(ours)
        t_ours.append(t)
        t, ids_theirs = timed(theirs)
        t_theirs.append(t)
        if ids_ours != ids_theirs:
            raise SystemExit(f"{name}: token ids differ from model.generate")
    n = len(ids_ours)
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    logger.info(
        f"(a) {name}: {n} tokens, identical ids; ours {mo * 1e3 / n:.2f} ms/token, "
        f"model.generate {mt * 1e3 / n:.2f} ms/token -> speed-up {mt / mo:.2f}x"
    )


def compare_slicing(
    model: torch.nn.Module, space: TokenSpace, prompt: torch.Tensor, tokens: int, reps: int
) -> None:
    backend = make_backend(model)
    sliced = Generator(backend, space, slice_logits=True)
    full = Generator(backend, space, slice_logits=False)
    speech = space.require("speech")
    prompt = torch.cat([prompt, torch.tensor([[speech.start_id]])], dim=1)
    greedy = DecodingConfig(do_sample=False)

    def run(loop: Generator) -> list[int]:
        with torch.inference_mode():
            *_, done = loop.generate(
                prompt,
                text_config=greedy,
                span_configs={"speech": greedy},
                max_new_tokens=tokens + 1,
                open_span="speech",
            )
        return done.token_ids

    run(sliced), run(full)
    t_s, t_f = [], []
    for _ in range(reps):
        t, a = timed(lambda: run(sliced))
        t_s.append(t)
        t, b = timed(lambda: run(full))
        t_f.append(t)
        if a != b:
            raise SystemExit("speech span: sliced and full logits chose different tokens")
    ms, mf = statistics.median(t_s), statistics.median(t_f)
    # The per-step cost split, for the arithmetic bound: lm_head rows vs the transformer body.
    h = model.config.hidden_size
    # per layer: q, k, v, o (4 h^2) and gate, up, down (3 h * intermediate)
    body = (4 * h * h + 3 * h * model.config.intermediate_size) * model.config.num_hidden_layers
    bound = (body + h * model.config.vocab_size) / (body + h * 1025)
    logger.info(
        f"(b) speech span, small model: {tokens} tokens; sliced {ms * 1e3 / tokens:.2f} ms/token, "
        f"full-vocabulary {mf * 1e3 / tokens:.2f} ms/token -> speed-up {mf / ms:.2f}x "
        f"(multiply-add bound {bound:.1f}x)"
    )


def task_pool(space: TokenSpace, count: int, budget: int) -> list[Request]:
    """`count` different greedy tasks: text answers and image, speech and music spans."""
    greedy = DecodingConfig(do_sample=False)
    configs = {name: greedy for name in space.modalities}
    kinds = [None, "image", "speech", "music"]
    requests = []
    for i in range(count):
        prompt = torch.tensor([1, 32000, *range(500 + 7 * i, 520 + 11 * i), 32002, 32001])
        kind = kinds[i % len(kinds)]
        tokens = budget // 2 + (i * 37) % (budget // 2 + 1)  # lengths differ
        if kind is None:
            text = DecodingConfig(do_sample=False, min_new_tokens=tokens)
            requests.append(Request(prompt, Row(text, configs, tokens)))
        else:
            if kind == "image":
                tokens = 33  # exactly 32 codes and the end token
            start = torch.tensor([space.require(kind).start_id])
            row = Row(greedy, configs, tokens, open_span=kind, stop_after_span=True)
            requests.append(Request(torch.cat([prompt, start]), row))
    return requests


def batched_ids(loop: Generator, requests: list[Request], size: int) -> dict[int, list[int]]:
    """Static batching: chunks of `size` requests, each run until its longest row ends."""
    ids: dict[int, list[int]] = {}
    with torch.inference_mode():
        for first in range(0, len(requests), size):
            for index, event in loop.generate_batch(requests[first : first + size]):
                if isinstance(event, Done):
                    ids[first + index] = event.token_ids
    return ids


def continuous_ids(loop: Generator, requests: list[Request], size: int) -> dict[int, list[int]]:
    """Continuous batching: the engine keeps `size` rows busy, refilling each as it ends."""
    engine = LocalEngine(loop, max_batch=size)
    return {i: e.token_ids for i, e in engine.submit(requests) if isinstance(e, Done)}


def compare_batching(
    model: torch.nn.Module, space: TokenSpace, budget: int, reps: int, sizes: tuple[int, ...]
) -> None:
    loop = Generator(make_backend(model), space)
    requests = task_pool(space, 16, budget)
    alone_ids = batched_ids(loop, requests, 1)
    lengths = [len(alone_ids[i]) for i in range(len(requests))]
    tokens = sum(lengths)
    # each run: (driver, rows); "one by one" repeats the baseline: its ratio shows the noise
    runs = {"one by one": (batched_ids, 1)}
    for size in sizes:
        runs[f"static batch {size:2d}"] = (batched_ids, size)
        runs[f"continuous batch {size:2d}"] = (continuous_ids, size)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):  # interleaved: a change in the shared machine's load hits every run
        for name, (driver, size) in runs.items():
            t, ids = timed(lambda driver=driver, size=size: driver(loop, requests, size))
            times[name].append(t)
            if ids != alone_ids:
                raise SystemExit(f"{name}: token ids differ from the one-by-one run")
    t_alone = min(times["one by one"])
    logger.info(
        f"(c) 16 tasks (text, image, speech, music), {tokens} tokens: one by one "
        f"{tokens / t_alone:.0f} tokens/s"
    )
    for name, (driver, size) in list(runs.items())[1:]:
        best = min(times[name])
        if driver is batched_ids:  # a chunk runs as long as its longest row; none join
            steps = sum(max(lengths[i : i + size]) for i in range(0, len(lengths), size))
        else:
            steps = continuous_steps(lengths, size)
        logger.info(
            f"(c) {name}: {tokens / best:.0f} tokens/s, identical ids, {tokens / steps:.1f} rows "
            f"per step on average -> {t_alone / best:.2f}x one by one"
        )
    heads = [  # what each task's rows project onto: the vocabulary, or codebook 0 of its span
        None
        if r.row.open_span is None
        else loop.backend.head(slice(*space.modalities[r.row.open_span].layer_ranges[0]))
        for r in requests
    ]
    for size in sizes:
        bound, alone, together = ceiling(loop.backend, heads, size)
        logger.info(
            f"(c) ceiling at batch {size:2d}: {bound:.2f}x (a row's step {alone:.2f} ms, a "
            f"batch's {together:.2f} ms; bare operations, every row busy)"
        )


def continuous_steps(lengths: list[int], size: int) -> int:
    """Steps a continuous batch of `size` rows takes for rows of `lengths`, admitted in order."""
    running: list[int] = []
    waiting = list(lengths)
    steps = 0
    while running or waiting:
        while waiting and len(running) < size:
            running.append(waiting.pop(0))
        steps += 1
        running = [left - 1 for left in running if left > 1]
    return steps


#: One arrival run: each request's latency, the wall time, each request's ids.
Run = tuple[list[float], float, dict[int, list[int]]]


def poisson_arrivals(
    loop: Generator, requests: list[Request], rate: float, size: int, seed: int
) -> dict[str, Run]:
    """Requests arriving as a Poisson process (`rate` per second), continuous vs static batching.

    Static: a worker takes what has arrived (up to `size`) and runs it until its longest row
    ends, then takes the next group (the engine before continuous batching). Continuous: the
    engine, each request submitted from its own thread at its arrival time.
    """
    rng = random.Random(seed)
    arrivals = list(itertools.accumulate(rng.expovariate(rate) for _ in requests))
    results: dict[str, Run] = {}

    def static() -> Run:
        start = time.perf_counter()
        latency = [0.0] * len(requests)
        ids: dict[int, list[int]] = {}
        next_up = 0
        while next_up < len(requests):
            now = time.perf_counter() - start
            if arrivals[next_up] > now:
                time.sleep(arrivals[next_up] - now)
                now = arrivals[next_up]
            group = [i for i in range(next_up, len(requests)) if arrivals[i] <= now][:size]
            with torch.inference_mode():
                for row, event in loop.generate_batch([requests[i] for i in group]):
                    if isinstance(event, Done):
                        index = group[row]
                        ids[index] = event.token_ids
                        latency[index] = time.perf_counter() - start - arrivals[index]
            next_up = group[-1] + 1
        return latency, time.perf_counter() - start, ids

    def continuous() -> Run:
        # this thread only waits from here, as a server's loop does: its idle OpenMP team
        # would slow the engine's worker (see anygpt_core.engine.threads)
        threads.release()
        engine = LocalEngine(loop, max_batch=size)
        start = time.perf_counter()
        latency = [0.0] * len(requests)
        ids: dict[int, list[int]] = {}

        def client(index: int) -> None:
            time.sleep(max(0.0, arrivals[index] - (time.perf_counter() - start)))
            for _, event in engine.submit([requests[index]]):
                if isinstance(event, Done):
                    ids[index] = event.token_ids
            latency[index] = time.perf_counter() - start - arrivals[index]

        clients = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        return latency, time.perf_counter() - start, ids

    for name, run in (("static", static), ("continuous", continuous)):
        results[name] = run()
    return results


def compare_arrivals(
    model: torch.nn.Module, space: TokenSpace, budget: int, size: int, count: int
) -> None:
    loop = Generator(make_backend(model), space)
    requests = task_pool(space, count, budget)
    batched_ids(loop, requests[:1], 1)  # warm up
    t_one, _ = timed(lambda: batched_ids(loop, requests[:4], 1))
    # about twice as many requests a second as one at a time could serve: a loaded server
    rate = 2 * 4 / t_one
    runs = poisson_arrivals(loop, requests, rate, size, seed=0)
    reference = batched_ids(loop, requests, size)
    tokens = sum(len(ids) for ids in reference.values())
    summary = {}
    for name, (latency, wall, ids) in runs.items():
        if ids != reference:
            raise SystemExit(f"(e) {name}: token ids differ from a static batch's")
        p50 = statistics.median(latency)
        p95 = statistics.quantiles(latency, n=20)[18]
        summary[name] = (tokens / wall, p50, p95)
        logger.info(
            f"(e) {count} requests, Poisson arrivals at {rate:.1f}/s, max batch {size}, {name}: "
            f"{tokens / wall:.0f} tokens/s, latency p50 {p50:.2f} s, p95 {p95:.2f} s"
        )
    (tput_s, p50_s, p95_s), (tput_c, p50_c, p95_c) = summary["static"], summary["continuous"]
    logger.info(
        f"(e) continuous vs static: throughput {tput_c / tput_s:.2f}x, p50 latency "
        f"{p50_s / p50_c:.2f}x lower, p95 latency {p95_s / p95_c:.2f}x lower; identical ids"
    )


def bookkeeping(space: TokenSpace, reps: int) -> None:
    """The span rules' per-step cost for one row: layout, config, advance (and a text mask)."""
    constraint = SpanConstraint(space, vocab_size=49418)
    greedy = DecodingConfig(do_sample=False)
    speech = space.require("speech")
    code = int(speech.layer_ids[0][5])
    for name, row, token, masked in (
        ("speech span", Row(greedy, {}, 10**9, open_span="speech"), code, False),
        ("text", Row(greedy, {}, 10**9), 500, True),
    ):
        state = constraint.start([row])
        steps = 5000
        best = math.inf
        for _ in range(max(reps, 3)):
            start = time.perf_counter()
            for _ in range(steps):
                constraint.summary(state)
                constraint.config(state, 0)
                if masked:
                    constraint.mask(state)
                constraint.advance(state, [token])
            best = min(best, (time.perf_counter() - start) / steps)
        logger.info(
            f"(a) span rules' bookkeeping per step, one row in {name}: {best * 1e3:.3f} ms "
            "(target <= 0.1 ms)"
        )


def compare_drivers(model: torch.nn.Module, space: TokenSpace, budget: int, reps: int) -> None:
    loop = Generator(make_backend(model), space)
    requests = task_pool(space, 4, budget)
    for size in (1, 4):
        chunk = requests[:size]

        def ours(chunk: list[Request] = chunk) -> list[list[int]]:
            ids = batched_ids(loop, chunk, len(chunk))
            return [ids[i] for i in range(len(chunk))]

        def theirs(chunk: list[Request] = chunk) -> list[list[int]]:
            with torch.inference_mode():
                return generate_ids(model, loop.constraint, chunk)

        mine, other = ours(), theirs()
        if mine != other:
            raise SystemExit(f"(d) batch {size}: model.generate and our loop chose different ids")
        tokens = sum(len(i) for i in mine)
        t_ours = min(timed(ours)[0] for _ in range(reps))
        t_theirs = min(timed(theirs)[0] for _ in range(reps))
        logger.info(
            f"(d) batch {size}: {tokens} tokens, identical ids; our loop {tokens / t_ours:.0f} "
            f"tokens/s, model.generate + SpanLogitsProcessor {tokens / t_theirs:.0f} tokens/s "
            f"-> ours {t_theirs / t_ours:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--only", default="a,b,c,d,e", help="Which parts to run, e.g. c,e.")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Few tokens, one repetition, (c) at batch 4 only, (e) with 12 requests.",
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.tokens = 1, 24
    parts = set(args.only.split(","))
    logger.info(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    logger.info(f"backend for LLaMA models: {type(make_backend(small_model())).__name__}")

    if "a" in parts:
        bookkeeping(TokenSpace(VocabOnly(), {"speech": SPEECH}), args.reps)
        model, tokenizer = demo_model()
        space = TokenSpace(tokenizer, {})
        prompt = tokenizer(
            "[Human]: Tell me a story about a red bus.<eoh> [MMGPT]:", return_tensors="pt"
        ).input_ids
        compare_with_generate(
            "demo model (hidden 64, 2 layers)", model, space, prompt, args.tokens, args.reps
        )

    small = small_model()
    vocab = VocabOnly()
    prompt = torch.tensor([[1, 32000, *range(500, 530), 32002, 32001]])
    if "a" in parts:
        compare_with_generate(
            "AnyGPT-shaped (hidden 256, intermediate 688, 4 layers, vocab 49418)",
            small,
            TokenSpace(vocab, {}),
            prompt,
            args.tokens,
            args.reps,
        )
    if "b" in parts:
        compare_slicing(
            small, TokenSpace(vocab, {"speech": SPEECH}), prompt, args.tokens, args.reps
        )
    full = TokenSpace(vocab, {"image": IMAGE, "speech": SPEECH, "music": MUSIC})
    floor = 16 if args.quick else 48  # --quick: a test checks the ids, not the speed
    if "c" in parts:
        sizes = (4,) if args.quick else (2, 4, 8, 16)
        compare_batching(small, full, max(args.tokens // 2, floor), args.reps, sizes)
    if "d" in parts:
        compare_drivers(small, full, max(args.tokens // 4, floor - 8), args.reps)
    if "e" in parts:
        count = 12 if args.quick else 32
        compare_arrivals(small, full, max(args.tokens // 2, floor), 8, count)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    main()
