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
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
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
    from anygpt_core.api import AnyGPT, Media
    from anygpt_core.engine.batcher import Stop
    from anygpt_core.spec import ModalitySpec
    from anygpt_core.tokens import TokenSpace

__all__ = [
    "CHAT_TEXT_DECODING",
    "TEMPLATES",
    "VOICE",
    "Conversation",
    "MediaReady",
    "PreparedTurn",
    "Reply",
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


#: What `Conversation.stream` yields: the engine's events, text pieces, decoded spans, and last
#: the `Reply`.
TurnEvent = TokenEvent | SpanOpened | SpanClosed | Done | TextPiece | MediaReady | Reply


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
        **kwargs: Any,  # noqa: ANN401 - `prepare`'s arguments
    ) -> Generator[TurnEvent, None, None]:
        """Send one user turn, yielding its answer as it is made; the last item is the `Reply`.

        Yields the engine's events (`TokenEvent`, `SpanOpened`, `SpanClosed`, `Done`), a
        `TextPiece` for each new piece of text, a `MediaReady` for each span once it is decoded
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
        events = self.gpt.engine.submit([request], stop=stop)
        try:
            for _, event in events:
                yield event
                piece = stream.feed(event)
                if piece:
                    yield TextPiece(piece)
                if isinstance(event, SpanClosed):
                    spans.append(event)
                    media.append(self._decode(event, turn, save=save))
                    yield media[-1]
                elif isinstance(event, Done):
                    reason = event.reason
                if stream.stopped:
                    reason = "stop"
                    break
        finally:
            events.close()  # an early end (a stop string, Ctrl-C) cancels the rest of the reply
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

    def _decode(self, span: SpanClosed, turn: PreparedTurn, *, save: bool) -> MediaReady:
        """Decode one span of the answer (and write it, with `save`)."""
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
