"""`/v1/realtime`: OpenAI's Realtime API on a WebSocket, turn by turn, spoken answers streamed.

The client fills the input audio buffer (`input_audio_buffer.append`, raw PCM16 at 24 kHz, base64)
and commits it, or adds a text message (`conversation.item.create`), then asks for an answer
(`response.create`). The answer streams as `response.output_audio.delta` (PCM16 at 24 kHz, decoded
window by window while the model goes on) with `response.output_audio_transcript.delta`, or as
`response.output_text.delta` when the session's output is text, and ends with `response.done`.
There is no voice activity detection: the client decides when a turn ends. The codec's 16 kHz is
resampled to and from the wire's 24 kHz (`audio_out.Resampler`, torchaudio's sinc resampling).

Bad events (not JSON, an unknown type, a bad field, audio that is not PCM16, a buffer over the
server's `--max-audio-seconds`) get an `error` event and the connection stays open. A client that
goes away mid-answer, and `response.cancel`, stop the generation at once: its rows leave the
engine's batch at the next step. `--api-key` applies: `Authorization: Bearer KEY`, or the
`openai-insecure-api-key.KEY` subprotocol that browsers use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from anygpt_cli.server.audio_out import PCM_RATE, AudioStream, from_pcm16
from anygpt_cli.server.errors import APIError, from_anygpt
from anygpt_cli.server.service import SPEECH, Service, timeout_error
from anygpt_core.chat import AudioChunk, Conversation, MediaReady, Reply, TextPiece, Turn
from anygpt_core.engine.batcher import Stop
from anygpt_core.errors import AnyGPTError, DeadlineError

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI

    from anygpt_core.chat import PreparedTurn

__all__ = ["PCM_FORMAT", "add_realtime_route"]

logger = logging.getLogger("anygpt.serve")

#: The one audio format of the wire, in and out: OpenAI's default.
PCM_FORMAT = {"type": "audio/pcm", "rate": PCM_RATE}
_KEY_PROTOCOL = "openai-insecure-api-key."
#: The shortest committed buffer (OpenAI's rule; the codec needs at least one 20 ms frame).
_MIN_SECONDS = 0.1
#: File headers of formats that are not raw PCM16: refused by name.
_CONTAINERS = {b"RIFF": "a wav file", b"OggS": "an ogg file", b"fLaC": "a flac file", b"ID3": "mp3"}


class _EventError(Exception):
    """A client event the session cannot take: sent back as an `error` event."""

    def __init__(
        self, message: str, *, code: str = "invalid_value", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def add_realtime_route(app: FastAPI, service: Service) -> None:
    """Add the `/v1/realtime` WebSocket."""

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        started = time.perf_counter()
        refused = _refusal(websocket, service)
        if refused is not None:
            await _refuse(websocket, refused)
            return
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
        session = _Session(service, websocket)
        try:
            await session.run()
        finally:
            client = websocket.scope.get("client") or ("-", 0)
            logger.info(
                "%s WS /v1/realtime 101 %.3fs %d responses",
                client[0],
                time.perf_counter() - started,
                session.responses,
            )


def _refusal(websocket: WebSocket, service: Service) -> APIError | None:
    """Why the handshake is refused (no valid key, another model), or None."""
    key = service.settings.api_key
    if key:
        scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
        tokens = [token.strip()] if scheme.lower() == "bearer" else []
        tokens += [
            p.removeprefix(_KEY_PROTOCOL)
            for p in websocket.scope.get("subprotocols") or []
            if p.startswith(_KEY_PROTOCOL)
        ]
        if not any(hmac.compare_digest(t.encode(), key.encode()) for t in tokens):
            return APIError(
                401,
                "a valid API key is required: send Authorization: Bearer <key> or the "
                f"{_KEY_PROTOCOL}<key> subprotocol",
                code="invalid_api_key",
            )
    model = websocket.query_params.get("model")
    try:
        service.check_model(model, required=False)
    except APIError as err:
        return err
    return None


async def _refuse(websocket: WebSocket, err: APIError) -> None:
    """Answer the handshake with the error's status and JSON body (or close, 1008)."""
    from fastapi.responses import JSONResponse

    try:
        await websocket.send_denial_response(JSONResponse(err.body(), status_code=err.status))
    except RuntimeError:  # the server cannot send a denial response
        await websocket.close(code=1008, reason=err.message[:120])


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass
class _Settings:
    """What `session.update` sets."""

    voice: str = "alloy"
    output: str = "audio"  # or "text"
    instructions: str | None = None
    max_output_tokens: int | None = None


@dataclass
class _Response:
    """One answer in progress."""

    id: str
    item_id: str
    output: str
    cancel: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[None] | None = None


@dataclass
class _UserItem:
    """A user message not answered yet: its text and its audio (float32 at 24 kHz)."""

    id: str
    text: str = ""
    audio: list[torch.Tensor] = field(default_factory=list)


class _Session:
    """One WebSocket's conversation: its settings, input buffer, history and answer."""

    def __init__(self, service: Service, websocket: WebSocket) -> None:
        self.service = service
        self.websocket = websocket
        self.id = _id("sess")
        self.settings = _Settings()
        self.buffer = bytearray()
        self.max_bytes = int(service.store.limits.max_audio_seconds * PCM_RATE) * 2
        self.pending: list[_UserItem] = []
        self.history: list[Turn] = []
        self.last_item: str | None = None
        self.response: _Response | None = None
        self.responses = 0
        self.sending = asyncio.Lock()
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "session.update": self.session_update,
            "input_audio_buffer.append": self.buffer_append,
            "input_audio_buffer.commit": self.buffer_commit,
            "input_audio_buffer.clear": self.buffer_clear,
            "conversation.item.create": self.item_create,
            "response.create": self.response_create,
            "response.cancel": self.response_cancel,
        }

    async def run(self) -> None:
        """Read client events until the client goes; then stop any answer in progress."""
        await self.send({"type": "session.created", "session": self.describe()})
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    await self.error("binary frames are not read: send JSON text events")
                    continue
                await self.handle(message["text"])
        except WebSocketDisconnect:
            pass
        finally:
            if self.response is not None:
                self.response.cancel.set()  # the engine drops its rows at the next step
                if self.response.task is not None:
                    self.response.task.cancel()

    async def handle(self, text: str) -> None:
        """Dispatch one client event; a bad one gets an `error` event."""
        event_id = None
        try:
            try:
                event = json.loads(text)
            except ValueError:
                raise _EventError("the event is not valid JSON", code="invalid_json") from None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise _EventError("an event is a JSON object with a string `type`", param="type")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            handler = self.handlers.get(event["type"])
            if handler is None:
                raise _EventError(
                    f"unknown event type {event['type'][:64]!r}; this server reads "
                    f"{', '.join(self.handlers)}",
                    code="unknown_event",
                    param="type",
                )
            await handler(event)
        except _EventError as err:
            await self.error(err.message, code=err.code, param=err.param, event_id=event_id)

    async def send(self, event: dict[str, Any]) -> None:
        """Send one server event (events from the answer's task and the reader take turns)."""
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        async with self.sending:
            await self.websocket.send_text(json.dumps({"event_id": _id("event"), **event}))

    async def error(
        self,
        message: str,
        *,
        code: str | None = "invalid_value",
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        """An `error` event; the connection stays open."""
        error = {"type": kind, "code": code, "message": message, "param": param}
        await self.send({"type": "error", "error": {**error, "event_id": event_id}})

    def describe(self) -> dict[str, Any]:
        """The session as OpenAI's `session.created` and `session.updated` describe it."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.service.settings.model_name,
            "output_modalities": [self.settings.output],
            "instructions": self.settings.instructions,
            "audio": {
                "input": {"format": PCM_FORMAT, "turn_detection": None, "transcription": None},
                "output": {"format": PCM_FORMAT, "voice": self.settings.voice, "speed": 1.0},
            },
            "max_output_tokens": self.settings.max_output_tokens or "inf",
            "tools": [],
        }

    # ---- client events -------------------------------------------------------------------

    async def session_update(self, event: dict[str, Any]) -> None:
        """`session.update`: voice, output modality, instructions, max_output_tokens."""
        session = _object(event.get("session"), "session")
        settings = _updated(self.settings, session, self.service)
        if settings.output == "audio" and not self.service.has(SPEECH):
            raise _EventError(
                "output_modalities: this server has no speech modality; use ['text']",
                param="session.output_modalities",
            )
        self.settings = settings
        await self.send({"type": "session.updated", "session": self.describe()})

    async def buffer_append(self, event: dict[str, Any]) -> None:
        """`input_audio_buffer.append`: base64 PCM16 at 24 kHz."""
        data = _pcm16(event.get("audio"), "audio")
        if len(self.buffer) + len(data) > self.max_bytes:
            seconds = self.max_bytes / 2 / PCM_RATE
            raise _EventError(
                f"audio: the input audio buffer would hold more than this server's limit of "
                f"{seconds:g} s; commit or clear it first",
                code="input_audio_buffer_too_large",
                param="audio",
            )
        self.buffer.extend(data)

    async def buffer_commit(self, event: dict[str, Any]) -> None:
        """`input_audio_buffer.commit`: the buffer becomes a user message."""
        del event
        seconds = len(self.buffer) / 2 / PCM_RATE
        if seconds < _MIN_SECONDS:
            raise _EventError(
                f"buffer too small: {seconds * 1000:.0f} ms of audio, at least "
                f"{_MIN_SECONDS * 1000:.0f} ms are needed",
                code="input_audio_buffer_commit_empty",
            )
        item = _UserItem(_id("item"), audio=[from_pcm16(bytes(self.buffer))])
        self.buffer.clear()
        previous = self.last_item
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item.id,
                "previous_item_id": previous,
            }
        )
        await self.add_item(item, [{"type": "input_audio", "transcript": None}])

    async def buffer_clear(self, event: dict[str, Any]) -> None:
        """`input_audio_buffer.clear`."""
        del event
        self.buffer.clear()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def item_create(self, event: dict[str, Any]) -> None:
        """`conversation.item.create`: a user message of `input_text` and `input_audio` parts."""
        item = _object(event.get("item"), "item")
        if item.get("type", "message") != "message" or item.get("role") != "user":
            raise _EventError(
                "item: only user messages are read (type message, role user)", param="item.role"
            )
        parts = item.get("content")
        if not isinstance(parts, list) or not parts:
            raise _EventError(
                "item.content: a list of input_text or input_audio parts", param="item.content"
            )
        user = _UserItem(item["id"] if isinstance(item.get("id"), str) else _id("item"))
        texts, shown = [], []
        for k, part in enumerate(parts):
            part = _object(part, f"item.content[{k}]")
            if part.get("type") == "input_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                shown.append({"type": "input_text", "text": part["text"]})
            elif part.get("type") == "input_audio":
                user.audio.append(from_pcm16(_pcm16(part.get("audio"), f"item.content[{k}].audio")))
                shown.append({"type": "input_audio", "transcript": None})
            else:
                raise _EventError(
                    f"item.content[{k}]: an input_text part (with text) or an input_audio part",
                    param=f"item.content[{k}].type",
                )
        user.text = " ".join(texts)
        await self.add_item(user, shown)

    async def add_item(self, item: _UserItem, content: list[dict[str, Any]]) -> None:
        """Keep a user message for the next answer; `conversation.item.created`."""
        self.pending.append(item)
        body = {"id": item.id, "object": "realtime.item", "type": "message", "role": "user"}
        created = {"type": "conversation.item.created", "previous_item_id": self.last_item}
        self.last_item = item.id
        await self.send({**created, "item": {**body, "status": "completed", "content": content}})

    async def response_create(self, event: dict[str, Any]) -> None:
        """`response.create`: answer the messages added since the last answer."""
        if self.response is not None:
            raise _EventError(
                "a response is in progress: wait for response.done or send response.cancel",
                code="conversation_already_has_active_response",
            )
        if not self.pending:
            raise _EventError(
                "nothing to answer: commit the input audio buffer or create a user message first",
                code="no_input",
            )
        given = event.get("response")
        settings = self.settings
        if given is not None:
            settings = _updated(settings, _object(given, "response"), self.service)
        response = _Response(_id("resp"), _id("item"), settings.output)
        self.response = response
        self.responses += 1
        response.task = asyncio.ensure_future(_Answer(self, response, settings).run())

    async def response_cancel(self, event: dict[str, Any]) -> None:
        """`response.cancel`: stop the answer in progress (`response.done`, status cancelled)."""
        del event
        if self.response is None:
            raise _EventError("no response in progress", code="response_cancel_not_active")
        self.response.cancel.set()

    def conversation(self, settings: _Settings) -> Conversation:
        """A conversation with this session's history, instructions and token budget."""
        from anygpt_core.chat import TEMPLATES

        template = TEMPLATES[self.service.settings.template]
        if settings.instructions:
            template = dataclasses.replace(template, system=settings.instructions)
        overrides: dict[str, Any] = {}
        if settings.max_output_tokens is not None:
            overrides["max_new_tokens"] = settings.max_output_tokens
        conversation = Conversation(
            self.service.gpt, template=template, config=self.service.settings.config, **overrides
        )
        conversation.history = list(self.history)
        return conversation


class _Answer:
    """One response, prepared on a worker thread and generated by a pump thread.

    Its events are sent from the event loop as the pump hands them over.
    """

    def __init__(self, session: _Session, response: _Response, settings: _Settings) -> None:
        self.session = session
        self.response = response
        self.settings = settings
        self.spoken = response.output == "audio"
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.text: list[str] = []
        self.reply: Reply | None = None
        self.failure: APIError | None = None
        self.prompt_tokens = 0

    async def run(self) -> None:
        """The answer's events, from `response.created` to `response.done`."""
        session = self.session
        try:
            await session.send({"type": "response.created", "response": self.body("in_progress")})
            conversation = session.conversation(self.settings)
            items = list(session.pending)
            try:
                turn = await asyncio.to_thread(self.prepare, conversation, items)
            except APIError as err:
                session.pending.clear()  # they cannot be answered: they go
                self.failure = err
            else:
                await self.generate(conversation, turn)
                if self.reply is not None:
                    session.history = conversation.history
                    session.pending = [p for p in session.pending if p not in items]
            await self.finish()
        finally:
            session.response = None

    def prepare(self, conversation: Conversation, items: list[_UserItem]) -> PreparedTurn:
        """Encode the pending messages into one user turn (on a worker thread)."""
        import torchaudio.functional as AF

        service = self.session.service
        audio = [a for item in items for a in item.audio]
        inputs: dict[str, list[torch.Tensor]] = {}
        try:
            if audio:
                service.require(SPEECH, "input_audio")
                rate = service.speech_rate
                inputs[SPEECH] = [AF.resample(a, PCM_RATE, rate) for a in audio]
            text = " ".join(item.text for item in items if item.text)
            voice = service.voice(self.settings.voice, "session.audio.output.voice")
            to = SPEECH if self.spoken else "text"
            return conversation.prepare(text, inputs=inputs, to=to, voice_prompt=voice)
        except AnyGPTError as err:
            raise from_anygpt(err) from err

    async def generate(self, conversation: Conversation, turn: PreparedTurn) -> None:
        """Run the pump and send its text and audio as they come."""
        self.prompt_tokens = turn.prompt_tokens
        loop = asyncio.get_running_loop()

        def emit(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, item)

        await self.session.send(
            {"type": "response.output_item.added", **self.where(False)}
            | {"item": self.item("in_progress")}
        )
        threading.Thread(
            target=self.pump, args=(conversation, turn, emit), name="anygpt-realtime", daemon=True
        ).start()
        delta = (
            "response.output_audio_transcript.delta"
            if self.spoken
            else ("response.output_text.delta")
        )
        while True:
            kind, value = await self.queue.get()
            if kind == "text":
                self.text.append(value)
                await self.session.send({"type": delta, **self.where(), "delta": value})
            elif kind == "audio":
                await self.session.send(
                    {"type": "response.output_audio.delta", **self.where(), "delta": value}
                )
            elif kind == "done":
                self.reply = value
            elif kind == "error":
                self.failure = value
            else:
                return

    def pump(
        self, conversation: Conversation, turn: PreparedTurn, emit: Callable[[Any], None]
    ) -> None:
        """Generate and decode (a thread of its own): text pieces, PCM16 audio, the reply."""
        service = self.session.service
        stop = Stop.after(service.settings.request_timeout, self.response.cancel)
        stream = conversation.stream(turn, save=False, stop=stop, stream_audio=self.spoken)
        audio = AudioStream("pcm16", service.speech_rate) if self.spoken else None
        streamed = False
        try:
            for item in stream:
                if isinstance(item, TextPiece):
                    emit(("text", item.text))
                elif isinstance(item, AudioChunk) and audio and item.modality == SPEECH:
                    streamed = True
                    emit(("audio", _b64(audio.push(item.samples))))
                elif isinstance(item, MediaReady) and audio and item.span.modality == SPEECH:
                    data = audio.finish() if streamed else service.speech_bytes(item.media, "pcm16")
                    streamed = False
                    if data:
                        emit(("audio", _b64(data)))
                elif isinstance(item, Reply):
                    emit(("done", item))
        except DeadlineError:
            emit(("error", timeout_error(service.settings.request_timeout)))
        except AnyGPTError as err:
            emit(("error", from_anygpt(err)))
        except Exception as err:
            logger.exception("realtime generation failed")
            emit(("error", APIError(500, f"internal error: {type(err).__name__}")))
        finally:
            stream.close()
            emit(("end", None))

    async def finish(self) -> None:
        """The `.done` events, then `response.done` with the status and usage."""
        session = self.session
        if self.failure is not None:
            err = self.failure
            await session.error(err.message, code=err.code, param=err.param, kind=err.type)
        status = (
            "completed" if self.reply is not None else "failed" if self.failure else "cancelled"
        )
        text = self.reply.text if self.reply is not None else "".join(self.text)
        if self.spoken:
            await session.send({"type": "response.output_audio.done", **self.where()})
            await session.send(
                {
                    "type": "response.output_audio_transcript.done",
                    **self.where(),
                    "transcript": text,
                }
            )
        else:
            await session.send({"type": "response.output_text.done", **self.where(), "text": text})
        item = self.item("completed" if status == "completed" else "incomplete", text)
        await session.send({"type": "response.output_item.done", **self.where(False), "item": item})
        await session.send({"type": "response.done", "response": self.body(status, [item])})

    def where(self, content: bool = True) -> dict[str, Any]:
        """The ids that place an event in the response."""
        place: dict[str, Any] = {"response_id": self.response.id, "output_index": 0}
        if content:
            place |= {"item_id": self.response.item_id, "content_index": 0}
        return place

    def item(self, status: str, text: str | None = None) -> dict[str, Any]:
        """The answer as a conversation item (audio left out, as OpenAI's `response.done`)."""
        part = (
            {"type": "output_audio", "transcript": text}
            if self.spoken
            else {"type": "output_text", "text": text}
        )
        return {
            "id": self.response.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [part] if text is not None else [],
        }

    def body(self, status: str, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The response resource."""
        body: dict[str, Any] = {
            "id": self.response.id,
            "object": "realtime.response",
            "status": status,
            "output": output or [],
            "output_modalities": [self.response.output],
            "conversation_id": self.session.id,
        }
        if self.failure is not None and status == "failed":
            error = {"type": self.failure.type, "code": self.failure.code}
            body["status_details"] = {"type": "failed", "error": error}
        if self.reply is not None:
            prompt, output_tokens = self.prompt_tokens, self.reply.new_tokens
            body["usage"] = {
                "input_tokens": prompt,
                "output_tokens": output_tokens,
                "total_tokens": prompt + output_tokens,
            }
        return body


def _object(value: Any, what: str) -> dict[str, Any]:  # noqa: ANN401 - JSON
    if not isinstance(value, dict):
        raise _EventError(f"{what}: expected an object", param=what)
    return value


def _pcm16(value: Any, what: str) -> bytes:  # noqa: ANN401 - JSON
    """The bytes of base64 PCM16; refused: not base64, empty, an odd length, a file header."""
    if not isinstance(value, str):
        raise _EventError(f"{what}: base64 PCM16 audio (a string)", param=what)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _EventError(f"{what}: not valid base64", param=what) from None
    if not data:
        raise _EventError(f"{what}: empty", param=what)
    for head, name in _CONTAINERS.items():
        if data.startswith(head):
            raise _EventError(
                f"{what}: {name}, not raw PCM16; send 16-bit little-endian mono samples at "
                f"{PCM_RATE} Hz",
                code="invalid_audio",
                param=what,
            )
    if len(data) % 2:
        raise _EventError(
            f"{what}: {len(data)} bytes is not whole 16-bit samples (PCM16)",
            code="invalid_audio",
            param=what,
        )
    return data


def _updated(settings: _Settings, given: dict[str, Any], service: Service) -> _Settings:
    """`settings` with the fields of a `session.update` (or `response.create`) applied."""
    if given.get("type", "realtime") != "realtime":
        raise _EventError("session.type: only realtime sessions", param="session.type")
    changes: dict[str, Any] = {}
    if "instructions" in given:
        if not isinstance(given["instructions"], str | None):
            raise _EventError("instructions: a string", param="session.instructions")
        changes["instructions"] = given["instructions"] or None
    if "output_modalities" in given:
        changes["output"] = _modality(given["output_modalities"])
    if given.get("turn_detection") or _at(given, "audio", "input", "turn_detection"):
        raise _EventError(
            "turn_detection: this server is turn-based; commit the buffer and send "
            "response.create (set turn_detection to null)",
            param="session.audio.input.turn_detection",
        )
    for side in ("input", "output"):
        fmt = _at(given, "audio", side, "format")
        if fmt is not None and (
            not isinstance(fmt, dict)
            or fmt.get("type") != "audio/pcm"
            or fmt.get("rate", PCM_RATE) != PCM_RATE
        ):
            raise _EventError(
                f"audio.{side}.format: only audio/pcm at {PCM_RATE} Hz",
                param=f"session.audio.{side}.format",
            )
    voice = _at(given, "audio", "output", "voice")
    if voice is not None:
        if not isinstance(voice, str):
            raise _EventError(
                "audio.output.voice: a voice name", param="session.audio.output.voice"
            )
        try:
            service.voice(voice, "audio.output.voice")
        except APIError as err:
            raise _EventError(err.message, param="session.audio.output.voice") from None
        changes["voice"] = voice
    if "max_output_tokens" in given:
        changes["max_output_tokens"] = _budget(given["max_output_tokens"])
    return dataclasses.replace(settings, **changes)


def _modality(value: Any) -> str:  # noqa: ANN401 - JSON
    if value not in (["audio"], ["text"]):
        raise _EventError(
            "output_modalities: ['audio'] (speech, with its transcript) or ['text']",
            param="session.output_modalities",
        )
    return str(value[0])


def _budget(value: Any) -> int | None:  # noqa: ANN401 - JSON
    if value == "inf" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise _EventError(
            "max_output_tokens: an integer from 1 to 4096, or 'inf'",
            param="session.max_output_tokens",
        )
    return value


def _at(given: dict[str, Any], *path: str) -> Any:  # noqa: ANN401 - JSON
    value: Any = given
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
