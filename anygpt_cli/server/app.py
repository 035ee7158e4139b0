"""The HTTP API: OpenAI's endpoints for every task, on one model shared through the engine.

`create_app(service)` builds the FastAPI application; `anygpt serve` runs it with uvicorn.
Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` (text, images, speech and
music in and out; streaming), `/v1/audio/speech`, `/v1/audio/transcriptions`,
`/v1/images/generations`, `/v1/audio/generations` (text to music, an extension) and the
`/v1/realtime` WebSocket (`anygpt_cli.server.realtime`).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from anygpt_cli.server.errors import APIError, from_anygpt
from anygpt_cli.server.media import AUDIO_FORMATS, IMAGE_SIZES, Limits, png_at
from anygpt_cli.server.realtime import add_realtime_route
from anygpt_cli.server.schemas import ChatRequest, ImageRequest, MusicRequest, SpeechRequest
from anygpt_cli.server.service import (
    IMAGE,
    MUSIC,
    SPEECH,
    SPEECH_PCM,
    ChatPlan,
    Item,
    Service,
    timeout_error,
)
from anygpt_cli.server.tasks import TaskRequest, answer_task, check_task
from anygpt_core.errors import AnyGPTError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from anygpt_core.api import Result

__all__ = ["create_app"]

logger = logging.getLogger("anygpt.serve")

#: What a request's blocking work returns.
_Answered = TypeVar("_Answered")

_MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "pcm": "audio/pcm",
}


class _Gate:
    """Pure ASGI middleware: body size, admission (429 when full), the API key, one log line."""

    def __init__(self, app: ASGIApp, service: Service, limits: Limits) -> None:
        self.app = app
        self.service = service
        self.limits = limits
        self.in_flight = 0
        self.lock = threading.Lock()
        self.latency = 1.0  # a moving average of request seconds, for Retry-After

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        admitted = False
        try:
            if scope["path"] != "/health":  # the API and its schema (/openapi.json) need the key
                self._authorize(scope)
            if scope["method"] == "POST":
                receive = await self._buffered(scope, receive)
                with self.lock:
                    if self.in_flight >= self.service.settings.max_queue:
                        retry = max(1, math.ceil(self.latency))
                        raise APIError(
                            429,
                            f"the server is busy ({self.in_flight} requests in flight); retry "
                            f"in {retry} s",
                            code="queue_full",
                            headers={"retry-after": str(retry)},
                        )
                    self.in_flight += 1
                    admitted = True
            await self.app(scope, receive, logged_send)
        except APIError as err:
            await _send_error(logged_send, err)
        finally:
            seconds = time.perf_counter() - started
            if admitted:
                with self.lock:
                    self.in_flight -= 1
                    if status[0] == 200:
                        self.latency = 0.8 * self.latency + 0.2 * seconds
            client = scope.get("client") or ("-", 0)
            logger.info(
                "%s %s %s %d %.3fs", client[0], scope["method"], scope["path"], status[0], seconds
            )

    def _authorize(self, scope: Scope) -> None:
        key = self.service.settings.api_key
        if not key:
            return
        headers = dict(scope["headers"])
        given = headers.get(b"authorization", b"")  # raw bytes: any byte may arrive
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(
            token.strip(), key.encode("utf-8")
        ):
            raise APIError(
                401,
                "a valid API key is required: send Authorization: Bearer <key>",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )

    async def _buffered(self, scope: Scope, receive: Receive) -> Receive:
        """Read the whole body (at most the limit; 413 beyond) and replay it to the app."""
        limit = self.limits.max_body_bytes
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        seconds = self.limits.read_timeout
        deadline = time.monotonic() + seconds
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise APIError(
                    408, f"the request body did not arrive within {seconds:g} s", code="timeout"
                ) from None
            if message["type"] == "http.disconnect":
                break
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise _too_large(limit)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        data = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        return replay


def _too_large(limit: int) -> APIError:
    return APIError(
        413, f"the request body is over this server's limit of {limit:,} bytes", code="too_large"
    )


async def _send_error(send: Send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _validation_message(errors: list[Any]) -> tuple[str, str | None]:
    parts = []
    param = None
    for item in errors[:3]:
        loc = [str(p) for p in item.get("loc", ()) if p not in ("body",)]
        where = ".".join(loc)
        if item.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
        else:
            param = param or where or None
            msg = str(item.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts), param


def create_app(service: Service) -> FastAPI:
    """The FastAPI application of a loaded model."""
    app = FastAPI(title="AnyGPT", docs_url=None, redoc_url=None)
    for family in (APIError, AnyGPTError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(family, _error_response)
    _add_info_routes(app, service)
    _add_chat_route(app, service)
    _add_audio_routes(app, service)
    _add_image_route(app, service)
    _add_transcription_route(app, service)
    _add_task_route(app, service)
    add_realtime_route(app, service)
    return app


async def _error_response(_: Request, err: Exception) -> JSONResponse:
    """The one exception handler: any error a request raises, in OpenAI's shape and status."""
    api = _api_error(err)
    return JSONResponse(api.body(), status_code=api.status, headers=api.headers)


def _api_error(err: Exception) -> APIError:
    """The HTTP error of each family: ours as raised, the core's by family, a crash as a 500."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, AnyGPTError):
        return from_anygpt(err)
    if isinstance(err, RequestValidationError):
        message, param = _validation_message(list(err.errors()))
        return APIError(400, message, param=param, code="invalid_value")
    if isinstance(err, HTTPException):  # no such route or method
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return APIError(err.status_code, str(err.detail), type=kind, headers=err.headers)
    logger.error("internal error: %s: %s", type(err).__name__, err, exc_info=err)
    return APIError(500, f"internal error: {type(err).__name__}", type="server_error")


def _add_info_routes(app: FastAPI, service: Service) -> None:
    gpt = service.gpt
    model_name = service.settings.model_name
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "ok",
            "model": model_name,
            "modalities": list(gpt.plugins.modalities),
        }
        cache = getattr(getattr(gpt, "backend", None), "prefix_cache", None)
        if cache is not None:  # the local engine's (`--prefix-cache-mb`); vLLM keeps its own
            body["prefix_cache"] = {
                "entries": len(cache),
                "bytes": cache.bytes,
                "budget_bytes": cache.budget,
                "reused_tokens": cache.reused,
                "computed_tokens": cache.computed,
            }
        return body

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": model_name, "object": "model", "created": created, "owned_by": "anygpt"}
            ],
        }


def _add_chat_route(app: FastAPI, service: Service) -> None:
    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> Response:
        service.check_model(body.model)
        plan = await _in_thread(service, service.plan_chat, body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _event_stream(_chat_chunks(service, plan, completion_id, include_usage))
        items = _pumps(service, plan)
        try:
            answers = await _collect(items, len(plan.turns), request)
        finally:
            items.cancel.set()
        return JSONResponse(_chat_body(service, plan, completion_id, answers))


def _add_audio_routes(app: FastAPI, service: Service) -> None:
    from anygpt_core.tasks import Task

    @app.post("/v1/audio/speech", response_model=None)
    async def speech(body: SpeechRequest, request: Request) -> Response:
        service.check_model(body.model)
        service.require(SPEECH, "model")
        fmt = service.audio_format(body.response_format, "response_format", raw=SPEECH_PCM)
        if body.speed != 1.0:
            raise APIError(400, "speed: only 1.0 is supported", param="speed")
        voice = service.voice(body.voice, "voice")
        task = Task("text", SPEECH, body.input, str(voice) if voice else None)
        if body.stream_format is not None:
            return await _speech_stream(service, task, body, fmt)
        results = await _run(service, request, [task], body.seed)
        return await _audio_response(service, results[0], fmt)

    @app.post("/v1/audio/generations", response_model=None)
    async def music(body: MusicRequest, request: Request) -> Response:
        service.check_model(body.model)
        service.require(MUSIC, "model")
        fmt = service.audio_format(body.response_format, "response_format")
        results = await _run(service, request, [Task("text", MUSIC, body.prompt)], body.seed)
        return await _audio_response(service, results[0], fmt)


async def _speech_stream(service: Service, task: Any, body: SpeechRequest, fmt: str) -> Response:  # noqa: ANN401
    """A text-to-speech answer streamed as it is decoded: SSE events or the audio's bytes."""
    from anygpt_cli.server.service import _seed
    from anygpt_cli.server.speech_stream import audio_chunks, sse_events, start_speech

    prepared = await _in_thread(service, service.prepare, task, _seed(body.seed))
    items = start_speech(service, prepared, fmt)
    if body.stream_format == "sse":
        return _event_stream(sse_events(items))
    return _event_stream(audio_chunks(items), media_type=_MEDIA_TYPES[fmt])


async def _audio_response(service: Service, result: Result, fmt: str) -> Response:
    """A one-shot task's audio answer, encoded as `fmt` (empty when it wrote no span)."""
    if not result.media:
        return Response(b"", media_type=_MEDIA_TYPES[fmt])
    media = result.media[0]
    encode = partial(service.speech_bytes, media) if media.modality == SPEECH else None
    data = await _in_thread(service, encode or media.data, fmt if encode else "." + fmt)
    return Response(data, media_type=_MEDIA_TYPES[fmt])


def _add_image_route(app: FastAPI, service: Service) -> None:
    from anygpt_core.tasks import Task

    @app.post("/v1/images/generations", response_model=None)
    async def images(body: ImageRequest, request: Request) -> Response:
        service.check_model(body.model, required=False)
        service.require(IMAGE, "model")
        if body.response_format != "b64_json":
            raise APIError(
                400,
                f"response_format: {body.response_format!r} is not supported; images come "
                "inline as b64_json",
                param="response_format",
            )
        if body.size not in (None, "auto", *IMAGE_SIZES):
            raise APIError(
                400,
                f"size: {body.size!r}; use auto or one of {', '.join(IMAGE_SIZES)}",
                param="size",
            )
        tasks = [Task("text", IMAGE, body.prompt)] * body.n
        results = await _run(service, request, tasks, body.seed)
        return JSONResponse(await _images_body(service, results, body.size))


async def _images_body(service: Service, results: list[Result], size: str | None) -> dict[str, Any]:
    """The images as base64 PNGs scaled to `size`; `drawn_size` says what the decoder drew."""
    data = []
    drawn = None
    for result in results:
        png = await _in_thread(service, result.media[0].data, ".png") if result.media else b""
        if png:
            png, drawn = await _in_thread(service, png_at, png, size)
        data.append({"b64_json": base64.b64encode(png).decode("ascii")})
    answer: dict[str, Any] = {"created": int(time.time()), "data": data}
    if drawn is not None:
        answer |= {"size": size if size not in (None, "auto") else drawn}
        answer |= {"drawn_size": drawn}
    return answer


def _add_transcription_route(app: FastAPI, service: Service) -> None:
    @app.post("/v1/audio/transcriptions", response_model=None)
    async def transcriptions(
        request: Request,
        file: UploadFile = File(...),  # noqa: B008 - FastAPI's form declarations
        model: str = Form(...),
        response_format: str = Form("json"),
        language: str | None = Form(None),
        prompt: str | None = Form(None),
        temperature: float | None = Form(None),
    ) -> Response:
        del language, prompt, temperature  # accepted as OpenAI's clients send them; not used
        service.check_model(model)
        service.require(SPEECH, "model")
        if response_format not in {"json", "text", "verbose_json"}:
            raise APIError(
                400,
                f"response_format: {response_format!r}; use json, text or verbose_json",
                param="response_format",
            )
        data = await file.read()
        if not data:
            raise APIError(400, "file: empty", param="file")
        suffix = "." + (file.filename or "").rsplit(".", 1)[-1].lower()
        if suffix[1:] not in AUDIO_FORMATS:
            suffix = ".wav"
        result = await _in_thread(service, _transcribe, service, data, suffix)
        if response_format == "text":
            return PlainTextResponse(result.text)
        if response_format == "verbose_json":
            return JSONResponse(_verbose_transcription(service, result.prompt, result.text))
        return JSONResponse({"text": result.text})


def _add_task_route(app: FastAPI, service: Service) -> None:
    @app.post("/v1/anygpt/tasks", response_model=None)
    async def run_task(body: TaskRequest, request: Request) -> JSONResponse:
        seed = check_task(service, body)
        work = partial(answer_task, service, body, seed)
        return JSONResponse(await _until_done(service, request, work))


def _transcribe(service: Service, data: bytes, suffix: str) -> Result:
    """Speech recognition of an uploaded file (on a worker thread)."""
    from anygpt_core.tasks import Task

    with service.upload(data, suffix, "file") as path:
        task = Task(SPEECH, "text", str(path))
        prepared = service.prepare(task, seed=0, names={path: "file"})
    return service.run_tasks([prepared], threading.Event())[0]


def _verbose_transcription(service: Service, prompt: str, text: str) -> dict[str, Any]:
    """OpenAI's `verbose_json` of a transcription: its duration, one segment spanning it.

    The time comes from the speech tokens the input was encoded into (the speech modality's
    frame rate, 50 a second); the model writes text with no times, so the whole text is one
    segment from 0 to the end of the input.
    """
    spec = service.gpt.codecs.spec(SPEECH)
    frames = prompt.count(f"<{spec.prefix}") // spec.num_codebooks
    duration = round(frames / spec.frame_rate, 3) if spec.frame_rate else 0.0
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text}
    return {
        "task": "transcribe",
        "language": "english",
        "duration": duration,
        "text": text,
        "segments": [segment] if text else [],
    }


def wrap(app: FastAPI, service: Service, limits: Limits) -> ASGIApp:
    """The application behind its gate (limits, admission, API key, request log)."""
    return _Gate(app, service, limits)


async def _in_thread(service: Service, func: Callable[..., Any], *args: Any) -> Any:  # noqa: ANN401
    """Run blocking work (codecs, tokenizing) off the event loop, within the request's time limit.

    The work runs on a daemon thread of its own, not the loop's default executor: a request that
    overstays is answered 504 at the limit, and a server told to stop exits without waiting for
    it (`asyncio.run` waits for the default executor's threads, however long their work).
    """
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def work() -> None:
        if not done.set_running_or_notify_cancel():
            return
        try:
            done.set_result(func(*args))
        except BaseException as err:  # noqa: BLE001 - raised again in the awaiting handler
            done.set_exception(err)

    threading.Thread(target=work, name="anygpt-request", daemon=True).start()
    limit = service.settings.request_timeout
    try:
        return await asyncio.wait_for(asyncio.wrap_future(done), limit)
    except asyncio.TimeoutError:
        raise timeout_error(limit) from None


async def _run(service: Service, request: Request, tasks: list[Any], seed: int | None) -> list[Any]:
    """Prepare and run one-shot tasks (seeded `seed`, `seed + 1`, ...), batched together."""
    from anygpt_cli.server.service import _seed

    first = _seed(seed, len(tasks))
    prepared = [
        await _in_thread(service, service.prepare, t, first + i) for i, t in enumerate(tasks)
    ]
    return list(await _until_done(service, request, partial(service.run_tasks, prepared)))


async def _until_done(
    service: Service, request: Request, work: Callable[[threading.Event], _Answered]
) -> _Answered:
    """`work(cancel)` on a worker thread; `cancel` is set once the client goes away, and at the end."""
    cancel = threading.Event()
    job = asyncio.ensure_future(_in_thread(service, work, cancel))
    try:
        while True:
            done, _ = await asyncio.wait({job}, timeout=0.25)
            if done:
                return job.result()
            if await request.is_disconnected():
                cancel.set()
    finally:
        cancel.set()


class _Items:
    """The items pumped for one request's choices, and the flag that stops the pumps."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.cancel = threading.Event()


def _pumps(service: Service, plan: ChatPlan) -> _Items:
    """Start one pump thread per choice, emitting into the event loop's queue."""
    items = _Items()
    loop = asyncio.get_running_loop()

    def emit(item: Item) -> None:
        loop.call_soon_threadsafe(items.queue.put_nowait, item)

    for choice in range(len(plan.turns)):
        threading.Thread(
            target=service.pump_chat,
            args=(plan, choice, emit, items.cancel),
            name=f"anygpt-pump-{choice}",
            daemon=True,
        ).start()
    return items


@dataclass
class _Answer:
    """One choice of a chat completion."""

    text: str = ""
    media: list[dict[str, Any]] = field(default_factory=list)
    finish: str = "stop"
    tokens: int = 0
    cached: int | None = None


async def _collect(items: _Items, n: int, request: Request) -> list[_Answer]:
    """Each choice's text, media, finish reason and tokens; cancels if the client goes away."""
    answers = [_Answer() for _ in range(n)]
    open_choices = n
    while open_choices:
        try:
            kind, choice, value = await asyncio.wait_for(items.queue.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                items.cancel.set()
                raise APIError(499, "client closed the request") from None
            continue
        if kind == "error":
            raise value
        if kind == "media":
            answers[choice].media.append(value)
        elif kind == "done":
            answer = answers[choice]
            answer.finish, answer.tokens, answer.text, answer.cached = value
            open_choices -= 1
    return answers


def _audio_of(
    plan: ChatPlan, media: list[dict[str, Any]], transcript: str
) -> dict[str, Any] | None:
    spoken = next((m for m in media if m["modality"] == SPEECH), None)
    if plan.to != SPEECH or spoken is None:
        return None
    return {
        "id": f"audio_{uuid.uuid4().hex[:24]}",
        "data": spoken["data"],
        "expires_at": int(time.time()) + 3600,
        "transcript": transcript,
    }


def _chat_body(
    service: Service, plan: ChatPlan, completion_id: str, answers: list[_Answer]
) -> dict[str, Any]:
    choices = []
    completion = 0
    for index, answer in enumerate(answers):
        completion += answer.tokens
        audio = _audio_of(plan, answer.media, answer.text)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if audio is not None:
            message["content"] = None
            message["audio"] = audio
        others = [m for m in answer.media if audio is None or m["modality"] != SPEECH]
        if others:
            message["media"] = others
        choices.append(
            {
                "index": index,
                "message": message,
                "finish_reason": answer.finish,
                "logprobs": None,
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": service.settings.model_name,
        "system_fingerprint": _fingerprint(),
        "seed": plan.seed,
        "choices": choices,
        "usage": _usage(
            plan.prompt_tokens * len(answers), completion, _total([a.cached for a in answers])
        ),
    }


def _fingerprint() -> str:
    from anygpt_core import __version__

    return f"anygpt-{__version__}"


async def _chat_chunks(
    service: Service, plan: ChatPlan, completion_id: str, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events of a streamed chat completion, ending with `[DONE]`."""
    chunks = _Chunks(service, plan, completion_id)
    items = _pumps(service, plan)
    try:
        for index in range(len(plan.turns)):
            first = {"role": "assistant", "content": None if chunks.spoken else ""}
            yield chunks.event([{"index": index, "delta": first, "finish_reason": None}])
        open_choices = len(plan.turns)
        completion = 0
        cached: list[int | None] = []
        while open_choices:
            kind, index, value = await items.queue.get()
            if kind == "error":
                err: APIError = value
                yield f"data: {json.dumps(err.body())}\n\n"
                return
            finish = None
            delta: dict[str, Any] = {}
            if kind == "done":
                finish, tokens, _, hit = value
                completion += tokens
                cached.append(hit)
                open_choices -= 1
            else:
                delta = chunks.delta(kind, index, value)
            yield chunks.event([{"index": index, "delta": delta, "finish_reason": finish}])
        if include_usage:
            usage = _usage(plan.prompt_tokens * len(plan.turns), completion, _total(cached))
            yield chunks.event([], usage=usage)
        yield "data: [DONE]\n\n"
    finally:
        items.cancel.set()


class _Chunks:
    """The events of one streamed chat completion (OpenAI's `chat.completion.chunk`)."""

    def __init__(self, service: Service, plan: ChatPlan, completion_id: str) -> None:
        self.id = completion_id
        self.created = int(time.time())
        self.model = service.settings.model_name
        self.spoken = plan.to == SPEECH
        self.audio_ids = [f"audio_{uuid.uuid4().hex[:24]}" for _ in plan.turns]

    def event(self, choices: list[dict[str, Any]], **extra: Any) -> str:  # noqa: ANN401
        """One server-sent event holding `choices` (and `extra` fields, such as `usage`)."""
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": _fingerprint(),
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def delta(self, kind: str, index: int, value: Any) -> dict[str, Any]:  # noqa: ANN401
        """The delta of a pumped `text`, `audio` or `media` item: a spoken answer streams as `audio`.

        Audio in a format that streams (pcm16, wav) comes as `audio.data` pieces while the span is
        decoded; joined, they are the whole answer's file.
        """
        if kind == "text":
            if self.spoken:
                return {"audio": {"id": self.audio_ids[index], "transcript": value}}
            return {"content": value}
        if kind == "audio":
            audio = {"id": self.audio_ids[index], "data": value}
            return {"audio": {**audio, "expires_at": int(time.time()) + 3600}}
        if self.spoken and value["modality"] == SPEECH:
            audio = {"id": self.audio_ids[index], "data": value["data"]}
            return {"audio": {**audio, "expires_at": int(time.time()) + 3600}}
        return {"media": [value]}


def _total(counts: list[int | None]) -> int | None:
    """The prompt tokens the prefix cache supplied to all choices; None if one does not say."""
    known = [c for c in counts if c is not None]
    return sum(known) if len(known) == len(counts) else None


def _usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; `cached`: prompt tokens the prefix cache supplied, where known."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _event_stream(
    events: AsyncIterator[str | bytes],
    media_type: str = "text/event-stream; charset=utf-8",
) -> Any:  # noqa: ANN401 - a starlette Response
    """A streamed response (server-sent events by default), stopped once the client goes away."""
    from starlette.responses import Response

    class EventStream(Response):
        def __init__(self) -> None:
            self.background = None
            self.status_code = 200

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await _stream(events, receive, send, media_type)

    return EventStream()


async def _stream(
    events: AsyncIterator[str | bytes],
    receive: Receive,
    send: Send,
    media_type: str,
) -> None:
    """Send `events` as they come (chunked); a client that goes away ends (and closes) them."""
    import anyio

    headers = [
        (b"content-type", media_type.encode()),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            async for event in events:
                body = event.encode() if isinstance(event, str) else event
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            group.cancel_scope.cancel()
