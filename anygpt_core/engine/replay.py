"""The loop's events from tokens another driver generated, one token at a time.

`model.generate` (beam search) and an external engine (vLLM) return token ids, not events. `Replay`
feeds them through the request's `SpanConstraint` state and yields what the in-process loop would
have: `TokenEvent`s, `SpanOpened` / `SpanClosed` (codes decoded by the token space), and `Done`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, cast

from anygpt_core.engine.constraint import REASONS, Row, SpanConstraint
from anygpt_core.engine.events import Done, Event, SpanClosed, SpanOpened, TokenEvent

if TYPE_CHECKING:
    from anygpt_core.tokens import TokenSpace

__all__ = ["Replay"]


class Replay:
    """The events of one row's tokens, fed one by one.

    Args:
        constraint: the span rules (of the model's token space).
        space: the token space whose lookup tables turn span ids into codes.
        row: the request's row.
    """

    def __init__(self, constraint: SpanConstraint, space: TokenSpace, row: Row) -> None:
        self.constraint = constraint
        self.space = space
        self.state = constraint.start([row])
        self.token_ids: list[int] = []
        self.spans: list[SpanClosed] = []
        self._span_ids: list[int] = []

    @property
    def finished(self) -> bool:
        """Whether the row ended (stop, length or span)."""
        return self.state.reason[0] > 0

    def opening(self) -> Iterator[Event]:
        """The `SpanOpened` of a span the prompt opened (nothing for a text start)."""
        row = self.state.rows[0]
        if row.open_span is not None:
            yield self._opened(row.open_span)

    def feed(self, token: int) -> Iterator[Event]:
        """The events of the next token (nothing once the row is done)."""
        import torch

        if self.finished:
            return
        constraint = self.constraint
        names = constraint.names
        number = int(self.state.modality[0])
        step = constraint.advance(self.state, [token])
        self.token_ids.append(token)
        yield TokenEvent(token, None if number == constraint.text else names[number])
        closed, opened = step.closed[0], step.opened[0]
        if closed >= 0:
            name = names[closed]
            codes = self.space.ids_to_codes(name, torch.tensor(self._span_ids, dtype=torch.long))
            event = SpanClosed(name, codes, bool(self.state.forced_end[0]))
            self.spans.append(event)
            self._span_ids = []
            yield event
        elif number != constraint.text:
            self._span_ids.append(token)
        if opened >= 0:
            yield self._opened(names[opened])

    def done(self) -> Done:
        """The `Done` of the tokens fed so far (`length` for a row that had not ended)."""
        reason = REASONS[int(self.state.reason[0])] or "length"
        return Done(
            list(self.token_ids), cast(Literal["stop", "length", "span"], reason), self.spans
        )

    def _opened(self, name: str) -> SpanOpened:
        spec = self.space.modalities[name].spec
        return SpanOpened(name, int(self.state.frames[0]) * spec.num_codebooks)
