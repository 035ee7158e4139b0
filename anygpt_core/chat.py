"""Multi-turn chat: interleaved multimodal turns in a chat template, with a history that fits the context.

```python
from anygpt_core.api import AnyGPT
from anygpt_core.chat import Conversation
chat = Conversation(AnyGPT.load())
reply = chat.send("Draw me a beach", to="image", seed=0)
reply.text, reply.files, chat.history
```

A user turn is built with the reference's `interleaved` rule (REFERENCE.md §2): each span and a
space, modalities in the `turn_rank` order their specs declare, then the text; a modality with a
`turn_template` (speech: the `Speech-Instruction` task prompt) wraps the whole when present. The history
holds exactly what the model said, text and spans as protocol strings, never the prompt's echo
(REFERENCE.md §9.5-9.7).

`Conversation.stream` yields a turn as it is made; with `stream_audio=True` a spoken answer also
comes in `AudioChunk`s, decoded window by window beside generation (`SpanAudio`,
docs/streaming.md).
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.config import DecodingConfig, draw_seed, load_decoding_config
from anygpt_core.engine.events import (
    Done,
    Event,
    Request,
    SpanClosed,
    SpanOpened,
    TokenEvent,
    spans_json,
)
from anygpt_core.errors import GenerationError, InputError
from anygpt_core.files import check_input_file
from anygpt_core.prompts import ANYGPT_CHAT, MMGPT_CHAT, ChatTemplate
from anygpt_core.protocol import codes_to_string
from anygpt_core.tokenization import longest_token

if TYPE_CHECKING:
    import torch

    from anygpt_core.api import AnyGPT, Media
    from anygpt_core.engine.batcher import Stop
    from anygpt_core.spec import ModalitySpec
    from anygpt_core.tokens import TokenSpace

__all__ = [
    "CHAT_TEXT_DECODING",
    "TEMPLATES",
    "VOICE",
    "AudioChunk",
    "Conversation",
    "MediaReady",
    "PreparedTurn",
    "Reply",
    "SpanAudio",
    "TextPiece",
    "TextStream",
    "Turn",
    "TurnEvent",
    "user_message",
]

#: Text answers in chat: the text default (top-k 50 sampling, one beam, streamed) with the seed
#: chat's budget of 500 new tokens (its generate_config.json). Its 5 sampled beams are opt-in
#: (`num_beams=5`): beams cannot stream, and they answer in text only, while a one-beam answer may
#: open a modality span of its own.
CHAT_TEXT_DECODING = DecodingConfig(
    do_sample=True, temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=500, min_new_tokens=0
)

#: Chat templates by `--chat-template` name.
TEMPLATES: dict[str, ChatTemplate] = {"mmgpt": MMGPT_CHAT, "anygpt": ANYGPT_CHAT}
#: The `ModalitySpec.condition` that a chat's voice prompt conditions.
VOICE = "voice"
_INS, _RES = "<-Ins->", "<-Res->"

Source = str | Path | Any
Sources = Source | Sequence[Source] | None


@dataclass(frozen=True)
class Turn:
    """One exchange in the history: the user's message and the model's answer, as the prompt holds them."""

    user: str
    assistant: str


@dataclass
class Reply:
    """What one turn produced.

    Attributes:
        text: the answer's text, spans left out.
        message: the answer as stored in the history (text and spans as protocol strings).
        files: media written for the answer's spans, in order.
        spans: the spans the model wrote.
        prompt: the exact prompt the model continued.
        to: the answer modality asked for.
        finish_reason: `stop` (end of turn), `length` (max_new_tokens spent; the turn is closed).
        dropped: how many of the oldest turns were cut so the prompt fits the context.
    """

    text: str
    message: str
    prompt: str
    to: str
    files: list[Path] = field(default_factory=list)
    spans: list[SpanClosed] = field(default_factory=list)
    finish_reason: str = "stop"
    new_tokens: int = 0
    seconds: float = 0.0
    seed: int | None = None
    dropped: int = 0

    @property
    def transcript(self) -> str | None:
        """The model's transcription of a spoken instruction (after `<-Ins->`), if it wrote one."""
        if _INS not in self.text:
            return None
        return self.text.split(_INS, 1)[1].split(_RES, 1)[0].strip()

    @property
    def answer(self) -> str:
        """The answer's text after `<-Res->` when the model used that convention, else the text."""
        return self.text.split(_RES, 1)[1].strip() if _RES in self.text else self.text

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (what `anygpt chat --json` prints per turn)."""
        return {
            "to": self.to,
            "text": self.text,
            "message": self.message,
            "transcript": self.transcript,
            "files": [str(f) for f in self.files],
            "spans": spans_json(self.spans),
            "prompt": self.prompt,
            "new_tokens": self.new_tokens,
            "finish_reason": self.finish_reason,
            "dropped_turns": self.dropped,
            "seconds": round(self.seconds, 3),
            "seed": self.seed,
        }


@dataclass(frozen=True)
class TextPiece:
    """New text of the answer, as it is generated (spans left out)."""

    text: str


@dataclass(frozen=True)
class MediaReady:
    """A span of the answer decoded, as soon as it closed (the model goes on meanwhile).

    Attributes:
        span: the span the model wrote.
        media: its decoded media, in memory.
        file: where it was written (None when the turn is streamed with `save=False`).
    """

    span: SpanClosed
    media: Media
    file: Path | None = None


@dataclass(frozen=True)
class AudioChunk:
    """The next samples of a span's audio, decoded while the model still writes the span.

    The chunks of a span, in `index` order, are its whole waveform: each starts where the one
    before it ended (`offset`).

    Attributes:
        modality: the span's modality (speech).
        samples: float32 [n] at `sample_rate`.
        sample_rate: samples per second (the codec's: 16000 for speech).
        span: which span of the answer (0 for the first).
        index: the chunk's number in its span (0 for the first).
        offset: where `samples` start in the span's waveform, in samples.
    """

    modality: str
    samples: torch.Tensor
    sample_rate: int
    span: int
    index: int
    offset: int

    @property
    def seconds(self) -> float:
        """Where the chunk ends in the span's audio, in seconds."""
        return (self.offset + int(self.samples.numel())) / self.sample_rate


#: What `Conversation.stream` yields: the engine's events, text pieces, audio chunks (with
#: `stream_audio`), decoded spans, and last the `Reply`.
TurnEvent = (
    TokenEvent | SpanOpened | SpanClosed | Done | TextPiece | AudioChunk | MediaReady | Reply
)


@dataclass(frozen=True)
class PreparedTurn:
    """A user turn ready to generate: its attachments encoded, its prompt rendered and fitted.

    Attributes:
        message: the user turn as the history will hold it.
        to: the answer modality.
        target: the answer's decoding config.
        seed: seeds sampling and the decoders.
        prompt: the exact prompt the model continues.
        input_ids: its ids, int64 [1, T].
        dropped: how many of the oldest turns were cut so the prompt fits the context.
        voice: the voice prompt of spoken answers, if any.
        name: the text output file names are made of.
    """

    message: str
    to: str
    target: DecodingConfig
    seed: int
    prompt: str
    input_ids: Any
    dropped: int
    voice: Path | None = None
    name: str = ""

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens."""
        return int(self.input_ids.shape[-1])


def user_message(
    text: str, spans: Mapping[str, Sequence[str]], specs: Mapping[str, ModalitySpec]
) -> str:
    """A user turn by the reference's `interleaved` rule.

    Args:
        text: the typed instruction (may be empty).
        spans: protocol strings per modality.
        specs: the spec of each modality in `spans`.

    Returns:
        The spans, each followed by a space, modalities by their `turn_rank` (then name), then the
        text, stripped; wrapped in the `turn_template` of each modality present that has one.
    """
    order = sorted((name for name in spans if spans[name]), key=lambda n: (specs[n].turn_rank, n))
    message = "".join(span + " " for name in order for span in spans[name])
    message = (message + text).strip()
    for name in order:
        template = specs[name].turn_template
        if template is not None:
            # stripped first: with no text, the reference's `{speech}  Please` (two spaces)
            # becomes `{speech} Please`, the Speech-Instruction form the chat model was tuned on
            message = template.replace("{turn}", message)
    return message


class TextStream:
    """An answer's printable text, decoded incrementally from the loop's events.

    Text tokens are decoded as a run, so characters spread over byte tokens and word-initial spaces
    come out right; `feed` returns only what is new and complete. Spans end a run and are kept as
    protocol strings. With `stop` (a template's end-of-turn string that is not a stop token), text
    that may begin it is held back and `stopped` turns True once the answer ends with it.

    Args:
        tokenizer: the model's tokenizer.
        space: the model's token space.
        stop: an end-of-turn string to watch for, or None.
        incremental: decode as tokens come (`feed` returns new text); with False and no `stop`,
            text is decoded once, when `text` or `message` is read (no per-token decoding).
    """

    def __init__(
        self,
        tokenizer: Any,  # noqa: ANN401 - a transformers tokenizer
        space: TokenSpace,
        *,
        stop: str | None = None,
        incremental: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.space = space
        self.stop = stop or None
        self.incremental = incremental or self.stop is not None
        self.stopped = False
        self.parts: list[tuple[bool, str]] = []  # (is_span, text)
        self.run: list[int] = []
        self.context: int | None = None  # id decoded before the run, so its leading space survives
        self.shown = ""
        self.tokens = 0

    def feed(self, event: Event) -> str:
        """Take one event; return the text to show now (often empty)."""
        if isinstance(event, TokenEvent):
            self.tokens += 1
            token = event.token_id
            if event.modality is not None or token in self.space.stop_ids:
                return ""
            if token in self.space.start_ids:
                return ""
            self.run.append(token)
            return self._advance() if self.incremental else ""
        if isinstance(event, SpanOpened):
            self._end_run()
        elif isinstance(event, SpanClosed):
            tokens = self.space.require(event.modality)
            self.parts.append((True, codes_to_string(tokens.spec, event.codes)))
            self.context = tokens.end_id
        return ""

    def _decode(self) -> str:
        if self.context is None:
            return str(self.tokenizer.decode(self.run, skip_special_tokens=True))
        before = str(self.tokenizer.decode([self.context], skip_special_tokens=True))
        text = str(self.tokenizer.decode([self.context, *self.run], skip_special_tokens=True))
        if text.startswith(before):
            return text[len(before) :]
        return str(self.tokenizer.decode(self.run, skip_special_tokens=True))

    def _advance(self) -> str:
        text = self._decode()
        hold = 0
        if self.stop is not None:
            if text.endswith(self.stop):
                self.stopped = True
                text = text[: -len(self.stop)]
            else:
                hold = next(
                    (k for k in range(len(self.stop) - 1, 0, -1) if text.endswith(self.stop[:k])), 0
                )
        if text.endswith("\ufffd") and not self.stopped:
            return ""  # a character still incomplete
        visible = text[: len(text) - hold]
        common = 0
        while common < min(len(visible), len(self.shown)) and visible[common] == self.shown[common]:
            common += 1
        delta = visible[common:]
        self.shown = visible
        return delta

    def _end_run(self) -> None:
        if self.run:
            text = self._decode()
            if self.stop is not None and text.endswith(self.stop):
                text = text[: -len(self.stop)]
            self.parts.append((False, text))
        self.run, self.shown = [], ""

    @property
    def message(self) -> str:
        """The answer so far as the history stores it: text and spans as protocol strings."""
        self._end_run()
        return "".join(text for _, text in self.parts).strip()

    @property
    def text(self) -> str:
        """The answer's text so far, spans left out."""
        self._end_run()
        return re.sub(r"\s{2,}", " ", " ".join(t.strip() for s, t in self.parts if not s)).strip()


class _Cancelled(Exception):
    """Raised into a span's decoder when its turn is abandoned, so no window is decoded in vain."""


class _SpanDecoder:
    """One span's codes decoded on a thread of its own, chunk by chunk, as they arrive.

    The thread holds the codec set's lock while the codec computes and lets it go while it waits
    for the model's next code, so other requests' encodes and decodes take turns with it.

    Args:
        chunks: the codec's `decode_stream` with its options bound: codes (ints) -> waveforms.
        lock: the codec set's lock.
    """

    def __init__(
        self, chunks: Callable[[Iterable[int]], Iterator[torch.Tensor]], lock: threading.RLock
    ) -> None:
        self._codes: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._out: queue.SimpleQueue[torch.Tensor | BaseException | None] = queue.SimpleQueue()
        self._lock = lock
        self._cancelled = threading.Event()
        self.finished = False
        self.pieces: list[torch.Tensor] = []
        self._thread = threading.Thread(
            target=self._run, args=(chunks,), name="anygpt-audio", daemon=True
        )
        self._thread.start()

    def put(self, code: int) -> None:
        """One more code of the span."""
        self._codes.put(code)

    def end(self) -> None:
        """The span closed: its last, shorter window is decoded."""
        self._codes.put(None)

    def cancel(self) -> None:
        """Stop decoding: the turn was abandoned."""
        self._cancelled.set()
        self._codes.put(None)

    def _arriving(self) -> Iterator[int]:
        while True:
            try:
                code = self._codes.get_nowait()
            except queue.Empty:
                self._lock.release()  # held only while the codec computes
                try:
                    code = self._codes.get()
                finally:
                    self._lock.acquire()
            if self._cancelled.is_set():
                raise _Cancelled
            if code is None:
                return
            yield code

    def _run(self, chunks: Callable[[Iterable[int]], Iterator[torch.Tensor]]) -> None:
        try:
            with self._lock:
                for chunk in chunks(self._arriving()):
                    self._out.put(chunk)
        except _Cancelled:
            pass
        except BaseException as err:  # noqa: BLE001 - raised again in the turn's thread
            self._out.put(err)
        finally:
            self._out.put(None)

    def take(self, *, wait: bool) -> Iterator[torch.Tensor]:
        """The chunks decoded so far; with `wait`, every chunk until the span's last.

        Raises:
            AnyGPTError: the codec's error (a bad code, a weight load).
        """
        while not self.finished:
            try:
                item = self._out.get() if wait else self._out.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self.finished = True
            elif isinstance(item, BaseException):
                self.finished = True
                raise item
            else:
                self.pieces.append(item)
                yield item


class SpanAudio:
    """An answer's spans turned into audio while they are generated, a window at a time.

    Feed it the engine's events in order. A span whose codec streams (it has `decode_stream`,
    one codebook, and the codecs are not offloaded) is decoded on a thread of its own as its
    codes arrive, so generation never waits for it; `feed` returns the chunks ready by then, and
    at the span's end waits for its last ones. Other spans give no chunks: they are decoded whole
    when they close (`MediaReady`), as without streaming.

    Usable on any event stream, a task's (`AnyGPT.stream`) as well as a turn's:

    ```python
    audio = SpanAudio(gpt, seed=0)
    for event in gpt.stream(prepared):
        for chunk in audio.feed(event):
            player.write(chunk.samples.numpy())
    ```

    Args:
        gpt: the loaded model.
        seed: seeds the decoders, as `AnyGPT.decode_spans`.
        configs: the decoding config of a modality (the answer's); others use their default.
        conditions: a condition file per modality (a voice prompt).
    """

    def __init__(
        self,
        gpt: AnyGPT,
        *,
        seed: int | None,
        configs: Mapping[str, DecodingConfig] | None = None,
        conditions: Mapping[str, Path] | None = None,
    ) -> None:
        self.gpt = gpt
        self.seed = seed
        self.configs = dict(configs or {})
        self.conditions = dict(conditions or {})
        self.spans = 0  # spans opened so far
        self._open: _SpanDecoder | None = None
        self._rate = 0
        self._modality = ""
        self._offset = 0
        self._index = 0
        self.waveform: torch.Tensor | None = None

    def streams(self, modality: str) -> bool:
        """Whether spans of `modality` are decoded as they are generated."""
        codecs = self.gpt.codecs
        if codecs.offload or codecs.spec(modality).num_codebooks != 1:
            return False
        codec = codecs.codec(modality)
        return callable(getattr(codec, "decode_stream", None)) and bool(
            getattr(codec, "sample_rate", None)
        )

    def feed(self, event: Event) -> Iterator[AudioChunk]:
        """Take the next engine event; yield the chunks decoded by now.

        At a `SpanClosed` of a streamed span, waits for its last chunks; `waveform` is then the
        whole span's audio (their concatenation), else None.

        Raises:
            AnyGPTError: the codec's error for a streamed span (a bad code, a weight load).
        """
        if isinstance(event, SpanOpened):
            self._start(event.modality)
        elif isinstance(event, TokenEvent) and self._open is not None:
            code = int(self.gpt.space.id_to_code[event.token_id])
            if event.modality == self._modality and code >= 0:
                self._open.put(code)
        elif isinstance(event, SpanClosed):
            self.waveform = None
            if self._open is not None:
                self._open.end()
                yield from self._chunks(self._open, wait=True)
                import torch

                self.waveform = torch.cat(self._open.pieces) if self._open.pieces else None
                self._open = None
            return
        yield from self.ready()

    def ready(self) -> Iterator[AudioChunk]:
        """The chunks of the open span decoded since the last `feed` or `ready`, without waiting.

        For a caller that polls between events (generation slower than decoding, a UI timer).
        """
        if self._open is not None:
            yield from self._chunks(self._open, wait=False)

    def close(self) -> None:
        """Stop decoding an open span (the answer was abandoned)."""
        if self._open is not None:
            self._open.cancel()
            self._open = None

    def _start(self, modality: str) -> None:
        self.close()
        self.spans += 1
        if not self.streams(modality):
            return
        codecs = self.gpt.codecs
        codec: Any = codecs.codec(modality)
        spec = codecs.spec(modality)
        options = {
            "condition": self.conditions.get(modality),
            "seed": self.seed,
            "config": self.configs.get(modality, spec.decoding),
        }
        self._modality, self._rate = modality, int(codec.sample_rate)
        self._offset = self._index = 0
        self._open = _SpanDecoder(
            lambda codes: codec.decode_stream(codes, **options),
            codecs._lock,  # the codec set's: its calls take turns
        )

    def _chunks(self, decoder: _SpanDecoder, *, wait: bool) -> Iterator[AudioChunk]:
        for samples in decoder.take(wait=wait):
            yield AudioChunk(
                self._modality, samples, self._rate, self.spans - 1, self._index, self._offset
            )
            self._index += 1
            self._offset += int(samples.numel())


def _as_list(value: Sources) -> list[Source]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


class Conversation:
    """A conversation with a chat model: history, template, truncation and media files.

    Args:
        gpt: the loaded model.
        template: a `ChatTemplate` or a name in `TEMPLATES` (`mmgpt`, the reference chat tool's
            default, or `anygpt`, the SFT template).
        output_dir: where media answers are written (default: `gpt.output_dir`).
        config: a decoding config JSON file applied to each turn's answer modality.
        context_length: positions the model holds (default: its `max_position_embeddings`).
        overrides: decoding fields (e.g. `max_new_tokens`, `temperature`) applied last.
    """

    def __init__(
        self,
        gpt: AnyGPT,
        *,
        template: ChatTemplate | str = MMGPT_CHAT,
        output_dir: Path | str | None = None,
        config: Path | None = None,
        context_length: int | None = None,
        **overrides: Any,  # noqa: ANN401 - DecodingConfig fields
    ) -> None:
        if isinstance(template, str):
            if template not in TEMPLATES:
                raise InputError(
                    f"chat template {template!r}: choose one of {', '.join(TEMPLATES)}"
                )
            template = TEMPLATES[template]
        self.gpt = gpt
        self.template = template
        self.output_dir = Path(output_dir) if output_dir is not None else gpt.output_dir
        self.config = Path(config) if config is not None else None
        self.overrides = overrides
        if context_length is None:
            config = getattr(gpt.model, "config", None)  # None on a vLLM engine (no weights here)
            context_length = getattr(config, "max_position_embeddings", None)
        self.context_length: int | None = context_length
        self.history: list[Turn] = []

    def clear(self) -> None:
        """Forget every turn (the system line stays)."""
        self.history = []

    def render(self, turns: Sequence[Turn] | None = None, message: str | None = None) -> str:
        """The template applied to `turns` (default: the history), then `message` as the next user turn.

        An empty answer still closes its turn (`[MMGPT]: <eos>`), where FastChat's empty-message
        rule would leave `[MMGPT]:` open (`ChatTemplate.render`'s `keep_empty`).
        """
        done = list(self.history if turns is None else turns)
        pairs = [pair for t in done for pair in (("user", t.user), ("bot", t.assistant))]
        if message is not None:
            pairs.append(("user", message))
        return self.template.render(pairs, keep_empty=True)

    def target_config(self, to: str) -> DecodingConfig:
        """The decoding config of an answer in modality `to` (its default, the config file, overrides).

        Beams (`num_beams`, from the file or the overrides) apply to text answers only.
        """
        from anygpt_core.api import text_answers_only

        config = CHAT_TEXT_DECODING if to == "text" else self.gpt.config_for(to)
        if self.config is not None:
            fields = self.gpt.plugins.decoding_fields()
            config = load_decoding_config(self.config, base=config, other_fields=fields)
        return text_answers_only(config.merged(**self.overrides), to)

    def message(
        self,
        text: str | None = None,
        *,
        inputs: Mapping[str, Sources] | None = None,
    ) -> str:
        """Encode the attachments and build the user turn (`user_message`).

        Raises:
            InputError: nothing to send, or a missing or unreadable file.
            PluginError: an attachment whose modality is not installed or not in the model.
        """
        spans: dict[str, list[str]] = {}
        for name, sources in (inputs or {}).items():
            for source in _as_list(sources):
                self.gpt.codecs.spec(name)
                self.gpt.space.require(name)
                spans.setdefault(name, []).append(self.gpt.codecs.to_string(name, source))
        specs = {name: self.gpt.codecs.spec(name) for name in spans}
        message = user_message((text or "").strip(), spans, specs)
        if not message:
            raise InputError("empty message: type some text or attach a file")
        return message

    def prepare(
        self,
        text: str | None = None,
        *,
        voice_prompt: Path | str | None = None,
        inputs: Mapping[str, Sources] | None = None,
        to: str = "text",
        seed: int | None = None,
        **attachments: Sources,
    ) -> PreparedTurn:
        """Encode a user turn's attachments and fit its prompt, without generating.

        Arguments as `send`'s. The history is not changed.

        Raises:
            InputError, PluginError, ConfigError: the turn cannot be sent.
        """
        to = to.strip().lower() or "text"
        if to != "text":
            self.gpt.codecs.spec(to)
            self.gpt.space.require(to)
        voice = None
        if voice_prompt is not None:  # a missing, directory or unreadable one says which
            voice = check_input_file(voice_prompt, what="voice prompt")
        given: dict[str, Sources] = dict(attachments)
        for name, sources in (inputs or {}).items():
            given[name] = _as_list(given.get(name)) + _as_list(sources)
        message = self.message(text, inputs=given)
        target = self.target_config(to)
        seed = draw_seed(seed)
        prompt, input_ids, dropped = self.fit(message, to, target.max_new_tokens)
        return PreparedTurn(
            message, to, target, seed, prompt, input_ids, dropped, voice, name=text or ""
        )

    def stream(
        self,
        text: str | PreparedTurn | None = None,
        *,
        save: bool = True,
        stop: Stop | None = None,
        incremental: bool = True,
        stream_audio: bool = False,
        **kwargs: Any,  # noqa: ANN401 - `prepare`'s arguments
    ) -> Generator[TurnEvent, None, None]:
        """Send one user turn, yielding its answer as it is made; the last item is the `Reply`.

        Yields the engine's events (`TokenEvent`, `SpanOpened`, `SpanClosed`, `Done`), a
        `TextPiece` for each new piece of text, with `stream_audio` an `AudioChunk` for each
        piece of a span's audio as it is decoded, a `MediaReady` for each span once it is decoded
        (decoding runs here while the engine goes on generating), and last the `Reply`, after
        which the history holds the turn.

        Args:
            text: the typed instruction, or a turn from `prepare` (then no other arguments of
                `prepare`).
            save: write each span's media to a new file in `output_dir`; without it, they stay
                in memory (`MediaReady.media`).
            stop: the engine's stop (a cancel flag, a deadline): once set, the stream ends
                without a reply and the history is unchanged; past its deadline,
                `DeadlineError`.
            incremental: decode text as tokens come (without it, and with no end string to
                watch for, `TextPiece`s are not yielded: the reply still has the text).
            stream_audio: decode the spans whose codec streams (speech) in windows while they
                are generated (`SpanAudio`), yielding `AudioChunk`s; their `MediaReady` then
                holds the chunks joined, not a second decode. Other spans are decoded whole.
            kwargs: `prepare`'s arguments (voice_prompt, inputs, to, seed, attachments).

        Raises:
            InputError, PluginError, ConfigError, GenerationError, DeadlineError: the turn is not
            added; the history is unchanged. So it is when the iterator is closed before its end
            (a stop string, Ctrl-C).
        """
        started = time.perf_counter()
        turn = text if isinstance(text, PreparedTurn) else self.prepare(text, **kwargs)
        stream = self.text_stream(incremental=incremental)
        spans: list[SpanClosed] = []
        media: list[MediaReady] = []
        reason: str | None = None
        request = self.request(turn.input_ids, turn.to, turn.target, turn.seed)
        audio = self.span_audio(turn) if stream_audio else None
        events = self.gpt.engine.submit([request], stop=stop)
        try:
            for _, event in events:
                yield event
                piece = stream.feed(event)
                if piece:
                    yield TextPiece(piece)
                if audio is not None:
                    yield from audio.feed(event)  # a span's end waits for its last chunks
                if isinstance(event, SpanClosed):
                    spans.append(event)
                    whole = audio.waveform if audio is not None else None
                    media.append(self._decode(event, turn, save=save, waveform=whole))
                    yield media[-1]
                elif isinstance(event, Done):
                    reason = event.reason
                if stream.stopped:
                    reason = "stop"
                    break
        finally:
            events.close()  # an early end (a stop string, Ctrl-C) cancels the rest of the reply
            if audio is not None:
                audio.close()
        if reason is None:  # stopped by `stop`: no answer
            return
        reply = Reply(
            text=stream.text,
            message=stream.message,
            prompt=turn.prompt,
            to=turn.to,
            files=[m.file for m in media if m.file is not None],
            spans=spans,
            finish_reason=reason,
            new_tokens=stream.tokens,
            seed=turn.seed,
            dropped=turn.dropped,
        )
        self.history = [*self.history[turn.dropped :], Turn(turn.message, reply.message)]
        reply.seconds = time.perf_counter() - started
        yield reply

    def send(
        self,
        text: str | PreparedTurn | None = None,
        *,
        on_text: Callable[[str], None] | None = None,
        **kwargs: Any,  # noqa: ANN401 - `prepare`'s arguments
    ) -> Reply:
        """Send one user turn and return the answer; the history gains the turn once its files are written.

        `stream` drained: each span's media is written to a new file (`Reply.files`).

        Args:
            text: the typed instruction, or a turn from `prepare`.
            on_text: called with each new piece of the answer's text, as it is generated.
            kwargs: `prepare`'s arguments:
                voice_prompt: the voice of spoken answers: the condition of each span whose
                    modality declares `condition="voice"`.
                inputs: attachments of any installed modality by name (e.g.
                    `{"toy": "series.txt"}`).
                to: the answer modality; other than text, the answer is started with its start
                    token.
                seed: seeds sampling and the decoders; None picks one (reported in the reply).
                attachments: the same as `inputs` by keyword, e.g. `image="beach.jpg"`.

        Raises:
            InputError, PluginError, ConfigError, GenerationError: the turn is not added; the
            history is unchanged. So is it when generation is interrupted (KeyboardInterrupt).
        """
        for item in self.stream(text, **kwargs):
            if isinstance(item, TextPiece) and on_text is not None:
                on_text(item.text)
            elif isinstance(item, Reply):
                return item
        raise GenerationError("the turn was stopped before its answer ended")

    def span_audio(self, turn: PreparedTurn) -> SpanAudio:
        """A `SpanAudio` for a turn's answer: its seed, its decoding config, its voice."""
        voices = {
            name: turn.voice
            for name, spec in self.gpt.plugins.modalities.items()
            if turn.voice is not None and spec.condition == VOICE
        }
        return SpanAudio(
            self.gpt, seed=turn.seed, configs={turn.to: turn.target}, conditions=voices
        )

    def _decode(
        self,
        span: SpanClosed,
        turn: PreparedTurn,
        *,
        save: bool,
        waveform: torch.Tensor | None = None,
    ) -> MediaReady:
        """Decode one span of the answer, or take its streamed `waveform`; write it with `save`."""
        if waveform is not None:
            return self._streamed(span, turn, waveform, save=save)
        voice = None
        if turn.voice is not None and self.gpt.codecs.spec(span.modality).condition == VOICE:
            voice = turn.voice
        media, files = self.gpt.decode_spans(
            [span],
            target=turn.to,
            config=turn.target,
            seed=turn.seed,
            name=turn.name,
            conditions={span.modality: voice} if voice is not None else None,
            save=save,
            directory=self.output_dir,
        )
        return MediaReady(span, media[0], files[0] if files else None)

    def _streamed(
        self, span: SpanClosed, turn: PreparedTurn, waveform: torch.Tensor, *, save: bool
    ) -> MediaReady:
        """The `MediaReady` of a span whose audio was streamed: its chunks, joined."""
        from anygpt_core.api import Media
        from anygpt_core.tasks import output_name

        codecs = self.gpt.codecs
        suffix = codecs.extension(span.modality)
        file = None
        if save:
            name = output_name(turn.name or span.modality, suffix)
            file = codecs.save(span.modality, waveform, self.output_dir, name)
        return MediaReady(span, Media(span.modality, waveform, suffix, codecs), file)

    def fit(self, message: str, to: str, budget: int) -> tuple[str, Any, int]:
        """The prompt, its ids and how many of the oldest turns were cut so it fits the context."""
        suffix = "" if to == "text" else " " + self.gpt.space.require(to).spec.start
        limit = None if self.context_length is None else self.context_length - budget
        if limit is not None and limit <= 0:
            raise InputError(
                f"max_new_tokens {budget} leaves no room in the model's context of "
                f"{self.context_length} positions"
            )
        dropped = self._first_that_may_fit(message, suffix)
        while True:
            prompt = self.render(self.history[dropped:], message) + suffix
            input_ids = self.gpt.encode_prompt(prompt)
            if limit is None or input_ids.shape[1] <= limit:
                return prompt, input_ids, dropped
            if dropped == len(self.history):
                raise InputError(
                    f"message too long: the prompt is {input_ids.shape[1]} tokens, the context "
                    f"holds {limit} besides max_new_tokens {budget}"
                )
            dropped += 1

    @property
    def max_chars(self) -> int | None:
        """Characters past which a prompt cannot fit the context, None if the context is unknown."""
        if self.context_length is None:
            return None
        return self.context_length * longest_token(self.gpt.tokenizer)

    def _first_that_may_fit(self, message: str, suffix: str) -> int:
        """How many of the oldest turns a prompt too long to fit in characters alone must lose.

        Such a prompt would be tokenized only to be cut (and a huge message takes long to
        tokenize), so it is measured in characters first; `fit` then cuts by tokens as before.

        Raises:
            InputError: even without history, the prompt has more characters than the context
                could hold as tokens.
        """
        limit = self.max_chars
        if limit is None:
            return 0

        def chars(dropped: int) -> int:
            return len(self.render(self.history[dropped:], message) + suffix)

        low, high = 0, len(self.history)  # prompts shrink as turns are dropped: bisect
        while low < high:
            middle = (low + high) // 2
            if chars(middle) > limit:
                low = middle + 1
            else:
                high = middle
        if chars(low) > limit:
            raise InputError(
                f"message too long: {len(message):,} characters, more than the model's context "
                f"of {self.context_length} positions can hold (at most {limit:,}); shorten it"
            )
        return low

    def request(
        self,
        input_ids: Any,  # noqa: ANN401 - int64 [1, T]
        to: str,
        target: DecodingConfig,
        seed: int | None,
    ) -> Request:
        """The engine request of a turn: `target` for the answer modality, spans at their defaults."""
        row = self.gpt.row(to, target, open_span=None if to == "text" else to)
        return Request(input_ids, row, seed)

    def text_stream(self, *, incremental: bool = True) -> TextStream:
        """A `TextStream` for one answer, watching the template's end string where it is text."""
        end = self.template.bot_end
        vocab = self.gpt.tokenizer.get_vocab()
        stop = None if end in vocab and vocab[end] in self.gpt.space.stop_ids else end
        return TextStream(self.gpt.tokenizer, self.gpt.space, stop=stop, incremental=incremental)
