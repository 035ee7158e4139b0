"""The evaluation runner: samples in, answers cached one by one, scores and a report out.

Layout of the output directory `OUT`:

```
OUT/report.json, report.md, report.png     every task evaluated into OUT so far
OUT/TASK/run.json                          the settings the answers were made with
OUT/TASK/generations.jsonl                 the cache: one line per answered sample, synced
OUT/TASK/files/ID.wav|png                  the media each answer's spans decoded to
OUT/TASK/data/                             files the task derived from the data (prompt clips)
OUT/TASK/samples.jsonl                     prompt, output, files, reference, score per sample
```

A killed run resumes where it stopped: samples already in the cache are not generated again, and
`rescore` scores the cache without generating at all. A resumed run must use the settings the
cache was made with (`run.json`); otherwise it is refused rather than mixing answers.
"""

from __future__ import annotations

import json
import math
import os
import random
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from anygpt_core.errors import ConfigError, InputError, OutputError
from anygpt_core.evaluation.task import (
    EvalTask,
    LoadContext,
    Record,
    Sample,
    Scored,
    paper_decoding,
)
from anygpt_core.tasks import atomic_write

if TYPE_CHECKING:
    from anygpt_core.evaluation.backends import Answer, Backend
    from anygpt_core.evaluation.scorers import Scorers

__all__ = ["Decode", "Evaluation", "Progress", "TaskReport", "select"]

Decode = Literal["paper", "model"]

#: Progress callback: (task name, samples answered, samples to answer, what is happening).
Progress = Callable[[str, int, int, str], None]

#: How many samples are handed to the backend at once, per row of its batch: enough to keep its
#: pipeline of groups full (each answer is cached as it ends, whatever the chunk).
_CHUNK_PER_ROW = 16


def select(samples: Sequence[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded subset of `limit` samples, in data order; the whole set without a limit.

    The subsets of one seed are nested: `limit 100` holds the samples of `limit 50`, so a larger
    limit extends a cached run instead of replacing it.
    """
    if limit is None or limit >= len(samples):
        return list(samples)
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    return [samples[i] for i in sorted(order[:limit])]


def sample_seed(seed: int, sample_id: str) -> int:
    """The seed of one sample's answer: fixed by the run's seed and the sample, not its position."""
    return zlib.crc32(f"{seed}:{sample_id}".encode()) & 0x7FFFFFFF


@dataclass
class TaskReport:
    """One task's result, as `report.json` holds it."""

    task: EvalTask
    scored: Scored
    n: int
    skipped: int
    decode: dict[str, Any]
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """`{"metric", "value", "paper", "n", "skipped", "decode", "metrics"}`."""
        head = self.task.headline
        metrics = {
            m.name: {
                "value": _number(self.scored.values.get(m.name)),
                "paper": m.paper,
                "lower_is_better": m.lower_is_better,
                "unit": m.unit,
            }
            for m in self.task.metrics
        }
        for name, value in self.scored.values.items():  # extras a task adds (e.g. CLIP-I)
            metrics.setdefault(name, {"value": _number(value), "paper": None})
        return {
            "metric": head.name,
            "value": _number(self.scored.values.get(head.name)),
            "paper": head.paper,
            "n": self.n,
            "skipped": self.skipped,
            "decode": self.decode,
            "metrics": metrics,
            "description": self.task.description,
        }


def _number(value: float | None) -> float | None:
    """JSON has no NaN: an undefined value (no sample scored) is null."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


class Evaluation:
    """Run evaluation tasks through one backend and score them.

    Args:
        out: the output directory (created; every file goes inside it).
        backend: answers the samples; None scores the cache only (`rescore`).
        scorers: the scorer models (loaded on first use).
        seed: seeds the data's random choices, the `limit` subset and every answer.
        limit: evaluate a seeded subset of this many samples per task.
        decode: `paper` pins the paper's decoding (Table 9) per answer modality; `model` uses the
            plugins' configs with `overrides`.
        overrides: decoding fields (the user's flags) applied with `decode="model"`.
        settings: what else identifies the answers (model, engine, instructions): a cache made
            with other settings is refused.
        on_progress: called as samples are loaded, answered and scored.
    """

    def __init__(
        self,
        out: Path,
        *,
        backend: Backend | None,
        scorers: Scorers,
        seed: int = 0,
        limit: int | None = None,
        decode: Decode = "paper",
        overrides: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        on_progress: Progress | None = None,
    ) -> None:
        self.out = Path(out)
        self.backend = backend
        self.scorers = scorers
        self.seed = seed
        self.limit = limit
        self.decode = decode
        self.overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        self.settings = dict(settings or {})
        self.on_progress = on_progress

    def decoding(self, task: EvalTask) -> dict[str, Any]:
        """The decoding fields every answer of `task` gets over its modality's defaults."""
        if self.decode == "model":
            return dict(self.overrides)
        pinned = paper_decoding(task.target)
        return pinned.model_dump() if pinned is not None else {}

    def _progress(self, task: str, done: int, total: int, what: str) -> None:
        if self.on_progress is not None:
            self.on_progress(task, done, total, what)

    def samples(self, task: EvalTask, data: str | Path) -> list[Sample]:
        """The samples of `task` this evaluation answers: its data's, the `limit` subset.

        `data` is a local path in the task's layout, or (a string that is no existing path) a hub
        data set `OWNER/NAME[@REVISION][:FOLDER]` (`anygpt_core.evaluation.hub`). Call it for
        every task before loading a model: data in the wrong layout fail at once.

        Raises:
            InputError: data in the wrong layout (from the task), a hub id for a task that reads
                none, or no sample in them.
            CheckpointError: a hub data set neither cached nor downloadable (offline: not cached).
        """
        from anygpt_core.evaluation.hub import hub_data

        self._progress(task.name, 0, 0, "loading data")
        context = LoadContext(workdir=self.out / task.name / "data", seed=self.seed)
        hub = hub_data(data) if isinstance(data, str) else None
        if hub is None:
            samples = task.load(Path(data).expanduser(), context)
        elif task.load_hub is None:
            raise InputError(
                f"{data}: no such folder, and {task.name} reads no hub data set; "
                f"expected {task.data}"
            )
        else:
            samples = task.load_hub(hub, context)
        _check_ids(task, samples)
        return select(samples, self.limit, self.seed)

    def run(self, task: EvalTask, chosen: Sequence[Sample]) -> TaskReport:
        """Answer the samples not cached yet (`samples`), then score them all.

        Raises:
            InputError: `rescore` with no cache.
            ConfigError: the cache was made with other settings.
        """
        folder = self.out / task.name
        decoding = self.decoding(task)
        cache = _Cache(folder)
        decode: dict[str, Any] = {"mode": self.decode, **decoding}
        if self.backend is None:
            if not cache.answers:
                raise InputError(f"{folder}: no cached answers to rescore; run without --rescore")
            made = cache.settings()
            decode = {"mode": made.get("decode", "?"), **made.get("decoding", {})}
        else:
            cache.check_settings(
                {"task": task.name, "decode": self.decode, "decoding": decoding, "seed": self.seed}
                | self.settings
            )
            self._answer(self.backend, task, chosen, cache, decoding)
        records, errors = [], []
        for sample in chosen:
            entry = cache.answers.get(sample.id)
            if entry is None:
                continue
            if entry.get("error"):
                errors.append(f"{sample.id}: {entry['error']}")
                continue
            files = tuple(folder / f for f in entry.get("files", []))
            records.append(Record(sample, str(entry.get("text", "")), files))
        self._progress(task.name, len(chosen), len(chosen), "scoring")
        scored = task.score(records, self.scorers) if records else Scored({}, [])
        _write_samples(folder / "samples.jsonl", chosen, cache.answers, records, scored)
        return TaskReport(
            task,
            scored,
            n=len(records),
            skipped=len(chosen) - len(records),
            decode=decode,
            errors=errors,
        )

    def _answer(
        self,
        backend: Backend,
        task: EvalTask,
        samples: Sequence[Sample],
        cache: _Cache,
        decoding: dict[str, Any],
    ) -> None:
        from anygpt_core.evaluation.backends import Job

        todo = [s for s in samples if s.id not in cache.answers]
        total, done = len(samples), len(samples) - len(todo)
        self._progress(task.name, done, total, "answering")
        size = max(1, backend.batch * _CHUNK_PER_ROW)
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            jobs = [Job(s.task, sample_seed(self.seed, s.id), decoding) for s in chunk]
            for index, answer in backend.answers(jobs):
                cache.add(chunk[index], answer)
                done += 1
                self._progress(task.name, done, total, "answering")


class _Cache:
    """`generations.jsonl` (one synced line per answer) and the media files beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "generations.jsonl"
        self.answers: dict[str, dict[str, Any]] = dict(_read_jsonl(self.path))

    def settings(self) -> dict[str, Any]:
        """The settings the cached answers were made with (`run.json`), empty if unrecorded."""
        path = self.folder / "run.json"
        if not path.is_file():
            return {}
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: unreadable ({err}); delete it to start over") from err
        return found if isinstance(found, dict) else {}

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to add to answers made with other settings; record the settings otherwise."""
        wanted = json.loads(json.dumps(settings, sort_keys=True, default=str))
        had = self.settings()
        differ = sorted(k for k in set(had) | set(wanted) if had.get(k) != wanted.get(k))
        if had and differ and self.answers:
            raise ConfigError(
                f"{self.folder}: cached answers were made with other settings "
                f"({', '.join(differ)}); use another --out, or delete {self.folder.name}/ "
                "to start over"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(wanted, indent=2) + "\n"
        atomic_write(self.folder / "run.json", lambda tmp: tmp.write_text(text), overwrite=True)

    def add(self, sample: Sample, answer: Answer) -> None:
        """Write the answer's media, then its line (synced): a kill leaves no half answer."""
        files = []
        for i, (suffix, data) in enumerate(answer.media):
            name = f"files/{_safe(sample.id)}{'' if i == 0 else f'-{i}'}{suffix}"
            target = self.folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, lambda tmp, data=data: tmp.write_bytes(data), overwrite=True)  # type: ignore[misc]
            files.append(name)
        entry = {
            "id": sample.id,
            "prompt": answer.prompt,
            "text": answer.text,
            "files": files,
            "new_tokens": answer.new_tokens,
            "finish_reason": answer.finish_reason,
            "error": answer.error,
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise OutputError(f"{self.path}: cannot write ({err.strerror or err})") from err
        self.answers[sample.id] = entry


def _safe(sample_id: str) -> str:
    """A file name of a sample id (ids may hold `/`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)[:120]


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Entries by id; a torn last line (a kill mid-write) is ignored, and so re-answered."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            yield entry["id"], entry


def _check_ids(task: EvalTask, samples: Sequence[Sample]) -> None:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise InputError(f"{task.name}: sample id {sample.id!r} occurs twice in its data")
        seen.add(sample.id)
    if not samples:
        raise InputError(f"{task.name}: its data hold no samples")


def _write_samples(
    path: Path,
    chosen: Sequence[Sample],
    answers: Mapping[str, Mapping[str, Any]],
    records: Sequence[Record],
    scored: Scored,
) -> None:
    scores = {r.sample.id: s for r, s in zip(records, scored.per_sample, strict=False)}
    lines = []
    for sample in chosen:
        entry = answers.get(sample.id, {})
        lines.append(
            json.dumps(
                {
                    "id": sample.id,
                    "task": sample.task.instruction,
                    "prompt": entry.get("prompt"),
                    "output": entry.get("text"),
                    "files": entry.get("files", []),
                    "reference": sample.reference,
                    "score": {k: _number(v) for k, v in scores.get(sample.id, {}).items()},
                    "error": entry.get("error") if entry else "not answered",
                },
                ensure_ascii=False,
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path,
        lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8"),
        overwrite=True,
    )
