"""What the engine yields and takes: token, span and end events, and the `Request` of one sequence.

Every driver (the in-process loop, `model.generate` through the logits processor, a vLLM server
through `Replay`) reports a sequence as the same events, so callers read one stream whatever runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from anygpt_core.engine.constraint import Row

__all__ = ["Done", "Event", "Request", "SpanClosed", "SpanOpened", "TokenEvent", "spans_json"]


@dataclass(frozen=True)
class TokenEvent:
    """One generated token; `modality` is None in text, else the open span's modality."""

    token_id: int
    modality: str | None


@dataclass(frozen=True)
class SpanOpened:
    """A span of `modality` was opened (by the model, or forced by the caller).

    `max_tokens` is the most code tokens it can hold (frames × codebooks).
    """

    modality: str
    max_tokens: int


@dataclass(frozen=True)
class SpanClosed:
    """A span closed; `codes` is int64 [num_codebooks, T]; `forced` if a length rule closed it."""

    modality: str
    codes: torch.Tensor
    forced: bool


def spans_json(spans: Sequence[SpanClosed]) -> list[dict[str, Any]]:
    """Spans as `--json` prints them: modality, codes shape, whether a length rule closed it."""
    return [
        {"modality": s.modality, "shape": list(s.codes.shape), "forced_end": s.forced}
        for s in spans
    ]


@dataclass(frozen=True)
class Done:
    """Generation ended: `stop` (end-of-turn token), `length` (budget spent) or `span` (target closed)."""

    token_ids: list[int]
    reason: Literal["stop", "length", "span"]
    spans: list[SpanClosed] = field(default_factory=list)
    #: prompt tokens whose keys and values came from the local engine's prefix cache (not run
    #: again); None where the driver does not say (beams, vLLM)
    cached_tokens: int | None = field(default=None, compare=False)  # not part of the answer


Event = TokenEvent | SpanOpened | SpanClosed | Done


@dataclass(frozen=True)
class Request:
    """One sequence to generate: a prompt, the span rules' `Row`, and a seed.

    Attributes:
        input_ids: the prompt, int64 [T] or [1, T]; with `row.open_span` it ends with that
            modality's start token.
        row: budget, configs and span options (see `Row`).
        seed: seeds this sequence's sampling generator; None draws from torch's global one.
    """

    input_ids: torch.Tensor
    row: Row
    seed: int | None = None

    @property
    def num_beams(self) -> int:
        """Beams of the answer: the config of its target state (the open span's, else text)."""
        return self.row.config(self.row.open_span).num_beams
