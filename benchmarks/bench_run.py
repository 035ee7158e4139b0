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
decode stage's busy time and how long decoding went on after generation. The wall time of a batch
cannot go below the larger of its generation and its decoding.

Usage: python benchmarks/bench_run.py [--tasks 32] [--batch 8] [--repeat 2] [--quick]
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
from typing import Any

import torch

from anygpt_core.api import AnyGPT, Result
from anygpt_core.engine.events import Done, Event
from anygpt_core.errors import AnyGPTError

logger = logging.getLogger("bench")

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=None, help="max_new_tokens for every task")
    parser.add_argument("--quick", action="store_true", help="4 tasks of 40 tokens, once each.")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.repeat, args.tokens = 4, 1, 40
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
    reference: list[tuple[Any, ...]] | None = None
    for rep in range(args.repeat):
        for size, run in runs.items():
            gpt.output_dir = root / f"b{size}-{rep}"
            stages.reset()
            seconds, results, note = run()
            made = answers(results, gpt.output_dir)
            reference = reference or made
            same = sum(a == b for a, b in zip(made, reference, strict=True))
            if same != len(made):
                for line, a, b in zip(lines, made, reference, strict=True):
                    if a != b:
                        what = [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y]
                        logger.info(f"batch {size}: {line}: differs in fields {what}")
                raise SystemExit(1)
            best[size] = min(best.get(size, seconds), seconds)
            logger.info(f"batch {size:2d}: {seconds:6.1f} s; {note}")
    ratio = best[1] / best[args.batch]
    logger.info(
        f"outputs identical at batch 1 and {args.batch} ({len(lines)} tasks, texts and files); "
        f"best {best[1]:.1f} s against {best[args.batch]:.1f} s: {ratio:.2f}x (target >= 3x)"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logger.setLevel(logging.INFO)
    main()
