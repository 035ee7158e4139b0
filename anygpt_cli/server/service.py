"""What the endpoints do with a loaded model: plan a request, then run it on the shared engine.

Planning (reading media, encoding them, rendering the prompt) runs on a worker thread and fails
with an `APIError` before anything is generated. Each answer (a choice) is then pumped by a thread
of its own: it iterates the engine's events, decodes each span as it closes, and hands what a
client sees to the event loop through `emit`. Setting `cancel` (a client gone, a timeout) makes the
pump close its stream, so its rows leave the engine's batch at the next step.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_cli.server.audio_out import STREAMED, AudioStream, audio_bytes
from anygpt_cli.server.errors import APIError, from_anygpt
from anygpt_cli.server.media import (
    AUDIO_FORMATS,
    MediaStore,
    decode_base64,
    parse_data_url,
    suffix_for,
)
from anygpt_cli.server.schemas import SEED_MAX, ChatRequest, Message
from anygpt_core.chat import AudioChunk, MediaReady, PreparedTurn, Reply, TextPiece
from anygpt_core.config import draw_seed
from anygpt_core.engine.batcher import Stop
from anygpt_core.engine.events import Event
from anygpt_core.errors import AnyGPTError, DeadlineError, InputError, first_line
from anygpt_core.tasks import require_utf8

if TYPE_CHECKING:
    from anygpt_core.api import AnyGPT, Media, Prepared, Result
    from anygpt_core.chat import Conversation

__all__ = [
    "AUDIO_OUT",
    "OPENAI_VOICES",
    "ChatPlan",
    "Item",
    "Service",
    "Settings",
    "timeout_error",
]

logger = logging.getLogger("anygpt.serve")

#: OpenAI's voice names: clients send one by default; unless given at start, each means a random voice.
OPENAI_VOICES = frozenset(
    [
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    ]
)
#: The modality of OpenAI's audio (`input_audio`, `modalities: ["audio"]`, /v1/audio/*), and of
#: `image_url` and /v1/images; the server maps OpenAI's API onto these installed modalities.
SPEECH, IMAGE, MUSIC = "speech", "image", "music"
#: Formats a spoken or musical answer can be returned in (OpenAI's, but for aac and raw PCM).
AUDIO_OUT = ("mp3", "opus", "wav", "flac")
#: OpenAI's raw PCM16 at 24 kHz (`audio_out.RAW`), by its name in chat completions and in
#: /v1/audio/speech; spoken answers only.
CHAT_PCM, SPEECH_PCM = "pcm16", "pcm"

#: What a pump hands the event loop: (kind, choice, payload); kinds `text`, `audio` (streamed
#: bytes, base64), `media`, `done`, `error`.
Item = tuple[str, int, Any]


@dataclass(frozen=True)
class Settings:
    """How the server was started (see `anygpt serve --help`)."""

    model_name: str
    api_key: str | None = None
    max_queue: int = 64
    request_timeout: float = 300.0
    voices: dict[str, Path] = field(default_factory=dict)
    template: str = "mmgpt"
    config: Path | None = None


@dataclass
class ChatPlan:
    """A chat request ready to generate: its turn (one per choice) and how to show answers."""

    conversation: Conversation
    turns: list[PreparedTurn]
    audio_format: str
    stream: bool = False

    @property
    def to(self) -> str:
        """The answer modality."""
        return self.turns[0].to

    @property
    def seed(self) -> int:
        """The first choice's seed (the others count on from it)."""
        return self.turns[0].seed

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens."""
        return self.turns[0].prompt_tokens


def _seed(seed: int | None, n: int = 1) -> int:
    if seed is None:
        return draw_seed(None)
    if seed + n - 1 > SEED_MAX:
        raise APIError(400, f"seed: at most {SEED_MAX - n + 1} with n={n}", param="seed")
    return seed


def _overrides(temperature: float | None, top_p: float | None, top_k: int | None) -> dict[str, Any]:
    """OpenAI's sampling fields as decoding fields: temperature 0 means greedy."""
    values: dict[str, Any] = {"top_p": top_p, "top_k": top_k}
    if temperature == 0:
        values["do_sample"] = False
    elif temperature is not None:
        values["temperature"] = temperature
    return values


class Service:
    """A loaded model, the server's settings and media store; plans and runs requests.

    Args:
        gpt: the loaded model (its engine batches every request).
        settings: what the server was started with.
        store: where request media are kept while they are encoded.
    """

    def __init__(self, gpt: AnyGPT, settings: Settings, store: MediaStore) -> None:
        self.gpt = gpt
        self.settings = settings
        self.store = store

    # ---- shared checks ---------------------------------------------------------------------

    def check_model(self, model: str | None, *, required: bool = True) -> None:
        """404 for a model this server does not serve (OpenAI's `model_not_found`)."""
        if model is None and not required:
            return
        if model != self.settings.model_name:
            raise APIError(
                404,
                f"model {model!r} is not served here; this server serves "
                f"{self.settings.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def has(self, modality: str) -> bool:
        """Whether the modality's plugin is installed and the model has its tokens."""
        return modality in self.gpt.plugins.modalities and modality in self.gpt.space.names

    def require(self, modality: str, what: str) -> None:
        """400 naming what the request asked for when the modality cannot be served."""
        if not self.has(modality):
            raise APIError(
                400,
                f"{what}: this server has no {modality} modality (plugin not installed or not "
                "in the model)",
                param=what,
                code="modality_unavailable",
            )

    def voice(self, name: str | None, what: str) -> Path | None:
        """The voice prompt file of a voice name; OpenAI's own names mean a random voice."""
        if name is None:
            return None
        if name in self.settings.voices:
            return self.settings.voices[name]
        if name in OPENAI_VOICES:
            return None
        known = ", ".join(sorted(self.settings.voices)) or "none given at start"
        raise APIError(
            400,
            f"{what}: unknown voice {name!r} (voices: {known}; OpenAI's names mean a random voice)",
            param=what,
        )

    @staticmethod
    def audio_format(value: str, what: str, *, raw: str | None = None) -> str:
        """A supported audio answer format (or `raw`, a name of raw PCM16), or 400 listing them."""
        value = value.lower()
        formats = (*AUDIO_OUT, raw) if raw else AUDIO_OUT
        if value not in formats:
            raise APIError(
                400,
                f"{what}: {value!r} is not supported; use {', '.join(formats)}",
                param=what,
            )
        return value

    @property
    def speech_rate(self) -> int:
        """The sample rate of the speech codec's waveforms."""
        return int(getattr(self.gpt.codecs.codec(SPEECH), "sample_rate", 16000))

    def speech_bytes(self, media: Media, fmt: str) -> bytes:
        """A spoken answer as a file in `fmt` (OpenAI's name; raw PCM16 resampled to 24 kHz)."""
        return audio_bytes(media, fmt, self.speech_rate)

    def media_suffix(self, modality: str, audio_format: str) -> str:
        """The file format a span is returned in: spoken answers as asked, images png."""
        if modality == SPEECH:
            return "." + audio_format
        if modality == IMAGE:
            return ".png"
        return self.gpt.codecs.extension(modality)

    # ---- chat ------------------------------------------------------------------------------

    def chat_target(self, request: ChatRequest) -> str:
        """The answer modality from `modalities` (OpenAI's `audio` is speech)."""
        names = [m.lower() for m in (request.modalities or ["text"])]
        others = sorted({SPEECH if m == "audio" else m for m in names} - {"text"})
        if len(others) > 1:
            raise APIError(
                400,
                f"modalities: one output modality besides text at a time (got {', '.join(others)})",
                param="modalities",
            )
        if not others:
            return "text"
        self.require(others[0], "modalities")
        return others[0]

    def plan_chat(self, request: ChatRequest) -> ChatPlan:
        """Encode the conversation's media and render its prompt, one request per choice."""
        to = self.chat_target(request)
        audio = request.audio
        voice = self.voice(audio.voice if audio else None, "audio.voice")
        fmt = self.audio_format(audio.format if audio else "mp3", "audio.format", raw=CHAT_PCM)
        seed = _seed(request.seed, request.n)
        conversation = self._conversation(request)
        turns = [(i, m) for i, m in enumerate(request.messages) if m.role in {"user", "assistant"}]
        if not turns or turns[-1][1].role != "user":
            raise APIError(400, "messages: the last message must be the user's", param="messages")
        self._history(conversation, turns[:-1])
        index, last = turns[-1]
        turn = self._user_message(conversation, last, f"messages[{index}]")
        target = conversation.target_config(to)
        prompt, input_ids, dropped = conversation.fit(turn, to, target.max_new_tokens)
        first = PreparedTurn(turn, to, target, seed, prompt, input_ids, dropped, voice)
        choices = [dataclasses.replace(first, seed=seed + k) for k in range(request.n)]
        return ChatPlan(conversation, choices, audio_format=fmt, stream=request.stream)

    def _conversation(self, request: ChatRequest) -> Conversation:
        """A conversation with the request's system text and sampling fields, its history empty."""
        from anygpt_core.chat import TEMPLATES, Conversation

        budget = request.max_completion_tokens or request.max_tokens
        overrides = _overrides(request.temperature, request.top_p, request.top_k)
        template = TEMPLATES[self.settings.template]
        system = [m for m in request.messages if m.role in {"system", "developer"}]
        if system:
            text = " ".join(self._text_only(m, f"messages[{i}]") for i, m in enumerate(system))
            template = dataclasses.replace(template, system=text)
        return Conversation(
            self.gpt,
            template=template,
            config=self.settings.config,
            max_new_tokens=budget,
            **overrides,
        )

    def _history(self, conversation: Conversation, turns: list[tuple[int, Message]]) -> None:
        """Add the earlier user and assistant messages, which must alternate, to the history."""
        from anygpt_core.chat import Turn

        pending: str | None = None
        for i, message in turns:
            if message.role == "user":
                if pending is not None:
                    raise APIError(
                        400,
                        f"messages[{i}]: user and assistant messages must alternate",
                        param="messages",
                    )
                pending = self._user_message(conversation, message, f"messages[{i}]")
            else:
                if pending is None:
                    raise APIError(
                        400,
                        f"messages[{i}]: an assistant message must follow a user message",
                        param="messages",
                    )
                answer = self._text_only(message, f"messages[{i}]")
                conversation.history.append(Turn(pending, answer))
                pending = None
        if pending is not None:
            raise APIError(
                400, "messages: user and assistant messages must alternate", param="messages"
            )

    @staticmethod
    def _text_only(message: Message, what: str) -> str:
        if message.content is None:
            return ""
        if isinstance(message.content, str):
            return _utf8(message.content, f"{what}.content")
        texts = []
        for k, part in enumerate(message.content):
            if part.type != "text":
                raise APIError(
                    400,
                    f"{what}: only text content is read in {message.role} messages",
                    param=what,
                )
            texts.append(_utf8(part.text, f"{what}.content[{k}].text"))
        return " ".join(texts)

    def _user_message(self, conversation: Conversation, message: Message, what: str) -> str:
        """The user turn's protocol string: its media encoded (from the cache), then its text."""
        if message.content is None or isinstance(message.content, str):
            return conversation.message(_utf8(message.content or "", f"{what}.content"))
        texts: list[str] = []
        media: list[tuple[str, bytes, str, str]] = []  # modality, bytes, suffix, what
        for k, part in enumerate(message.content):
            where = f"{what}.content[{k}]"
            if part.type == "text":
                texts.append(_utf8(part.text, f"{where}.text"))
            elif part.type == "image_url":
                self.require(IMAGE, where)
                data, mime = parse_data_url(part.image_url.url, f"{where}.image_url")
                media.append((IMAGE, data, suffix_for(mime, ".png"), f"{where}.image_url"))
            elif part.type == "input_audio":
                self.require(SPEECH, where)
                fmt = part.input_audio.format.lower()
                if fmt not in AUDIO_FORMATS:
                    raise APIError(
                        400,
                        f"{where}.input_audio.format: {fmt!r}; use one of {', '.join(AUDIO_FORMATS)}",
                        param=f"{where}.input_audio.format",
                    )
                data = decode_base64(part.input_audio.data, f"{where}.input_audio.data")
                media.append((SPEECH, data, "." + fmt, f"{where}.input_audio"))
            else:
                name = part.input_media.modality
                self.require(name, f"{where}.input_media.modality")
                suffix = self._input_suffix(
                    name, part.input_media.format, f"{where}.input_media.format"
                )
                data = decode_base64(part.input_media.data, f"{where}.input_media.data")
                media.append((name, data, suffix, f"{where}.input_media"))
        with contextlib.ExitStack() as files:
            inputs: dict[str, list[Path]] = {}
            names: dict[Path, str] = {}
            for name, data, suffix, where in media:
                kind = "image" if name == IMAGE else "audio" if suffix in _AUDIO_SUFFIXES else ""
                path = files.enter_context(self.store.file(data, suffix, kind=kind, what=where))
                inputs.setdefault(name, []).append(path)
                names[path] = where
            try:
                return conversation.message(" ".join(texts), inputs=inputs)
            except AnyGPTError as err:
                raise from_anygpt(err, names) from err

    def _input_suffix(self, modality: str, given: str | None, what: str) -> str:
        """The cache file's suffix of an `input_media` part: a format the modality reads."""
        if given is None:
            return ""
        suffix = "." + given.lower().removeprefix(".")
        reads = self.gpt.codecs.spec(modality).input_extensions
        if suffix in reads or (not reads and _FORMAT.fullmatch(suffix)):
            return suffix
        choices = ", ".join(ext.lstrip(".") for ext in reads) or "letters and digits"
        raise APIError(
            400, f"{what}: {given!r} is not a format {modality} reads ({choices})", param=what
        )

    def pump_chat(
        self,
        plan: ChatPlan,
        choice: int,
        emit: Callable[[Item], None],
        cancel: threading.Event,
    ) -> None:
        """Generate one choice: text pieces as they come, each span's media once it closes.

        A streamed spoken answer in a format that streams (pcm16, wav) is sent as its audio is
        decoded, window by window (`audio` items), not whole when its span closes.
        """
        # the engine watches both: a row queued behind others leaves on time, not when it starts
        stop = Stop.after(self.settings.request_timeout, cancel)
        spoken = plan.stream and plan.to == SPEECH and plan.audio_format in STREAMED
        turn = plan.conversation.stream(
            plan.turns[choice], save=False, stop=stop, incremental=plan.stream, stream_audio=spoken
        )
        audio = AudioStream(plan.audio_format, self.speech_rate) if spoken else None
        try:
            for item in turn:  # ends once `cancel` is set; DeadlineError after the limit
                self._emit_chat_item(item, plan, choice, emit, audio)
        except DeadlineError:
            emit(("error", choice, timeout_error(self.settings.request_timeout)))
        except AnyGPTError as err:
            emit(("error", choice, from_anygpt(err)))
        except Exception as err:
            logger.exception("generation failed")
            emit(("error", choice, APIError(500, f"internal error: {type(err).__name__}")))
        finally:
            turn.close()

    def _emit_chat_item(
        self,
        item: object,
        plan: ChatPlan,
        choice: int,
        emit: Callable[[Item], None],
        audio: AudioStream | None,
    ) -> None:
        """Hand one item of a choice's turn to the event loop (encoded here, off the loop)."""
        if isinstance(item, TextPiece):
            emit(("text", choice, item.text))
        elif isinstance(item, AudioChunk) and audio is not None and item.modality == SPEECH:
            emit(("audio", choice, _b64(audio.push(item.samples))))
        elif isinstance(item, MediaReady):
            if audio is not None and item.span.modality == SPEECH:
                tail = audio.finish()  # its chunks went out as they came
                if tail:
                    emit(("audio", choice, _b64(tail)))
            else:
                emit(("media", choice, self._media(item, plan)))
        elif isinstance(item, Reply):
            done = (_finish(item.finish_reason), item.new_tokens, item.text, item.cached_tokens)
            emit(("done", choice, done))

    def _media(self, ready: MediaReady, plan: ChatPlan) -> dict[str, Any]:
        modality = ready.span.modality
        if modality == SPEECH:
            fmt = plan.audio_format
            data = self.speech_bytes(ready.media, fmt)
        else:
            suffix = self.media_suffix(modality, plan.audio_format)
            fmt, data = suffix.lstrip("."), ready.media.data(suffix)
        return {"modality": modality, "format": fmt, "data": _b64(data)}

    # ---- one-shot tasks (speech, images, music, transcription) -------------------------------

    def prepare(
        self,
        task: Any,  # noqa: ANN401 - a core Task
        seed: int,
        *,
        names: dict[Path, str] | None = None,
        **decoding: Any,  # noqa: ANN401 - decoding fields
    ) -> Prepared:
        """`AnyGPT.prepare` with the core's errors as HTTP errors (cache files called `names`)."""
        try:
            return self.gpt.prepare(task, seed=seed, config=self.settings.config, **decoding)
        except AnyGPTError as err:
            raise from_anygpt(err, names) from err

    def run_tasks(self, prepared: Sequence[Prepared], cancel: threading.Event) -> list[Result]:
        """Generate prepared tasks together (one engine call) and decode them, in memory."""
        started = time.perf_counter()
        stop = Stop.after(self.settings.request_timeout, cancel)
        events: list[list[Event]] = [[] for _ in prepared]
        stream = None
        try:
            stream = self.gpt.stream_many(list(prepared), stop=stop)
            for index, event in stream:  # ends once `cancel` is set; DeadlineError after the limit
                events[index].append(event)
            if stop.cancelled:
                raise APIError(499, "client closed the request")
            return [
                self.gpt.finish(p, e, started=started, save=False)
                for p, e in zip(prepared, events, strict=True)
            ]
        except DeadlineError as err:
            raise timeout_error(self.settings.request_timeout) from err
        finally:
            if stream is not None:
                stream.close()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def upload(self, data: bytes, suffix: str, what: str) -> Iterator[Path]:
        """An uploaded audio file in the cache for the block, checked first."""
        with self.store.file(data, suffix, kind="audio", what=what) as path:
            yield path


_AUDIO_SUFFIXES = {"." + f for f in AUDIO_FORMATS}
#: The format of a modality that reads any file: a plain suffix, so it cannot name a folder.
_FORMAT = re.compile(r"\.[a-z0-9]{1,16}")


def _utf8(text: str, what: str) -> str:
    """`text`, or a 400 where JSON gave it a lone surrogate (half of a UTF-16 pair, unpaired)."""
    try:
        return require_utf8(text, what=what)
    except InputError as err:
        raise APIError(400, first_line(err), param=what) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _finish(reason: str) -> str:
    """OpenAI's finish_reason of the loop's: a closed target span is a normal stop."""
    return "length" if reason == "length" else "stop"


def timeout_error(seconds: float) -> APIError:
    """The 504 of a request that overstayed the server's limit."""
    return APIError(
        504, f"the request took longer than this server's limit of {seconds:g} s", code="timeout"
    )
