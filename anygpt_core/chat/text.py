"""An answer's printable text, decoded incrementally from the engine's events."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from anygpt_core.engine.events import (
    Event,
    SpanClosed,
    SpanOpened,
    TokenEvent,
)
from anygpt_core.protocol import codes_to_string

if TYPE_CHECKING:
    from anygpt_core.tokens import TokenSpace


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
