"""The span rules of the requests of one vLLM batch, without vLLM: what the processor delegates to.

Each request that carries our payload (`extra_args["anygpt"]`, see `anygpt_core.engine.wire`) gets a
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

from anygpt_core.engine.constraint import SpanConstraint, SpanState
from anygpt_core.engine.sampling import warp
from anygpt_core.engine.wire import constraint_from_layout, decode_payload

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
        state: its state (one row); while it is part of a batched state (`SpanRules`), as of
            the last time that batch was formed.
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
        new = list(self.output[self.consumed :])
        for token in new:
            self.constraint.advance(self.state, [token])
        self.consumed += len(new)

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
        #: per constraint: the rows last batched (their ids), their state, the rows themselves
        self._batches: dict[int, tuple[tuple[int, ...], SpanState, list[Tracked]]] = {}

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
        groups: dict[int, list[int]] = {}
        for index in sorted(self.rows):
            groups.setdefault(id(self.rows[index].constraint), []).append(index)
        for indices in groups.values():
            self._apply(logits, indices)
        return logits

    def _batched(self, indices: list[int]) -> SpanState:
        """One state for the rows `indices` (of one constraint), caught up with their outputs.

        While the same rows stay in the batch and each generated one token, their batched state
        advances in one step; when rows come or go, each row's own state is brought up to date
        and the batch is stacked again.
        """
        members = [self.rows[i] for i in indices]
        constraint = members[0].constraint
        key = tuple(id(m) for m in members)
        cached = self._batches.get(id(constraint))
        steady = all(len(m.output) - m.consumed == 1 for m in members)
        if cached is not None and cached[0] == key and steady:
            state = cached[1]
            constraint.advance(state, [m.output[m.consumed] for m in members])
            for m in members:
                m.consumed += 1
        else:
            if cached is not None:  # hand the old batch's rows back their own states
                for j, old in enumerate(cached[2]):
                    old.state = cached[1].select([j])
            for m in members:
                m.catch_up()
            state = SpanState.concat([m.state for m in members])
        self._batches[id(constraint)] = (key, state, members)
        return state

    def _apply(self, logits: torch.Tensor, indices: list[int]) -> None:
        import torch

        state = self._batched(indices)
        constraint = self.rows[indices[0]].constraint
        width = logits.shape[1]
        legal = constraint.mask(state).to(logits.device)  # (N, vocab)
        if legal.shape[1] < width:  # output rows beyond the tokenizer: never legal
            legal = torch.cat([legal, legal.new_zeros((legal.shape[0], width - legal.shape[1]))], 1)
        rows = torch.tensor(indices, device=logits.device)
        scores = logits[rows].masked_fill(~legal[:, :width], -math.inf)
        configs = [constraint.config(state, j) for j in range(len(indices))]
        for j, config in enumerate(configs):
            if config.repetition_penalty != 1.0:
                seen = self.rows[indices[j]].seen(width, scores.device)
                penalty = config.repetition_penalty
                row = scores[j]
                scores[j] = torch.where(
                    seen, torch.where(row < 0, row * penalty, row / penalty), row
                )
            if config.do_sample:
                scores[j] = warp(scores[j], config)
        greedy = [j for j, c in enumerate(configs) if not c.do_sample]
        if greedy:  # greedy states: only their argmax may be drawn, whatever vLLM samples with
            pick = torch.tensor(greedy, device=scores.device)
            best = scores[pick].argmax(dim=1)
            scores[pick] = -math.inf
            scores[pick, best] = 0.0
        logits[rows] = scores


@functools.lru_cache(maxsize=16)
def _constraint(layout: str, device: str) -> SpanConstraint:
    """The rules of a layout (its canonical JSON), built once per process and device.

    Building one takes tens of milliseconds (lookup tables over the vocabulary); every request of
    a gateway sends the same layout.
    """
    return constraint_from_layout(json.loads(layout), device=device)
