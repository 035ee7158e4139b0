"""`anygpt data prepare`: a manifest of media files -> training JSONL with protocol strings.

Manifest lines (JSONL; paths relative to the manifest's directory):

- pretraining pair: `{"text": "a calm piano piece", "music": "clips/001.wav"}` ->
  `{"text": "a calm piano piece", "music": "<somu><🎶166>…<eomu>"}` (REFERENCE.md §8);
- conversation: `{"id": "c1", "conversation": [{"role": "user", "message": "{image} What is this?",
  "image": "a.jpg"}, {"role": "assistant", "message": "A dog."}]}` -> the reference's instruction
  format with `{image}` replaced by the span (a message without the placeholder gets the span
  appended after a space).

Bad lines (not JSON, unknown modality, missing or corrupt file, too long) are skipped and reported
by line number. Output is written in manifest order; a state file beside it (`OUT.state.json`)
records how far it got, so an interrupted run resumes without duplicated or lost lines.

Several machines prepare one manifest with `shard=(K, N)`: shard K takes the K-th of N contiguous
blocks of lines and writes `OUT`'s name with `.0000K-of-0000N` before the suffix, resumable on its
own. `merge_shards` joins them into `OUT` byte for byte as one run would have written it (and its
state, so `prepare` then finds it complete); listing the shard files in order in a training config
gives the same examples in the same order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anygpt_core.errors import AnyGPTError, InputError
from anygpt_core.files import file_problem, refuse_overwriting_input
from anygpt_core.plugins import PluginSet

__all__ = [
    "PrepareSummary",
    "Skipped",
    "convert_line",
    "merge_shards",
    "parse_shard",
    "prepare_dataset",
    "shard_path",
    "state_path",
]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
_CHECKPOINT_SECONDS = 1.0


@dataclass(frozen=True)
class Skipped:
    """A manifest line left out: its 1-based number, a kind for the summary and the reason."""

    line: int
    kind: str
    reason: str


@dataclass
class PrepareSummary:
    """The outcome of a (possibly resumed) prepare run, or of a merge of shards.

    `total` counts the lines this run covers: the manifest's, or its shard's, manifest lines
    `first`..`last`; `resumed_at` is the manifest line it resumed after (0: it started afresh).
    """

    out: Path
    total: int
    written: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    resumed_at: int = 0
    shard: tuple[int, int] | None = None
    first: int = 1
    last: int = 0

    @property
    def was_complete(self) -> bool:
        """Whether the run found its output already complete and did nothing."""
        return self.first <= self.last <= self.resumed_at


class _Skip(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def convert_line(codecs: Any, text: str, base: Path, *, max_tokens: int) -> str:  # noqa: ANN401
    """Turn one manifest line into one training line (JSON text, no newline).

    Args:
        codecs: an `anygpt_core.api.CodecSet`.
        text: the manifest line.
        base: directory relative media paths are resolved against.
        max_tokens: most span tokens (codes plus start and end) one example may hold.

    Raises:
        _Skip: the line cannot be used (its kind and reason).
    """
    try:
        item = json.loads(text)
    except json.JSONDecodeError as err:
        raise _Skip("bad line", f"not JSON ({err.msg})") from err
    except RecursionError as err:
        raise _Skip("bad line", "JSON nested too deeply") from err
    if not isinstance(item, dict):
        raise _Skip("bad line", "not a JSON object")
    budget = [max_tokens]
    if "conversation" in item:
        out = {"id": item.get("id", ""), "conversation": _conversation(codecs, item, base, budget)}
        return json.dumps(out, ensure_ascii=False)
    keys = [k for k in item if k not in {"text", "id"}]
    if not isinstance(item.get("text"), str) or len(keys) != 1:
        raise _Skip(
            "bad line",
            "expected 'text' and one modality key (a pretraining pair) or 'conversation'"
            + (f"; found modality keys {', '.join(keys)}" if len(keys) > 1 else ""),
        )
    modality = keys[0]
    return json.dumps(
        {"text": item["text"], modality: _span(codecs, modality, item[modality], base, budget)},
        ensure_ascii=False,
    )


def _conversation(
    codecs: Any,  # noqa: ANN401 - a CodecSet, imported lazily
    item: dict[str, Any],
    base: Path,
    budget: list[int],
) -> list[dict[str, str]]:
    turns = item["conversation"]
    if isinstance(turns, list) and len(turns) == 1 and isinstance(turns[0], list):
        turns = turns[0]  # the reference's sample file nests the turns one level deeper
    if not isinstance(turns, list) or not turns:
        raise _Skip("bad line", "'conversation' must be a non-empty list of messages")
    out = []
    for number, turn in enumerate(turns):
        role = "user" if number % 2 == 0 else "assistant"
        if (
            not isinstance(turn, dict)
            or turn.get("role") != role
            or not isinstance(turn.get("message"), str)
        ):
            raise _Skip(
                "bad line",
                f"message {number + 1} must be {{'role': '{role}', 'message': '…'}} "
                "(roles alternate, user first)",
            )
        message = turn["message"]
        for modality in [k for k in turn if k not in {"role", "message"}]:
            span = _span(codecs, modality, turn[modality], base, budget)
            placeholder = "{" + modality + "}"
            message = (
                message.replace(placeholder, span)
                if placeholder in message
                else f"{message} {span}"
            )
        out.append({"role": role, "message": message})
    return out


def _span(codecs: Any, modality: str, value: object, base: Path, budget: list[int]) -> str:  # noqa: ANN401
    from anygpt_core.protocol import codes_to_string

    if modality not in codecs.plugins.modalities:
        known = ", ".join(codecs.plugins.modalities) or "none"
        raise _Skip("unknown modality", f"unknown modality {modality!r} (installed: {known})")
    if not isinstance(value, str) or not value:
        raise _Skip("bad line", f"{modality!r} must be a file path")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    problem = file_problem(path)
    if problem is not None:
        raise _Skip(
            "missing file" if problem == "no such file" else "unreadable file",
            f"{value}: {problem}",
        )
    try:
        codes = codecs.encode(modality, path)
    except InputError as err:
        raise _Skip("corrupt file", str(err).splitlines()[0]) from err
    except AnyGPTError:
        raise  # missing codec weights or plugin trouble stop the whole run
    except Exception as err:
        raise _Skip(
            "corrupt file", f"{value}: {type(err).__name__}: {err}".splitlines()[0]
        ) from err
    spec = codecs.spec(modality)
    budget[0] -= codes.shape[1] * spec.num_codebooks + 2
    if budget[0] < 0:
        raise _Skip("too long", f"{value}: spans exceed --max-tokens")
    return codes_to_string(spec, codes)


# Worker side: each process builds its own codecs once.
_WORKER: dict[str, Any] = {}


def _init_worker(
    path: list[str], plugin_names: list[str], options: dict[str, Any], base: str, max_tokens: int
) -> None:
    import importlib

    from anygpt_core.api import CodecSet
    from anygpt_core.plugins import discover

    sys.path[:] = path
    importlib.invalidate_caches()
    _WORKER.update(
        codecs=CodecSet(discover(load_only=plugin_names), options),
        base=Path(base),
        max_tokens=max_tokens,
    )


def _init_pool_worker(*args: Any) -> None:  # noqa: ANN401 - `_init_worker`'s arguments
    _die_with_parent()
    _init_worker(*args)


def _die_with_parent() -> None:
    """End this worker as soon as the process that started it is gone, even by SIGKILL.

    A pool's workers would otherwise wait on their queue forever, each holding its codecs
    (hundreds of MB). A spawned worker is its parent's child; once the parent dies it is
    re-parented, so its parent pid changes.
    """
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="anygpt-parent-watch", daemon=True).start()


def _work(job: tuple[int, str]) -> tuple[int, str | None, Skipped | None]:
    number, text = job
    try:
        line = convert_line(
            _WORKER["codecs"], text, _WORKER["base"], max_tokens=_WORKER["max_tokens"]
        )
    except _Skip as skip:
        return number, None, Skipped(number, skip.kind, str(skip))
    return number, line, None


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _jobs(manifest: Path, start: int, stop: int) -> Iterator[tuple[int, str]]:
    with manifest.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            if number > stop:
                return
            if number > start and text.strip():
                yield number, text


def _count_lines(manifest: Path) -> int:
    with manifest.open("rb") as handle:
        return sum(1 for _ in handle)


def state_path(out: Path) -> Path:
    """The resume state file of an output file."""
    return out.with_name(out.name + ".state.json")


def parse_shard(text: str) -> tuple[int, int]:
    """`"K/N"` -> `(K, N)`: the K-th of N parts, 1 <= K <= N.

    Raises:
        InputError: not of that form.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise InputError(f"--shard {text}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return int(match[1]), int(match[2])


def shard_path(out: Path, shard: tuple[int, int]) -> Path:
    """The file shard K of N writes: `data/train.jsonl`, (2, 8) -> `data/train.00002-of-00008.jsonl`."""
    index, count = shard
    return out.with_name(f"{out.stem}.{index:05d}-of-{count:05d}{out.suffix}")


def _shard_lines(total: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """The manifest lines `(first, last)` a shard covers: the K-th of N contiguous blocks."""
    if shard is None:
        return 1, total
    index, count = shard
    return total * (index - 1) // count + 1, total * index // count


def prepare_dataset(
    manifest: Path,
    out: Path,
    *,
    plugins: PluginSet,
    options: Mapping[str, Any] | None = None,
    workers: int = 1,
    max_tokens: int = 4096,
    overwrite: bool = False,
    on_progress: Callable[[int, int, int], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> PrepareSummary:
    """Encode every manifest line's media and write the training JSONL, resuming where it stopped.

    Args:
        manifest: the JSONL manifest.
        out: the training JSONL to write; `out.state.json` beside it tracks progress.
        plugins: the modalities; workers rediscover the same plugins by name.
        options: codec option values (e.g. `music_tokenizer_path`).
        workers: encoding processes; 1 encodes in this process.
        max_tokens: most span tokens per example; longer ones are skipped as too long.
        overwrite: start again even if `out` exists.
        on_progress: called with (lines done, lines in total, lines skipped) as lines complete.
        shard: `(K, N)` to prepare only the K-th of N contiguous blocks of the manifest's lines,
            into `shard_path(out, shard)`; `merge_shards(out)` joins the N files.

    Raises:
        InputError: no manifest; `out` exists without a state file (and not `overwrite`); a state
            file from another manifest or other settings.
    """
    manifest, out = Path(manifest), Path(out)
    problem = file_problem(manifest)  # a directory or an unreadable file says so
    if problem is not None:
        raise InputError(
            f"{manifest}: {'no such manifest' if problem == 'no such file' else problem}"
        )
    refuse_overwriting_input([manifest], out)  # before --overwrite deletes anything
    refuse_overwriting_input([manifest], state_path(out))
    if workers < 1 or max_tokens < 3:
        raise InputError("--workers must be at least 1 and --max-tokens at least 3")
    # codes from other codecs (another plugin version or checkpoint) must not join the same file
    codecs = json.dumps([plugins.key(), sorted((options or {}).items())], default=str)
    settings = {
        "version": _STATE_VERSION,
        "manifest": _digest(manifest),
        "max_tokens": max_tokens,
        "codec setup": hashlib.sha256(codecs.encode()).hexdigest(),
    }
    total = _count_lines(manifest)
    first, last = _shard_lines(total, shard)
    if shard is not None:
        out = shard_path(out, shard)
        settings["shard"] = f"{shard[0]}/{shard[1]}"
    state = _resume_state(out, settings, overwrite=overwrite, start=first - 1)
    summary = PrepareSummary(
        out,
        last - first + 1,
        state["written"],
        [Skipped(**s) for s in state["skipped"]],
        state["lines"] if state["lines"] > first - 1 else 0,
        shard,
        first,
        last,
    )
    if state.get("complete"):
        return summary
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("ab") as handle:
        handle.truncate(state["bytes"])  # drop a line half-written before an interruption
    names = [i.name for i in plugins.infos if i.state == "loaded"]
    init_args = (
        list(sys.path),
        names,
        dict(options or {}),
        str(manifest.parent.resolve()),
        max_tokens,
    )
    # (lines done, bytes, examples written, skips) move together, so an interruption at any point
    # saves a consistent state: a line written but not yet counted is cut off on resume.
    committed = (state["lines"], state["bytes"], summary.written, len(summary.skipped))
    last_save = time.monotonic()
    with out.open("ab") as handle:
        try:
            jobs = _jobs(manifest, committed[0], last)
            for number, line, skipped in _results(manifest, jobs, workers, init_args):
                if line is not None:
                    handle.write(line.encode("utf-8") + b"\n")
                if skipped is not None:
                    summary.skipped.append(skipped)
                committed = (
                    number,
                    handle.tell(),
                    committed[2] + (line is not None),
                    len(summary.skipped),
                )
                if time.monotonic() - last_save > _CHECKPOINT_SECONDS:
                    _save_state(out, handle, settings, summary, committed)
                    last_save = time.monotonic()
                if on_progress is not None:
                    on_progress(number - first + 1, summary.total, len(summary.skipped))
            committed = (last, *committed[1:])
        finally:
            _save_state(out, handle, settings, summary, committed, complete=committed[0] >= last)
    return summary


def _results(
    manifest: Path, jobs: Iterator[tuple[int, str]], workers: int, init_args: tuple[Any, ...]
) -> Iterator[tuple[int, str | None, Skipped | None]]:
    if workers == 1:
        _init_worker(*init_args)
        yield from map(_work, jobs)
        return
    # spawn, not fork: a fork of a process with torch / tokenizer threads can deadlock. An executor,
    # not multiprocessing.Pool: a worker that dies or fails to start raises here instead of hanging.
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    window: deque[Future[tuple[int, str | None, Skipped | None]]] = deque()
    try:
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_pool_worker, initargs=init_args
        ) as pool:
            for job in jobs:
                window.append(pool.submit(_work, job))
                if len(window) >= 4 * workers:  # bounded, in manifest order
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
    except BrokenProcessPool as err:
        raise InputError(
            f"{manifest}: a prepare worker process died ({err}); retry with -j 1"
        ) from err


def _resume_state(
    out: Path, settings: dict[str, Any], *, overwrite: bool, start: int = 0
) -> dict[str, Any]:
    fresh = {**settings, "lines": start, "bytes": 0, "written": 0, "skipped": []}
    path = state_path(out)
    if overwrite or not (out.exists() or path.exists()):
        out.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        return fresh
    if not path.is_file():
        raise InputError(
            f"{out}: already exists and was not written by an interrupted prepare; use --overwrite"
        )
    try:
        state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: unreadable resume state ({err}); use --overwrite") from err
    changed = [k for k, v in settings.items() if state.get(k) != v]
    if changed:
        raise InputError(
            f"{out}: was prepared with another {' and '.join(changed)}; "
            "use --overwrite to start again"
        )
    if not out.is_file() or out.stat().st_size < state["bytes"]:
        raise InputError(f"{out}: shorter than its resume state records; use --overwrite")
    return state


def _save_state(
    out: Path,
    handle: Any,  # noqa: ANN401 - a binary file
    settings: dict[str, Any],
    summary: PrepareSummary,
    committed: tuple[int, int, int, int],
    *,
    complete: bool = False,
) -> None:
    lines, size, written, skips = committed
    del summary.skipped[skips:]
    summary.written = written
    handle.flush()
    os.fsync(handle.fileno())
    state = {
        **settings,
        "lines": lines,
        "bytes": size,
        "written": written,
        "skipped": [asdict(s) for s in summary.skipped],
        "complete": complete,
    }
    path = state_path(out)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def merge_shards(out: Path, *, overwrite: bool = False) -> PrepareSummary:
    """Join the files `prepare_dataset(..., shard=(K, N))` wrote for `out` into `out`.

    The result, and its state file, are byte for byte what one run over the whole manifest writes.
    The shard files are left in place.

    Raises:
        InputError: no shards; shards of different counts, missing, incomplete, or prepared from
            another manifest or with other settings; `out` exists (and not `overwrite`).
    """
    out = Path(out)
    pattern = re.compile(rf"{re.escape(out.stem)}\.(\d{{5}})-of-(\d{{5}}){re.escape(out.suffix)}")
    found: dict[tuple[int, int], Path] = {}
    for path in out.parent.iterdir() if out.parent.is_dir() else ():
        match = pattern.fullmatch(path.name)
        if match:
            found[int(match[1]), int(match[2])] = path
    counts = sorted({count for _, count in found})
    if not counts:
        raise InputError(f"{out}: no shards to merge (e.g. {shard_path(out, (1, 2)).name})")
    if len(counts) > 1:
        raise InputError(
            f"{out}: shards of {' and '.join(map(str, counts))} parts; keep one set and merge again"
        )
    count = counts[0]
    missing = [str(k) for k in range(1, count + 1) if (k, count) not in found]
    if missing:
        raise InputError(f"{out}: shard {', '.join(missing)} of {count} missing")
    target = state_path(out)
    if not overwrite and (out.exists() or target.exists()):
        raise InputError(f"{out}: already exists; use --overwrite to merge again")
    paths = [found[k, count] for k in range(1, count + 1)]
    states = [_shard_state(path, (k, count)) for k, path in enumerate(paths, 1)]
    settings = {k: v for k, v in states[0].items() if k in _SETTINGS}
    for path, state in zip(paths[1:], states[1:], strict=True):
        changed = [k for k, v in settings.items() if state.get(k) != v]
        if changed:
            raise InputError(
                f"{path}: prepared with another {' and '.join(changed)} than {paths[0].name}"
            )
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as handle:
        for path in paths:
            with path.open("rb") as part:
                shutil.copyfileobj(part, handle)
        handle.flush()
        os.fsync(handle.fileno())
        size = handle.tell()
    skipped = [Skipped(**s) for state in states for s in state["skipped"]]
    summary = PrepareSummary(
        out,
        states[-1]["lines"],
        sum(state["written"] for state in states),
        skipped,
        last=states[-1]["lines"],
    )
    merged = {
        **settings,
        "lines": states[-1]["lines"],
        "bytes": size,
        "written": summary.written,
        "skipped": [asdict(s) for s in skipped],
        "complete": True,
    }
    os.replace(tmp, out)
    staged = target.with_name(target.name + ".tmp")
    staged.write_text(json.dumps(merged, ensure_ascii=False), encoding="utf-8")
    os.replace(staged, target)
    return summary


#: The state fields that must agree for outputs to belong together, in the order they are saved.
_SETTINGS = ("version", "manifest", "max_tokens", "codec setup")


def _shard_state(path: Path, shard: tuple[int, int]) -> dict[str, Any]:
    index, count = shard
    again = f"run prepare with --shard {index}/{count} to finish it"
    try:
        state: dict[str, Any] = json.loads(state_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no resume state beside it; {again}") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{state_path(path)}: unreadable ({err}); {again}") from err
    if state.get("shard") != f"{index}/{count}" or state.get("version") != _STATE_VERSION:
        raise InputError(f"{path}: its state is not that of shard {index}/{count}; {again}")
    if not state.get("complete"):
        raise InputError(f"{path}: incomplete (up to manifest line {state['lines']}); {again}")
    if path.stat().st_size != state["bytes"]:
        raise InputError(f"{path}: not the size its state records; {again} with --overwrite")
    return state
