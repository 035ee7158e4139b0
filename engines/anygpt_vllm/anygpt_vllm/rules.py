"""The span rules of the requests of one vLLM batch, without vLLM: what the processor delegates to.

Each request that carries our payload (`extra_args["anygpt"]`, see `anygpt_core.layout`) gets a
`Tracked` entry: its `SpanConstraint` (one per distinct layout, cached), its state, and the live
list of its output ids that vLLM appends to. Before each sampling step the state catches up with
the ids generated since, then the row's logits are masked to its legal ids and warped by the
decoding config in force (repetition penalty, temperature, top-k, top-p; a greedy config keeps
only the argmax), as the in-process loop does. Rows without the payload are left alone.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anygpt_core.config import DecodingConfig
from anygpt_core.constraint import SpanConstraint, SpanState
from anygpt_core.generation import warp
from anygpt_core.layout import constraint_from_layout, decode_payload

if TYPE_CHECKING:
    import torch

__all__ = ["PAYLOAD_KEY", "SpanRules", "Tracked"]

#: The `extra_args` key (`vllm_xargs` over HTTP) that switches the rules on for a request.
PAYLOAD_KEY = "anygpt"


@dataclass
class Tracked:
    """One request under the span rules.

    Attributes:
        constraint: the rules of its layout.
        state: its state (one row).
        prompt: its prompt ids (for the repetition penalty).
        output: vLLM's live list of its generated ids.
        consumed: how many of `output` the state has taken.
    """

    constraint: SpanConstraint
    state: SpanState
    prompt: Sequence[int]
    output: Sequence[int]
    consumed: int = 0
    _seen: torch.Tensor | None = field(default=None, repr=False)
    _marked: int = field(default=0, repr=False)

    def catch_up(self) -> None:
        """Advance the state over the ids generated since the last call."""
        import torch

        new = list(self.output[self.consumed :])
        for token in new:
            self.constraint.advance(self.state, torch.tensor([token]))
        self.consumed += len(new)

    def config(self) -> DecodingConfig:
        """The decoding config in force now."""
        return self.constraint.config(self.state, 0)

    def seen(self, width: int, device: torch.device) -> torch.Tensor:
        """Bool [width]: ids in the prompt or generated so far."""
        import torch

        if self._seen is None:
            self._seen = torch.zeros(width, dtype=torch.bool, device=device)
            prompt = [i for i in self.prompt if 0 <= i < width]
            self._seen[torch.tensor(prompt, dtype=torch.long, device=device)] = True
        out = [i for i in self.output[self._marked : self.consumed] if 0 <= i < width]
        if out:
            self._seen[torch.tensor(out, dtype=torch.long, device=device)] = True
        self._marked = self.consumed
        return self._seen


class SpanRules:
    """The tracked requests of one batch, by their row index in it.

    Args:
        device: where logits live (the constraint's tensors are built there too).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = str(device)
        self.rows: dict[int, Tracked] = {}

    @staticmethod
    def payload(extra_args: Mapping[str, Any] | None) -> str | None:
        """The request's payload string, or None for a request that does not ask for the rules."""
        if not extra_args or PAYLOAD_KEY not in extra_args:
            return None
        value = extra_args[PAYLOAD_KEY]
        if not isinstance(value, str):
            raise ValueError(f"{PAYLOAD_KEY}: expected a JSON string, got {type(value).__name__}")
        return value

    def track(
        self, extra_args: Mapping[str, Any] | None, prompt: Sequence[int] | None, output: list[int]
    ) -> Tracked | None:
        """A new request's entry, or None when it does not carry the payload.

        Raises:
            anygpt_core.errors.ConfigError: a payload that does not parse.
        """
        text = self.payload(extra_args)
        if text is None:
            return None
        layout, row = decode_payload(text)
        constraint = _constraint(json.dumps(layout, sort_keys=True), self.device)
        constraint.check(row)
        return Tracked(constraint, constraint.start([row]), list(prompt or []), output)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits float [batch, V] with every tracked row masked and warped (in place)."""
        import torch

        for index, tracked in self.rows.items():
            tracked.catch_up()
            width = logits.shape[1]
            legal = tracked.constraint.mask(tracked.state)[0].to(logits.device)
            if legal.shape[0] < width:  # output rows beyond the tokenizer: never legal
                legal = torch.cat([legal, legal.new_zeros(width - legal.shape[0])])
            row = logits[index].masked_fill(~legal[:width], -math.inf)
            config = tracked.config()
            if config.repetition_penalty != 1.0:
                seen = tracked.seen(width, row.device)
                penalty = config.repetition_penalty
                scaled = torch.where(row < 0, row * penalty, row / penalty)
                row = torch.where(seen, scaled, row)
            if config.do_sample:
                row = warp(row, config)
            else:  # greedy state: only its argmax may be drawn, whatever vLLM samples with
                best = int(torch.argmax(row))
                row = torch.full_like(row, -math.inf)
                row[best] = 0.0
            logits[index] = row
        return logits


@functools.lru_cache(maxsize=16)
def _constraint(layout: str, device: str) -> SpanConstraint:
    """The rules of a layout (its canonical JSON), built once per process and device.

    Building one takes tens of milliseconds (lookup tables over the vocabulary); every request of
    a gateway sends the same layout.
    """
    return constraint_from_layout(json.loads(layout), device=device)
