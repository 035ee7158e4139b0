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
import dataclasses
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from anygpt_cli.server.audio_out import PCM_RATE, from_pcm16
from anygpt_cli.server.errors import APIError
from anygpt_cli.server.realtime_answer import Answer, Response
from anygpt_cli.server.realtime_events import (
    EventError,
    Settings,
    UserItem,
    object_of,
    pcm16_of,
    updated,
)
from anygpt_cli.server.service import SPEECH, Service
from anygpt_core.chat import Conversation, Turn

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["PCM_FORMAT", "Session", "add_realtime_route"]

logger = logging.getLogger("anygpt.serve")

#: The one audio format of the wire, in and out: OpenAI's default.
PCM_FORMAT = {"type": "audio/pcm", "rate": PCM_RATE}
_KEY_PROTOCOL = "openai-insecure-api-key."
#: The shortest committed buffer (OpenAI's rule; the codec needs at least one 20 ms frame).
_MIN_SECONDS = 0.1


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
        session = Session(service, websocket)
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


class Session:
    """One WebSocket's conversation: its settings, input buffer, history and answer."""

    def __init__(self, service: Service, websocket: WebSocket) -> None:
        self.service = service
        self.websocket = websocket
        self.id = _id("sess")
        self.settings = Settings()
        self.buffer = bytearray()
        self.max_bytes = int(service.store.limits.max_audio_seconds * PCM_RATE) * 2
        self.pending: list[UserItem] = []
        self.history: list[Turn] = []
        self.last_item: str | None = None
        self.response: Response | None = None
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
                raise EventError("the event is not valid JSON", code="invalid_json") from None
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise EventError("an event is a JSON object with a string `type`", param="type")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            handler = self.handlers.get(event["type"])
            if handler is None:
                raise EventError(
                    f"unknown event type {event['type'][:64]!r}; this server reads "
                    f"{', '.join(self.handlers)}",
                    code="unknown_event",
                    param="type",
                )
            await handler(event)
        except EventError as err:
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
        session = object_of(event.get("session"), "session")
        settings = updated(self.settings, session, self.service)
        if settings.output == "audio" and not self.service.has(SPEECH):
            raise EventError(
                "output_modalities: this server has no speech modality; use ['text']",
                param="session.output_modalities",
            )
        self.settings = settings
        await self.send({"type": "session.updated", "session": self.describe()})

    async def buffer_append(self, event: dict[str, Any]) -> None:
        """`input_audio_buffer.append`: base64 PCM16 at 24 kHz."""
        data = pcm16_of(event.get("audio"), "audio")
        if len(self.buffer) + len(data) > self.max_bytes:
            seconds = self.max_bytes / 2 / PCM_RATE
            raise EventError(
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
            raise EventError(
                f"buffer too small: {seconds * 1000:.0f} ms of audio, at least "
                f"{_MIN_SECONDS * 1000:.0f} ms are needed",
                code="input_audio_buffer_commit_empty",
            )
        item = UserItem(_id("item"), audio=[from_pcm16(bytes(self.buffer))])
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
        item = object_of(event.get("item"), "item")
        if item.get("type", "message") != "message" or item.get("role") != "user":
            raise EventError(
                "item: only user messages are read (type message, role user)", param="item.role"
            )
        parts = item.get("content")
        if not isinstance(parts, list) or not parts:
            raise EventError(
                "item.content: a list of input_text or input_audio parts", param="item.content"
            )
        user = UserItem(item["id"] if isinstance(item.get("id"), str) else _id("item"))
        texts, shown = [], []
        for k, part in enumerate(parts):
            part = object_of(part, f"item.content[{k}]")
            if part.get("type") == "input_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                shown.append({"type": "input_text", "text": part["text"]})
            elif part.get("type") == "input_audio":
                user.audio.append(
                    from_pcm16(pcm16_of(part.get("audio"), f"item.content[{k}].audio"))
                )
                shown.append({"type": "input_audio", "transcript": None})
            else:
                raise EventError(
                    f"item.content[{k}]: an input_text part (with text) or an input_audio part",
                    param=f"item.content[{k}].type",
                )
        user.text = " ".join(texts)
        await self.add_item(user, shown)

    async def add_item(self, item: UserItem, content: list[dict[str, Any]]) -> None:
        """Keep a user message for the next answer; `conversation.item.created`."""
        self.pending.append(item)
        body = {"id": item.id, "object": "realtime.item", "type": "message", "role": "user"}
        created = {"type": "conversation.item.created", "previous_item_id": self.last_item}
        self.last_item = item.id
        await self.send({**created, "item": {**body, "status": "completed", "content": content}})

    async def response_create(self, event: dict[str, Any]) -> None:
        """`response.create`: answer the messages added since the last answer."""
        if self.response is not None:
            raise EventError(
                "a response is in progress: wait for response.done or send response.cancel",
                code="conversation_already_has_active_response",
            )
        if not self.pending:
            raise EventError(
                "nothing to answer: commit the input audio buffer or create a user message first",
                code="no_input",
            )
        given = event.get("response")
        settings = self.settings
        if given is not None:
            settings = updated(settings, object_of(given, "response"), self.service)
        response = Response(_id("resp"), _id("item"), settings.output)
        self.response = response
        self.responses += 1
        response.task = asyncio.ensure_future(Answer(self, response, settings).run())

    async def response_cancel(self, event: dict[str, Any]) -> None:
        """`response.cancel`: stop the answer in progress (`response.done`, status cancelled)."""
        del event
        if self.response is None:
            raise EventError("no response in progress", code="response_cancel_not_active")
        self.response.cancel.set()

    def conversation(self, settings: Settings) -> Conversation:
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
