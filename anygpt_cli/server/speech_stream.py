"""`/v1/audio/speech` streamed: audio while the model still speaks, as SSE or as raw chunks.

`stream_format: "sse"` sends OpenAI's `speech.audio.delta` events (base64 audio) and a last
`speech.audio.done` with the token usage; `"audio"` sends the audio bytes themselves, chunked. In
the formats that stream (`pcm`: PCM16 at 24 kHz, `wav`: PCM16 at the codec's rate behind a
streaming header) each window of the span is sent once decoded (`SpanAudio`), while the model goes
on; mp3, opus and flac are encoded whole, so they come in one piece at the end, exactly the bytes
the request without `stream_format` gets.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from anygpt_cli.server.audio_out import STREAMED, AudioStream
from anygpt_cli.server.errors import APIError, from_anygpt
from anygpt_cli.server.service import SPEECH, Service, timeout_error
from anygpt_core.chat import SpanAudio
from anygpt_core.engine.batcher import Stop
from anygpt_core.engine.events import Event, TokenEvent
from anygpt_core.errors import AnyGPTError, DeadlineError

if TYPE_CHECKING:
    from collections.abc import Callable

    from anygpt_core.api import Prepared

__all__ = ["SpeechItems", "audio_chunks", "sse_events", "start_speech"]

logger = logging.getLogger("anygpt.serve")


class SpeechItems:
    """What the pump of one streamed speech request hands the event loop, and its cancel flag.

    Items: (`audio`, bytes), (`done`, usage dict), (`error`, APIError).
    """

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancel = threading.Event()


def start_speech(service: Service, prepared: Prepared, fmt: str) -> SpeechItems:
    """Start generating a prepared text-to-speech task on a thread of its own."""
    items = SpeechItems()
    loop = asyncio.get_running_loop()

    def emit(item: tuple[str, Any]) -> None:
        loop.call_soon_threadsafe(items.queue.put_nowait, item)

    threading.Thread(
        target=_pump,
        args=(service, prepared, fmt, emit, items.cancel),
        name="anygpt-speech",
        daemon=True,
    ).start()
    return items


def _pump(
    service: Service,
    prepared: Prepared,
    fmt: str,
    emit: Callable[[tuple[str, Any]], None],
    cancel: threading.Event,
) -> None:
    """Generate, decode window by window where `fmt` streams, and emit the bytes as they come."""
    gpt = service.gpt
    stop = Stop.after(service.settings.request_timeout, cancel)
    started = time.perf_counter()
    condition = prepared.task.condition
    audio = None
    if fmt in STREAMED:
        audio = SpanAudio(
            gpt,
            seed=prepared.seed,
            configs={SPEECH: prepared.target_config},
            conditions={SPEECH: condition} if condition else None,  # type: ignore[dict-item]
        )
    encoder = AudioStream(fmt, service.speech_rate)
    events: list[Event] = []
    stream = gpt.stream_many([prepared], stop=stop)
    try:
        for _, event in stream:  # ends once `cancel` is set; DeadlineError after the limit
            events.append(event)
            for chunk in audio.feed(event) if audio is not None else ():
                emit(("audio", encoder.push(chunk.samples)))
        if stop.cancelled:
            return
        if audio is not None:
            emit(("audio", encoder.finish()))
        else:
            result = gpt.finish(prepared, events, started=started, save=False)
            emit(("audio", service.speech_bytes(result.media[0], fmt) if result.media else b""))
        emit(("done", _usage(prepared, events)))
    except DeadlineError:
        emit(("error", timeout_error(service.settings.request_timeout)))
    except AnyGPTError as err:
        emit(("error", from_anygpt(err)))
    except Exception as err:
        logger.exception("speech generation failed")
        emit(("error", APIError(500, f"internal error: {type(err).__name__}")))
    finally:
        stream.close()  # type: ignore[attr-defined]
        if audio is not None:
            audio.close()


def _usage(prepared: Prepared, events: list[Event]) -> dict[str, int]:
    """OpenAI's usage of a speech answer: prompt tokens in, generated tokens out."""
    given = prepared.input_ids
    prompt = int(given.shape[-1]) if given is not None else 0
    output = sum(isinstance(e, TokenEvent) for e in events)
    return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}


async def sse_events(items: SpeechItems) -> AsyncIterator[str]:
    """OpenAI's speech SSE: `speech.audio.delta` per piece of audio, then `speech.audio.done`."""
    try:
        while True:
            kind, value = await items.queue.get()
            if kind == "audio":
                if value:
                    audio = base64.b64encode(value).decode("ascii")
                    yield _sse({"type": "speech.audio.delta", "audio": audio})
            elif kind == "done":
                yield _sse({"type": "speech.audio.done", "usage": value})
                return
            else:
                yield _sse({"type": "error", **value.body()})
                return
    finally:
        items.cancel.set()


async def audio_chunks(items: SpeechItems) -> AsyncIterator[bytes]:
    """The audio bytes as they come; an error mid-answer ends the body early (logged)."""
    try:
        while True:
            kind, value = await items.queue.get()
            if kind == "audio":
                if value:
                    yield value
            elif kind == "done":
                return
            else:
                logger.warning("streamed speech cut short: %s", value.message)
                return
    finally:
        items.cancel.set()


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"
