"""A conversation with a chat model: history, template, truncation and media files."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.chat.audio import SpanAudio
from anygpt_core.chat.text import TextStream
from anygpt_core.chat.turns import (
    CHAT_TEXT_DECODING,
    TEMPLATES,
    VOICE,
    MediaReady,
    PreparedTurn,
    Reply,
    Source,
    Sources,
    TextPiece,
    Turn,
    TurnEvent,
    user_message,
)
from anygpt_core.config import DecodingConfig, draw_seed, load_decoding_config
from anygpt_core.engine.events import (
    Done,
    Request,
    SpanClosed,
)
from anygpt_core.errors import GenerationError, InputError
from anygpt_core.files import check_input_file
from anygpt_core.prompts import MMGPT_CHAT, ChatTemplate
from anygpt_core.tokenization import longest_token

if TYPE_CHECKING:
    import torch

    from anygpt_core.api import AnyGPT
    from anygpt_core.engine.batcher import Stop


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
        cached: int | None = None
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
                    reason, cached = event.reason, event.cached_tokens
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
            cached_tokens=cached,
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
