"""`anygpt run --batch-size 8` against `--batch-size 1` on 32 mixed tasks on the embedded demo.

The tasks are 8 each of text, image, speech and music answers (`text|text|...`, `text|image|...`,
...), seed 0, the demo's own decoding configs, files written to an output folder per run. Both
settings run the way `anygpt run` runs them, through the Python API in one process with the model
loaded once: batch 1 as `AnyGPT.run` task after task (`_run_each`), batch 8 as one `run_many` with
`engine.max_batch = 8` (`_run_batch`): the engine generates while a decode stage turns finished
tasks' spans into media. Every run's texts, token counts, spans and file bytes are compared with
the first batch-1 run's. Target: >= 3x.

Each setting runs `--repeat` times, the two alternating (1, 8, 1, 8, ...), and its best time counts
(on a machine shared with other work, a burst of someone else's load then does not decide the
ratio). The stage figures say where the time goes: generation per answer modality and decoding per
span modality at batch 1; at batch 8 the generation's wall time (to the last task's end), the
decode stage's busy time, how long decoding went on after generation, and the generation alone
(nothing decoded). A batch's wall time cannot go below the larger of its generation alone and its
decoding alone (as at batch 1): the report gives the ratio that bound allows. `--threads` sets
torch's threads for both settings (the engine's worker and the decode stage inherit them);
`--codecs` also times the codecs that take batches (SoundStorm, unCLIP) over several spans in one
call against one by one, and compares their outputs.

Usage: python benchmarks/bench_run.py [--tasks 32] [--batch 8] [--repeat 2] [--threads N]
                                      [--codecs] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from anygpt_core.api import AnyGPT, Result
from anygpt_core.engine.events import Done, Event
from anygpt_core.errors import AnyGPTError

logger = logging.getLogger("bench")
T = TypeVar("T")

#: The time in an output file's name (`output_name`): runs differ there and nowhere else.
STAMP = re.compile(r"_\d{4}_\d{6}")

SUBJECTS = [
    "a red bus",
    "a calm lake at dawn",
    "two cats on a sofa",
    "rain on a window",
    "a busy market",
    "the northern lights",
    "an old clock tower",
    "a child laughing",
]


def tasks(count: int) -> list[str]:
    """`count` tasks, answers in text, image, speech and music in turn."""
    lines = []
    for i in range(count):
        subject = SUBJECTS[i // 4 % len(SUBJECTS)] + (f" {i // 32}" if i >= 32 else "")
        lines.append(
            [
                f"text|text|Tell me about {subject}",
                f"text|image|{subject}",
                f"text|speech|I saw {subject} today.",
                f"text|music|{subject}",
            ][i % 4]
        )
    return lines


class Stages:
    """Seconds spent decoding per span modality (the codecs' `decode`, on whatever thread)."""

    def __init__(self, gpt: AnyGPT) -> None:
        self.decode: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        decode = gpt.codecs.decode

        def timed(modality: str, codes: torch.Tensor, **options: Any) -> Any:  # noqa: ANN401
            started = time.perf_counter()
            try:
                return decode(modality, codes, **options)
            finally:
                with self._lock:
                    self.decode[modality] += time.perf_counter() - started

        gpt.codecs.decode = timed  # type: ignore[method-assign]

    def reset(self) -> None:
        with self._lock:
            self.decode.clear()

    def line(self) -> str:
        parts = [f"{name} {seconds:.1f} s" for name, seconds in sorted(self.decode.items())]
        return f"decode {sum(self.decode.values()):.1f} s ({', '.join(parts)})"


def answers(results: list[Result | AnyGPTError], out: Path) -> list[tuple[Any, ...]]:
    """What a run produced, per task: text, tokens, spans' codes, and the bytes of its files."""
    made: list[tuple[Any, ...]] = []
    for result in results:
        if isinstance(result, AnyGPTError):
            made.append(("error", str(result).replace(str(out), "")))
            continue
        spans = [(s.modality, s.codes.tolist()) for s in result.spans]
        files = [(STAMP.sub("", f.name), f.read_bytes()) for f in result.files]
        made.append((result.text, result.new_tokens, result.finish_reason, spans, files))
    return made


def one_by_one(
    gpt: AnyGPT, lines: list[str], options: dict[str, Any], stages: Stages
) -> tuple[float, list[Result | AnyGPTError], str]:
    """`anygpt run --batch-size 1`: each task generated, then decoded, then the next."""
    generation: dict[str, float] = defaultdict(float)
    results: list[Result | AnyGPTError] = []
    gpt.engine.max_batch = 1
    started = time.perf_counter()
    for line in lines:
        task_started = time.perf_counter()
        last: list[float] = [task_started]

        def ended(event: Event, last: list[float] = last) -> None:
            if isinstance(event, Done):
                last[0] = time.perf_counter()

        try:
            results.append(gpt.run(line, on_event=ended, **options))
        except AnyGPTError as err:
            results.append(err)
        generation[line.split("|")[1]] += last[0] - task_started
    seconds = time.perf_counter() - started
    parts = ", ".join(f"{name} {s:.1f} s" for name, s in generation.items())
    note = f"generate {sum(generation.values()):.1f} s ({parts}); {stages.line()}"
    return seconds, results, note


def together(
    gpt: AnyGPT, lines: list[str], options: dict[str, Any], size: int, stages: Stages
) -> tuple[float, list[Result | AnyGPTError], str]:
    """`anygpt run --batch-size N`: all tasks to the engine, spans decoded beside generation."""
    gpt.engine.max_batch = size
    last = [0.0]

    def ended(_: int, event: Event) -> None:
        if isinstance(event, Done):
            last[0] = time.perf_counter()

    started = time.perf_counter()
    results = gpt.run_many(lines, on_event=ended, **options)
    seconds = time.perf_counter() - started
    generation = last[0] - started
    note = (
        f"generate {generation:.1f} s (wall, to the last task's end); {stages.line()}; "
        f"decoding after generation {seconds - generation:.1f} s"
    )
    return seconds, results, note


def generation_alone(gpt: AnyGPT, lines: list[str], options: dict[str, Any], size: int) -> float:
    """Seconds the engine takes to generate every task at batch `size`, nothing decoded."""
    prepared = [gpt.prepare(line, **options) for line in lines]
    gpt.engine.max_batch = size
    started = time.perf_counter()
    for _ in gpt.stream_many(prepared):
        pass
    return time.perf_counter() - started


def codec_batching(gpt: AnyGPT, spans: int, frames: int) -> None:
    """Whether the codecs that take batches decode `spans` spans faster in one call, identically.

    SoundStorm: `spans` semantic spans of `frames` frames through its network, one call against
    one by one (outputs compared), and its whole mask-predict `generate`, timed only (one
    generator serves a batch, so its draws differ). unCLIP: `spans` pictures in one pipeline
    call with a generator per picture against `render` one by one (pixels compared).
    """
    from anygpt_image.unclip import render

    draw = torch.Generator().manual_seed(0)
    speech = gpt.codecs.codec("speech").soundstorm  # type: ignore[attr-defined]
    semantic = torch.randint(0, speech.config.codebook_size, (spans, frames), generator=draw)
    acoustic = torch.full((spans, frames, speech.config.num_quantizers), speech.mask_id)
    with torch.inference_mode():
        condition = speech.semantic_token_emb(semantic)
        alone, each = timed(
            lambda: [speech.net(acoustic[i : i + 1], condition[i : i + 1]) for i in range(spans)]
        )
        batched, together = timed(lambda: speech.net(acoustic, condition))
        same = all(torch.equal(each[i][0], together[i]) for i in range(spans))
        alone_all, _ = timed(lambda: [speech.generate(semantic[i : i + 1]) for i in range(spans)])
        batched_all, _ = timed(lambda: speech.generate(semantic))
    logger.info(
        f"(codecs) SoundStorm network, {spans} spans of {frames} frames: one call {batched:.2f} s "
        f"against {alone:.2f} s one by one ({alone / batched:.2f}x), logits "
        f"{'identical' if same else 'different'}; whole generate {batched_all:.2f} s against "
        f"{alone_all:.2f} s ({alone_all / batched_all:.2f}x)"
    )
    image = gpt.codecs.codec("image")
    pipe, options = image.pipeline, image.options  # type: ignore[attr-defined]
    codes = [torch.randint(0, 8192, (1, 32), generator=draw) for _ in range(spans)]
    embeds = torch.cat([image.embed(c) for c in codes])  # type: ignore[attr-defined]
    settings = {"steps": options.image_steps, "guidance_scale": options.image_guidance_scale}
    alone, singles = timed(
        lambda: [render(pipe, embeds[i : i + 1], seed=i, **settings) for i in range(spans)]
    )
    batched, pictures = timed(lambda: render_batch(pipe, embeds, options))
    levels = [
        int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())
        for a, b in zip(singles, pictures, strict=True)
    ]
    logger.info(
        f"(codecs) unCLIP, {spans} pictures: one call {batched:.2f} s against {alone:.2f} s one "
        f"by one ({alone / batched:.2f}x); {sum(d > 0 for d in levels)} of {spans} pictures "
        f"differ (at most {max(levels)} levels)"
    )


def render_batch(pipe: Any, embeds: torch.Tensor, options: Any) -> list[Any]:  # noqa: ANN401
    """unCLIP over a batch of embeddings, picture i drawn as `render(..., seed=i)` draws it."""
    generators = [torch.Generator("cpu").manual_seed(i) for i in range(len(embeds))]
    unet = pipe.unet
    shape = (1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    latents = torch.cat([torch.randn(shape, generator=g) for g in generators])
    return list(
        pipe(
            image_embeds=embeds,
            prompt=[""] * len(embeds),
            guidance_scale=options.image_guidance_scale,
            noise_level=0,
            num_inference_steps=options.image_steps,
            latents=latents * pipe.scheduler.init_noise_sigma,
            generator=generators,
        ).images
    )


def timed(run: Callable[[], T]) -> tuple[float, T]:
    """Seconds `run` took, and what it returned."""
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=None, help="max_new_tokens for every task")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch's threads (default: its own choice)"
    )
    parser.add_argument("--quick", action="store_true", help="4 tasks of 40 tokens, once each.")
    parser.add_argument(
        "--codecs", action="store_true", help="Also time batched SoundStorm and unCLIP calls."
    )
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.repeat, args.tokens = 4, 1, 40
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the engine's worker and the decode stage inherit it
    options: dict[str, Any] = {"seed": 0}
    if args.tokens is not None:
        options["max_new_tokens"] = args.tokens
    lines = tasks(args.tasks)
    logger.info(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(lines)} tasks, "
        f"batch {args.batch} against 1, {args.repeat} repetitions each (best counts)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        gpt = AnyGPT.load(device="cpu", output_dir=tmp)
        stages = Stages(gpt)
        gpt.run_many(tasks(4), save=False, **options)  # codecs load once, outside the timings
        compare(gpt, lines, options, args, stages, Path(tmp))
        if args.codecs:
            codec_batching(gpt, spans=2 if args.quick else 8, frames=25 if args.quick else 1500)


def compare(
    gpt: AnyGPT,
    lines: list[str],
    options: dict[str, Any],
    args: argparse.Namespace,
    stages: Stages,
    root: Path,
) -> None:
    """Run both settings in turn, check every run's outputs, report the best times and ratio."""
    runs: dict[int, Callable[[], tuple[float, list[Result | AnyGPTError], str]]] = {
        1: lambda: one_by_one(gpt, lines, options, stages),
        args.batch: lambda: together(gpt, lines, options, args.batch, stages),
    }
    best: dict[int, float] = {}
    bound = {"generate": float("inf"), "decode": float("inf")}
    reference: list[tuple[Any, ...]] | None = None
    for rep in range(args.repeat):
        for size, run in runs.items():
            gpt.output_dir = root / f"b{size}-{rep}"
            stages.reset()
            seconds, results, note = run()
            made = answers(results, gpt.output_dir)
            reference = reference or made
            check(lines, made, reference, size)
            best[size] = min(best.get(size, seconds), seconds)
            logger.info(f"batch {size:2d}: {seconds:6.1f} s; {note}")
            if size == 1:  # decoding alone: nothing else runs beside it
                bound["decode"] = min(bound["decode"], sum(stages.decode.values()))
        alone = generation_alone(gpt, lines, options, args.batch)
        bound["generate"] = min(bound["generate"], alone)
        logger.info(f"batch {args.batch:2d}: generation alone (nothing decoded) {alone:.1f} s")
    ratio = best[1] / best[args.batch]
    logger.info(
        f"bound at batch {args.batch}: the larger of its generation alone "
        f"{bound['generate']:.1f} s and decoding alone (as at batch 1) {bound['decode']:.1f} s, "
        f"best of each: {best[1] / max(bound.values()):.2f}x at most"
    )
    logger.info(
        f"outputs identical at batch 1 and {args.batch} ({len(lines)} tasks, texts and files); "
        f"best {best[1]:.1f} s against {best[args.batch]:.1f} s: {ratio:.2f}x (target >= 3x)"
    )


def check(
    lines: list[str], made: list[tuple[Any, ...]], reference: list[tuple[Any, ...]], size: int
) -> None:
    """Stop with the tasks whose outputs differ from the first run's."""
    differ = [
        f"{line}: fields {[i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]}"
        for line, a, b in zip(lines, made, reference, strict=True)
        if a != b
    ]
    if differ:
        logger.info(f"batch {size}: outputs differ from the first run's: {'; '.join(differ)}")
        raise SystemExit(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    main()
