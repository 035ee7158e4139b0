"""Where an evaluation's answers come from: a loaded model (local or vLLM engine), or `anygpt serve`.

Each backend takes jobs (a task, its seed and decoding fields) and yields answers as they finish,
so the runner caches each one at once. Both put the same prompt in front of the model: the server
backend sends the task itself (`POST /v1/anygpt/tasks`), and the server prepares it with the same
`AnyGPT.prepare`, so greedy answers are equal in-process and over HTTP.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from anygpt_core.engine import threads
from anygpt_core.engine.batcher import Stop
from anygpt_core.errors import AnyGPTError, EngineUnavailableError, InputError, first_line
from anygpt_core.tasks import Task

if TYPE_CHECKING:
    from anygpt_core.api import AnyGPT, Prepared
    from anygpt_core.engine.events import Event

__all__ = ["Answer", "Backend", "Job", "LocalBackend", "ServerBackend"]

#: Groups of a local backend in flight at once: one generating, the next queued, the one before
#: decoding its media.
_PIPELINE = 3
#: Inputs a local backend encodes at once, in the jobs' order.
_ENCODERS = 2


@dataclass(frozen=True)
class Job:
    """One sample to answer: the task, its seed and the decoding fields applied over the defaults."""

    task: Task
    seed: int
    decoding: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """What the model answered: its text and each span's media as file bytes `(suffix, data)`."""

    text: str = ""
    media: tuple[tuple[str, bytes], ...] = ()
    prompt: str = ""
    new_tokens: int = 0
    finish_reason: str = ""
    error: str | None = None


class Backend(Protocol):
    """Answers jobs, yielding `(job index, answer)` as each finishes (in any order)."""

    @property
    def batch(self) -> int:
        """How many jobs it answers together."""
        ...

    def answers(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Answer]]:
        """Answer every job; a job that fails gets an `Answer` with its one-line `error`."""
        ...

    def describe(self) -> dict[str, Any]:
        """What answered: the model and the engine, for the report."""
        ...


class LocalBackend:
    """A model loaded in this process: its engine batches the jobs (`engine.max_batch` rows).

    With `AnyGPT.load(vllm_url=...)` the same code generates on a vLLM server.

    Args:
        gpt: the loaded model.
        model: the name the report gives it (a path or hub id; `demo` for the embedded demo).
    """

    def __init__(self, gpt: AnyGPT, *, model: str) -> None:
        self.gpt = gpt
        self.model = model

    @property
    def batch(self) -> int:
        """Rows the engine generates together."""
        return int(self.gpt.engine.max_batch)

    def describe(self) -> dict[str, Any]:
        """The model, the engine and its batch size."""
        from anygpt_core.engine.vllm import VLLMEngine

        engine = "vllm" if isinstance(self.gpt.engine, VLLMEngine) else "local"
        return {"model": self.model, "engine": engine, "max_batch": self.gpt.engine.max_batch}

    def answers(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Answer]]:
        """Answer the jobs in groups of `batch`, a pipeline of a few groups; yield each as it ends.

        The jobs' inputs are encoded in order, a few at once, and each group is generated as one
        full batch of the engine as soon as its inputs are ready, then its media are decoded; so
        the first group starts after its own inputs, not a group's worth per thread, and the
        encoding of later groups overlaps generation instead of preceding and following it. A
        job that fails (a bad input, a span that cannot be decoded) gets its error alone.
        Leaving early stops the jobs in flight.
        """
        cancel = threading.Event()
        stop = Stop(cancel=cancel)
        results: queue.SimpleQueue[tuple[int, Answer] | BaseException] = queue.SimpleQueue()
        size = self.batch
        with (
            ThreadPoolExecutor(max_workers=_ENCODERS) as encoders,
            ThreadPoolExecutor(max_workers=_PIPELINE) as groups,
        ):
            ready = [encoders.submit(self._prepare, job, stop) for job in jobs]
            for first in range(0, len(jobs), size):
                where = list(range(first, min(first + size, len(jobs))))
                groups.submit(self._group, [ready[i] for i in where], where, stop, results.put)
            try:
                for _ in jobs:
                    item = threads.take(results)  # the pipeline's threads compute meanwhile
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                cancel.set()

    def _prepare(self, job: Job, stop: Stop) -> Prepared | Answer | None:
        """The job's prompt with its inputs encoded; its error as an `Answer`; None if stopped."""
        if stop.cancelled:
            return None
        try:
            return self.gpt.prepare(job.task, seed=job.seed, **job.decoding)
        except AnyGPTError as err:
            return Answer(error=first_line(err))
        finally:
            threads.release()  # this pool thread waits next, while the engine computes

    def _group(
        self,
        ready: Sequence[Future[Prepared | Answer | None]],
        where: Sequence[int],
        stop: Stop,
        put: Callable[[tuple[int, Answer] | BaseException], None],
    ) -> None:
        from anygpt_core.api import Prepared
        from anygpt_core.engine.events import Done

        try:
            prepared: list[Prepared] = []
            rows: list[int] = []
            for future, index in zip(ready, where, strict=True):
                item = future.result()
                if item is None or stop.cancelled:
                    return
                if isinstance(item, Prepared):
                    prepared.append(item)
                    rows.append(index)
                else:
                    put((index, item))
            started = time.perf_counter()
            events: list[list[Event]] = [[] for _ in prepared]
            ended = [False] * len(prepared)
            try:
                for row, event in self.gpt.stream_many(prepared, stop=stop) if prepared else ():
                    events[row].append(event)
                    if isinstance(event, Done):
                        ended[row] = True
                        put((rows[row], self._finish(prepared[row], events[row], started)))
            except AnyGPTError as err:
                for row, done in enumerate(ended):
                    if not done:
                        put((rows[row], Answer(prompt=prepared[row].prompt, error=first_line(err))))
        except BaseException as err:  # noqa: BLE001 - handed to the caller, raised there
            put(err)
        finally:
            threads.release()  # this pool thread waits next, while the engine computes

    def _finish(self, prepared: Prepared, events: list[Event], started: float) -> Answer:
        try:
            result = self.gpt.finish(prepared, events, started=started, save=False)
            media = tuple((m.suffix, m.data()) for m in result.media)
        except AnyGPTError as err:
            return Answer(prompt=prepared.prompt, error=first_line(err))
        return Answer(
            text=result.text,
            media=media,
            prompt=result.prompt,
            new_tokens=result.new_tokens,
            finish_reason=result.finish_reason,
        )


class ServerBackend:
    """A running `anygpt serve` (any host): one HTTP request per job, `concurrency` at a time.

    The server batches concurrent requests on its engine, as it does for any client.

    Args:
        url: the server's base URL, e.g. `http://127.0.0.1:8000`.
        api_key: sent as `Authorization: Bearer` when the server was started with `--api-key`.
        concurrency: requests in flight at once.
        timeout: seconds one request may take.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 3600.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self._model: str | None = None

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:  # noqa: ANN401 - JSON
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = err.reason
            if err.code in {400, 404, 413, 422}:
                raise InputError(f"{self.url}: {err.code} {message}") from err
            raise EngineUnavailableError(f"{self.url}: {err.code} {message}") from err
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise EngineUnavailableError(
                f"{self.url}: no anygpt server answers there ({first_line(err)})"
            ) from err

    def model(self) -> str:
        """The model the server serves (asked once)."""
        if self._model is None:
            listing = self._call("GET", "/v1/models")
            try:
                self._model = str(listing["data"][0]["id"])
            except (KeyError, IndexError, TypeError) as err:
                raise EngineUnavailableError(f"{self.url}: /v1/models lists no model") from err
        return self._model

    @property
    def batch(self) -> int:
        """Requests in flight at once."""
        return self.concurrency

    def describe(self) -> dict[str, Any]:
        """The served model and the server's URL."""
        return {"model": self.model(), "engine": "server", "server": self.url}

    def answers(self, jobs: Sequence[Job]) -> Iterator[tuple[int, Answer]]:
        """Send the jobs, `concurrency` at a time; yield each answer as it arrives."""
        model = self.model()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self._answer, model, job): i for i, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _answer(self, model: str, job: Job) -> Answer:
        body: dict[str, Any] = {
            "model": model,
            "source": job.task.source,
            "target": job.task.target,
            "seed": job.seed,
            "decoding": dict(job.decoding),
        }
        try:
            if job.task.source == "text":
                body["input"] = job.task.payload
            else:
                body["input_media"] = _file_part(Path(job.task.payload))
            if job.task.condition is not None:
                body["condition_media"] = _file_part(Path(job.task.condition))
            reply = self._call("POST", "/v1/anygpt/tasks", body)
        except InputError as err:  # this sample's problem: reported, the others go on
            return Answer(error=first_line(err))
        media = tuple(
            ("." + m["format"], base64.b64decode(m["data"])) for m in reply.get("media", [])
        )
        return Answer(
            text=str(reply.get("text", "")),
            media=media,
            prompt=str(reply.get("prompt", "")),
            new_tokens=int(reply.get("new_tokens", 0)),
            finish_reason=str(reply.get("finish_reason", "")),
        )


def _file_part(path: Path) -> dict[str, str]:
    """A file as `{"data": base64, "format": suffix}`.

    Raises:
        InputError: the file cannot be read.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from err
    return {"data": base64.b64encode(data).decode("ascii"), "format": path.suffix.lstrip(".")}
