"""Generation on a vLLM server: the same interface as the in-process `LocalEngine`, over HTTP.

`VLLMEngine.submit(requests)` yields `(request index, event)` pairs like `Engine.submit`, so an
`AnyGPT` (and a server in front of it) runs unchanged on either. Each request goes to vLLM's
OpenAI-compatible `/v1/completions` as prompt token ids, streamed, with `return_token_ids`,
`skip_special_tokens: false`, the seed, and the span rules as `vllm_xargs["anygpt"]` for the
`anygpt-vllm` logits processor (`anygpt_core.engine.wire` is the wire format). The processor applies each
state's decoding config itself, so vLLM's own temperature, top-k, top-p and penalties are sent
neutral (temperature 0 where every state is greedy). The returned ids are replayed through the same
`SpanConstraint` here, which gives the loop's events (spans opened and closed, codes) and checks
that the server did obey the rules. Requests of one call run concurrently; vLLM batches them.

A server that is down, answers 5xx or drops the stream gives `EngineUnavailableError` (one line;
a server maps it to 503); a request vLLM refuses (4xx) gives `GenerationError`.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from anygpt_core.engine.batcher import CANCELLED, Caller, Stop
from anygpt_core.engine.constraint import SpanConstraint
from anygpt_core.engine.events import Done, Event, Request
from anygpt_core.engine.replay import Replay
from anygpt_core.engine.wire import encode_payload, space_layout
from anygpt_core.errors import (
    CheckpointError,
    ConfigError,
    EngineUnavailableError,
    GenerationError,
)
from anygpt_core.tokens import ROLE_TOKENS, TokenSpace

__all__ = ["ServerInfo", "VLLMEngine"]

logger = logging.getLogger(__name__)

#: The `vllm_xargs` key the `anygpt-vllm` processor reads.
PAYLOAD_KEY = "anygpt"


@dataclass(frozen=True)
class ServerInfo:
    """What `/v1/models` tells of the served model: its name and context length."""

    model: str
    max_model_len: int | None


class VLLMEngine:
    """Sends requests to a vLLM server running the `anygpt-vllm` logits processor.

    Args:
        url: the server's base URL, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is fine).
        space: the gateway's token space (the served model's tokenizer, our installed modalities).
        max_batch: the most requests this gateway keeps in flight at once (vLLM batches them).
        timeout: seconds to wait for the server to connect or send the next chunk.
    """

    def __init__(
        self, url: str, space: TokenSpace, *, max_batch: int = 64, timeout: float = 300.0
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"{url}: not an http(s) URL of a vLLM server")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/").removesuffix("/v1")
        self.space = space
        self.constraint = SpanConstraint(space)
        self.layout = space_layout(space, vocab_size=space.size)
        self.max_batch = max_batch
        self.timeout = timeout
        self._info: ServerInfo | None = None
        self._lock = threading.Lock()

    # -- the server --------------------------------------------------------------------------

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=timeout or self.timeout)

    def _unavailable(self, problem: str) -> EngineUnavailableError:
        return EngineUnavailableError(f"vLLM server at {self.url}: {problem}")

    def info(self) -> ServerInfo:
        """The served model (asked once, then remembered).

        Raises:
            EngineUnavailableError: the server is down or does not answer as vLLM does.
        """
        with self._lock:
            if self._info is None:
                self._info = self._ask_models()
            return self._info

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:  # noqa: ANN401
        """One short request: `(status, body)`."""
        connection = self._connection(timeout=min(self.timeout, 30.0))
        try:
            data = None if body is None else json.dumps(body)
            headers = {} if body is None else {"Content-Type": "application/json"}
            connection.request(method, f"{self._base}{path}", body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as err:
            raise self._unavailable(_reason(err)) from err
        finally:
            connection.close()

    def _ask_models(self) -> ServerInfo:
        status, body = self._call("GET", "/v1/models")
        if status != 200:
            raise self._unavailable(f"/v1/models answered HTTP {status}")
        try:
            first = json.loads(body)["data"][0]
            info = ServerInfo(str(first["id"]), first.get("max_model_len"))
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise self._unavailable("/v1/models lists no model; is it a vLLM server?") from err
        self._check_tokens(info.model)
        return info

    def _check_tokens(self, model: str) -> None:
        """Refuse a server whose tokenizer spells our role and span tokens differently."""
        space = self.space
        ids = [space.human_id, space.mmgpt_id, space.eoh_id, space.eos_id]
        for tokens in space.modalities.values():
            ids += [tokens.start_id, tokens.end_id, int(tokens.code_ids[-1])]
        status, body = self._call("POST", "/detokenize", {"model": model, "tokens": ids})
        if status == 404:  # an older server without the endpoint: nothing to compare
            return
        try:
            theirs = str(json.loads(body)["prompt"])
        except (ValueError, KeyError, TypeError) as err:
            raise self._unavailable(f"/detokenize answered HTTP {status}") from err
        ours = "".join(self._strings(ids))
        if theirs != ours:
            raise CheckpointError(
                f"vLLM server at {self.url} serves {model}, whose tokens {ids} read "
                f"{theirs[:60]!r}, not {ours[:60]!r}: serve the model the gateway loads"
            )

    def _strings(self, ids: Sequence[int]) -> list[str]:
        """The token strings of `ids` in the gateway's token space (role and span tokens)."""
        space = self.space
        names = dict(
            zip(
                (space.human_id, space.mmgpt_id, space.eoh_id, space.eos_id),
                ROLE_TOKENS,
                strict=True,
            )
        )
        for tokens in space.modalities.values():
            spec = tokens.spec
            names[tokens.start_id] = spec.start
            names[tokens.end_id] = spec.end
            names[int(tokens.code_ids[-1])] = spec.code_token(spec.vocab_size - 1)
        return [names[i] for i in ids]

    # -- requests ----------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise `ConfigError` / `GenerationError` if `request` cannot run on vLLM."""
        if any(
            c.num_beams != 1 for c in (request.row.text_config, *request.row.span_configs.values())
        ):
            raise ConfigError(
                f"num_beams {request.num_beams}: the vLLM engine samples token by token; "
                "beam search runs on the local engine"
            )
        self.constraint.check(request.row)

    def body(self, request: Request, model: str) -> dict[str, Any]:
        """The `/v1/completions` body of `request`."""
        row = request.row
        configs = [row.text_config, *row.span_configs.values()]
        stops = set(self.space.stop_ids)
        if row.stop_after_span:  # the first span's end is the answer's end
            stops |= {m.end_id for m in self.space.modalities.values()}
        body: dict[str, Any] = {
            "model": model,
            "prompt": [int(i) for i in request.input_ids.reshape(-1).tolist()],
            "max_tokens": row.max_new_tokens,
            "stream": True,
            "return_token_ids": True,
            "skip_special_tokens": False,
            "stop_token_ids": sorted(stops),
            # the processor applies each state's config; vLLM's own sampling stays neutral
            "temperature": 1.0 if any(c.do_sample for c in configs) else 0.0,
            "top_p": 1.0,
            "top_k": -1,
            "repetition_penalty": 1.0,
            "vllm_xargs": {PAYLOAD_KEY: encode_payload(self.layout, row)},
        }
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    def submit(
        self, requests: Sequence[Request], *, stop: Stop | None = None
    ) -> Generator[tuple[int, Event], None, None]:
        """Send `requests` and yield `(request index, event)` as their tokens stream back.

        Raises `ConfigError` / `GenerationError` for a request that cannot run before anything is
        sent, and `EngineUnavailableError` when the server is down. Closing the iterator early, or
        `stop` (as in `LocalEngine.submit`), closes the streams still open, which makes vLLM abort
        those requests.
        """
        for request in requests:
            self.check(request)
        job = Caller(stop=stop or Stop())
        if not requests:
            job.events.put(None)
            return self._events(job, 0, 0)
        model = self.info().model
        pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(requests)):
            pending.put(index)
        workers = min(self.max_batch, len(requests))
        for _ in range(workers):
            threading.Thread(
                target=self._work,
                args=(requests, model, pending, job),
                name="anygpt-vllm",
                daemon=True,
            ).start()
        return self._events(job, workers, len(requests))

    def _events(
        self, job: Caller, workers: int, requests: int
    ) -> Generator[tuple[int, Event], None, None]:
        finished = answered = 0
        try:
            while finished < max(workers, 1):
                item = job.next_item()
                if item is CANCELLED:
                    return
                if item is None:
                    finished += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                answered += isinstance(item[1], Done)
                yield item
            if answered < requests:  # the workers left early: the caller's stop was reached
                job.stop.check()
        finally:
            job.cancelled = True

    def _work(
        self,
        requests: Sequence[Request],
        model: str,
        pending: queue.SimpleQueue[int],
        job: Caller,
    ) -> None:
        try:
            while not job.gone:
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                for event in self._stream(requests[index], model, job):
                    job.events.put((index, event))
        except BaseException as err:  # noqa: BLE001 - handed to the caller it belongs to
            logger.debug("vLLM request failed: %s", err)
            job.cancelled = True
            job.events.put(err)
        finally:
            job.events.put(None)

    def _stream(self, request: Request, model: str, job: Caller) -> Iterator[Event]:
        """One request's events, from its streamed token ids."""
        replay = Replay(self.constraint, self.space, request.row)
        yield from replay.opening()
        connection = self._connection()
        try:
            try:
                connection.request(
                    "POST",
                    f"{self._base}/v1/completions",
                    body=json.dumps(self.body(request, model)),
                    headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                )
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as err:
                raise self._unavailable(_reason(err)) from err
            if response.status != 200:
                raise self._refused(response.status, response.read())
            ended = False
            for chunk in _sse(response, self._unavailable):
                if job.gone:
                    return
                if chunk is None:
                    ended = True
                    break
                if "error" in chunk:
                    raise self._refused(500, json.dumps(chunk).encode())
                for choice in chunk.get("choices", []):
                    for token in choice.get("token_ids") or []:
                        if replay.finished:
                            raise GenerationError(
                                f"vLLM server at {self.url} went on after the answer ended: "
                                "is the anygpt-vllm processor installed there?"
                            )
                        yield from replay.feed(int(token))
            if not ended:
                raise self._unavailable("the stream ended before the answer did")
        finally:
            connection.close()
        yield replay.done()

    def _refused(self, status: int, body: bytes) -> EngineUnavailableError | GenerationError:
        try:
            message = str(json.loads(body)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = body.decode("utf-8", "replace").strip()
        message = " ".join(message.split())[:300] or f"HTTP {status}"
        if status >= 500:
            return self._unavailable(f"HTTP {status}: {message}")
        return GenerationError(f"vLLM server at {self.url} refused the request: {message}")


def _reason(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is `vllm serve` running there?)"
    if isinstance(err, TimeoutError):
        return "no answer in time"
    return str(err) or type(err).__name__


def _sse(
    response: http.client.HTTPResponse, unavailable: Callable[[str], EngineUnavailableError]
) -> Iterator[dict[str, Any] | None]:
    """The JSON objects of a server-sent event stream; None for its `[DONE]`."""
    while True:
        try:
            line = response.readline()
        except (OSError, http.client.HTTPException) as err:
            raise unavailable(f"the stream broke ({_reason(err)})") from err
        if not line:
            return
        text = line.decode("utf-8", "replace").strip()
        if not text.startswith("data:"):
            continue
        data = text[5:].strip()
        if data == "[DONE]":
            yield None
            return
        try:
            yield json.loads(data)
        except ValueError as err:
            raise unavailable(f"sent a chunk that is not JSON: {data[:80]}") from err
