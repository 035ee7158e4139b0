"""One loaded model shared by several callers: their requests are batched by one worker thread.

Callers `submit` requests from any thread and iterate over their own events; a worker admits the
waiting requests, oldest first, into the running batch whenever rows are free (continuous
batching: between any two steps), and hands each event to the caller it belongs to. Each request
samples with its own seeded generator, so its tokens are the same whatever it was batched with
(greedy ids exactly). A caller that stops iterating (an interrupt, a closed stream, a client gone)
gives its rows back: they leave the batch at the next step, and their places go to the next
requests. A caller blocked in another thread can do the same through a `Stop` (a flag it sets, a
deadline): its rows leave the batch, or the queue, without it iterating.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from anygpt_core.engine import loop, threads
from anygpt_core.engine.events import Done, Event, Request
from anygpt_core.errors import DeadlineError

__all__ = ["CANCELLED", "Caller", "LocalEngine", "Stop"]

logger = logging.getLogger(__name__)

#: Seconds a caller with a `Stop` waits for an event before it looks at the flag and the clock.
_POLL = 0.05


@dataclass(frozen=True)
class Stop:
    """When a caller gives up on its requests, seen by the engine without the caller iterating.

    Args:
        cancel: set from any thread (a client gone, a sibling request failed): the rows leave.
        deadline: a `time.monotonic()` after which the rows leave and iterating raises
            `DeadlineError`; `timeout` is the limit that deadline came from, for the message.
    """

    cancel: threading.Event | None = None
    deadline: float | None = None
    timeout: float | None = None

    @classmethod
    def after(cls, seconds: float, cancel: threading.Event | None = None) -> Stop:
        """A stop `seconds` from now (and when `cancel` is set)."""
        return cls(cancel=cancel, deadline=time.monotonic() + seconds, timeout=seconds)

    @property
    def cancelled(self) -> bool:
        """The flag is set."""
        return self.cancel is not None and self.cancel.is_set()

    @property
    def expired(self) -> bool:
        """The deadline has passed."""
        return self.deadline is not None and time.monotonic() > self.deadline

    def check(self) -> bool:
        """False once cancelled (the caller stops quietly); raises `DeadlineError` once expired."""
        if self.cancelled:
            return False
        if self.expired:
            limit = f" of {self.timeout:g} s" if self.timeout is not None else ""
            raise DeadlineError(f"the request took longer than its limit{limit}")
        return True


#: What `Caller.next_item` returns once the caller's `Stop` flag is set.
CANCELLED = object()


@dataclass(eq=False, kw_only=True)
class Caller:
    """One caller's event queue, and whether it gave up: stopped iterating, or its `Stop`.

    Shared by the engines: the producer skips a caller that is `gone`, the caller's iterator
    takes its items with `next_item`.
    """

    events: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False  # the caller stopped iterating
    stop: Stop = field(default_factory=Stop)

    @property
    def gone(self) -> bool:
        """The caller stopped iterating, cancelled, or ran out of time."""
        return self.cancelled or self.stop.cancelled or self.stop.expired

    def next_item(self) -> Any:  # noqa: ANN401 - what the producer queued
        """The next queued item, or `CANCELLED` once the `Stop` flag is set.

        A set flag ends the caller's events at once, even those already queued (a producer
        faster than its reader may have queued the whole answer: the caller asked for no more).
        Before a deadline, what was queued is delivered first; then `DeadlineError`. Without a
        `Stop` it simply waits.
        """
        if self.stop.cancelled:
            return CANCELLED
        try:
            return self.events.get_nowait()
        except queue.Empty:
            threads.release()  # while it waits, another thread computes
        if self.stop.cancel is None and self.stop.deadline is None:
            return self.events.get()
        while True:
            try:
                return self.events.get(timeout=_POLL)
            except queue.Empty:
                if not self.stop.check():
                    return CANCELLED


@dataclass(eq=False, kw_only=True)
class _Job(Caller):
    """One caller's requests, and how many of them are still running."""

    requests: Sequence[Request]
    open_rows: int = 0


class LocalEngine:
    """Runs the requests of every caller of one `Generator` on a worker thread, batched.

    Scheduling is per step (continuous batching): between two steps the worker admits waiting
    requests, oldest first, into the rows that are free, prefills them and lets them join the
    running rows (`loop.Batch`); a row that ends frees its place at once. Beam searches run
    whole, through `model.generate`, between steps.

    Args:
        generator: the drivers and span rules over the loaded model.
        max_batch: the most rows generated together (1: one request at a time, in order).
        gather: seconds an idle engine waits, after a request arrives, for more to start with
            it: callers that arrive together (a server's clients) share their prefill. A full
            batch starts at once; a running batch admits newcomers without waiting.
        prefill_tokens: the most prompt tokens prefilled between two steps (at least one
            request is): a burst of long prompts does not stall the running rows for long.
    """

    def __init__(
        self,
        generator: loop.Generator,
        *,
        max_batch: int = 8,
        gather: float = 0.005,
        prefill_tokens: int = 4096,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if not 0 <= gather < 10:
            raise ValueError("gather must be in [0, 10) seconds")
        if prefill_tokens < 1:
            raise ValueError("prefill_tokens must be at least 1")
        self.generator = generator
        self.max_batch = max_batch
        self.gather = gather
        self.prefill_tokens = prefill_tokens
        self._pending: list[tuple[_Job, int]] = []
        self._wake = threading.Condition()
        self._worker: threading.Thread | None = None

    def check(self, request: Request) -> None:
        """Raise `ConfigError` / `GenerationError` if `request` cannot run (before any work)."""
        self.generator.check(request)

    def submit(
        self, requests: Sequence[Request], *, stop: Stop | None = None
    ) -> Generator[tuple[int, Event], None, None]:
        """Queue `requests` and yield `(request index, event)` as they are generated.

        Raises `ConfigError` / `GenerationError` for a request that cannot run before anything is
        queued. Closing the iterator early cancels whatever of it is still running; so does
        `stop`, from any thread: once its flag is set the iterator ends, once its deadline passes
        it raises `DeadlineError`, and either way the rows leave the batch (or the queue).
        """
        for request in requests:
            self.check(request)
        job = _Job(requests=requests, open_rows=len(requests), stop=stop or Stop())
        if not requests:
            job.events.put(None)
            return self._events(job)
        with self._wake:
            self._pending.extend((job, i) for i in range(len(requests)))
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._serve, name="anygpt-engine", daemon=True
                )
                self._worker.start()
            self._wake.notify()
        return self._events(job)

    def _events(self, job: _Job) -> Generator[tuple[int, Event], None, None]:
        try:
            while True:
                item = job.next_item()
                if item is None or item is CANCELLED:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item  # one step's events of this caller
        finally:
            job.cancelled = True  # rows still running leave the batch at the next step

    def _serve(self) -> None:
        import torch

        batch: loop.Batch[tuple[_Job, int]] = loop.Batch(self.generator)
        while True:
            taken = self._take(len(batch), joinable=batch.joinable())
            beams = [(job, i) for job, i in taken if job.requests[i].num_beams > 1]
            joining = [(job, i) for job, i in taken if job.requests[i].num_beams == 1]
            with torch.inference_mode():
                if beams:  # beam searches run whole, through model.generate, between steps
                    self._run(beams)
                if joining:
                    requests = [job.requests[i] for job, i in joining]
                    self._deliver(partial(batch.admit, requests, joining), joining, batch)
                if batch:
                    self._deliver(partial(batch.step, _gone), [], batch)

    def _take(self, running: int, *, joinable: bool = True) -> list[tuple[_Job, int]]:
        """The waiting rows that join now: FIFO, up to the free rows and the prefill budget.

        With nothing running it waits for a request, then `gather` seconds for more. A running
        batch that rows cannot join (a cache `Backend.join` cannot extend) takes none.
        """
        if running and not joinable:
            return []
        with self._wake:
            if not running:
                if not self._pending:
                    threads.release()  # idle: the callers' threads compute at full speed
                while not self._pending:
                    self._wake.wait()
                until = time.monotonic() + self.gather
                while len(self._pending) < self.max_batch and time.monotonic() < until:
                    self._wake.wait(until - time.monotonic())
            waiting = [(j, i) for j, i in self._pending if not j.gone]
            taken: list[tuple[_Job, int]] = []
            tokens = 0
            for job, i in waiting:
                if running + len(taken) >= self.max_batch:
                    break
                size = job.requests[i].input_ids.numel()
                if taken and tokens + size > self.prefill_tokens:
                    break
                taken.append((job, i))
                tokens += size
            self._pending = waiting[len(taken) :]
            return taken

    def _run(self, rows: list[tuple[_Job, int]]) -> None:
        """Beam-search rows, all at once through the generator, their events delivered."""
        requests = [job.requests[i] for job, i in rows]

        def events() -> Iterator[tuple[tuple[_Job, int], Event]]:
            for row, event in self.generator.generate_batch(
                requests, cancelled=lambda row: rows[row][0].gone
            ):
                yield rows[row], event

        self._deliver(events, rows, None)

    def _deliver(
        self,
        events: Callable[[], Iterable[tuple[tuple[_Job, int], Event]]],
        rows: list[tuple[_Job, int]],
        batch: loop.Batch[tuple[_Job, int]] | None,
    ) -> None:
        """Hand each caller its events, together (one wake-up of its thread per step).

        If producing them fails, the error goes to each of `rows`; a failure while admitting
        rows to `batch` or stepping it leaves the batch in an unknown state: its rows get the
        error too, and it starts empty.
        """
        ready: dict[_Job, list[tuple[int, Event]]] = {}
        try:
            for (job, index), event in events():
                if not job.gone:
                    ready.setdefault(job, []).append((index, event))
        except BaseException as err:  # noqa: BLE001 - handed to the callers it belongs to
            logger.debug("generation failed: %s", err)
            self._hand(ready)
            failed = [*rows, *(batch.keys if batch is not None else [])]
            for job in {job for job, _ in failed}:
                job.events.put(err)
            if batch is not None:
                batch.drop(lambda key: True)
            return
        self._hand(ready)

    @staticmethod
    def _hand(ready: dict[_Job, list[tuple[int, Event]]]) -> None:
        for job, items in ready.items():
            job.events.put(items)
            job.open_rows -= sum(isinstance(event, Done) for _, event in items)
            if job.open_rows == 0:
                job.events.put(None)


def _gone(key: tuple[_Job, int]) -> bool:
    """Whether the caller of a row gave up."""
    return key[0].gone
