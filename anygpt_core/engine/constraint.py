"""The span rules as one component: per sequence of a batch, its state, the legal ids and its config.

`SpanConstraint` knows nothing of models. Built from a `TokenSpace`, it keeps for each row of a
batch whether it is in text or inside a span of modality m at code position p, and answers, as
tensors over the whole batch: which ids are legal next (`mask`), which row has only one (`forced`),
which decoding config is in force (`config`) and which rows are done. Every driver uses it: the
in-process loop (`anygpt_core.engine.loop`), `model.generate` through `SpanLogitsProcessor`
(`anygpt_core.engine.hf`), and an external engine such as vLLM, which is why it imports only torch.

The rules (the same as the reference's spans, made strict):
- text: any id but codes, end tokens and the role tokens `[Human]`, `[MMGPT]`, `<eoh>` (with
  `mask_stray`); a start token only if the budget left holds a whole span of it; end-of-turn ids
  only after `min_new_tokens`. The budget spent in text ends the row (`length`).
- inside a span: codebook k at position k of each frame; the end token only on a frame boundary
  after at least one frame, never for a fixed-length modality; the end token is forced once the
  span holds its most frames, so a span always closes inside the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from anygpt_core.config import DecodingConfig
from anygpt_core.errors import GenerationError

if TYPE_CHECKING:
    import torch

    from anygpt_core.tokens import TokenSpace

__all__ = ["REASONS", "Row", "SpanConstraint", "SpanState", "Step"]

#: Why a row ended, by the code `SpanState.reason` holds (0: not done).
REASONS = ("", "stop", "length", "span")
_STOP, _LENGTH, _SPAN = 1, 2, 3
_BIG = 1 << 40  # "no frame limit"


@dataclass(frozen=True)
class Row:
    """What one sequence asks of the constraint.

    Attributes:
        text_config: decoding config of the text state.
        span_configs: decoding config per modality (missing ones use `text_config`).
        max_new_tokens: budget for the whole answer.
        open_span: start inside a span of this modality (the prompt ends with its start token).
        stop_after_span: the row is done as soon as its first span closes.
        allow_spans: whether the text state may open spans (False: a text-only answer).
    """

    text_config: DecodingConfig
    span_configs: Mapping[str, DecodingConfig] = field(default_factory=dict)
    max_new_tokens: int = 100
    open_span: str | None = None
    stop_after_span: bool = False
    allow_spans: bool = True

    def config(self, modality: str | None) -> DecodingConfig:
        """The decoding config in force in `modality` (None: text)."""
        if modality is None:
            return self.text_config
        return self.span_configs.get(modality, self.text_config)


@dataclass
class SpanState:
    """The state of every row of a batch, as int64 / bool tensors [B] on one device.

    `modality` is the open span's modality number (`SpanConstraint.names`), or M (their count)
    in text; `position` counts the codes written in the open span; `frames` is the most frames
    the open span may hold; `produced` counts generated tokens; `reason` is an index into
    `REASONS` (0 while running); `forced_end` tells whether the last span closed was cut by its
    frame limit.
    """

    rows: list[Row]
    modality: torch.Tensor
    position: torch.Tensor
    frames: torch.Tensor
    produced: torch.Tensor
    reason: torch.Tensor
    forced_end: torch.Tensor
    budget: torch.Tensor
    min_new: torch.Tensor
    stop_after: torch.Tensor
    allow_spans: torch.Tensor
    #: `SpanConstraint._layout` of this state, computed once per step
    layout: tuple[torch.Tensor, ...] | None = None

    @property
    def done(self) -> torch.Tensor:
        """Bool [B]: rows that ended."""
        return self.reason > 0

    #: The per-row tensors (one value per row, dim 0), in the order the fields are declared.
    ROW_TENSORS = (
        "modality",
        "position",
        "frames",
        "produced",
        "reason",
        "forced_end",
        "budget",
        "min_new",
        "stop_after",
        "allow_spans",
    )

    def select(self, keep: torch.Tensor) -> SpanState:
        """The state of the rows `keep` (int64 [B'] indices), in that order."""
        picked = [self.rows[i] for i in keep.tolist()]
        index = keep.to(self.modality.device)
        tensors = {name: getattr(self, name)[index] for name in self.ROW_TENSORS}
        return replace(self, rows=picked, layout=None, **tensors)

    @classmethod
    def concat(cls, states: Sequence[SpanState]) -> SpanState:
        """One state of the rows of `states`, in order (their tensors on one device)."""
        import torch

        tensors = {name: torch.cat([getattr(s, name) for s in states]) for name in cls.ROW_TENSORS}
        rows = [r for s in states for r in s.rows]
        return replace(states[0], rows=rows, layout=None, **tensors)


@dataclass(frozen=True)
class Step:
    """What one `advance` did, per row: tensors [B] (`opened`/`closed` hold modality numbers, -1)."""

    opened: torch.Tensor
    closed: torch.Tensor
    finished: torch.Tensor


class SpanConstraint:
    """Legal next ids, decoding config and end of each sequence of a batch, from a `TokenSpace`.

    Args:
        space: the model tokenizer's token ids.
        vocab_size: width of the masks (at least the tokenizer's size; a model's output layer may
            have more rows, which are never legal).
        mask_stray: in text, forbid code and end tokens that have no open span, and the role
            tokens `[Human]`, `[MMGPT]`, `<eoh>` (False: text scores exactly as `model.generate`).
        device: where the state and masks live.
    """

    def __init__(
        self,
        space: TokenSpace,
        *,
        vocab_size: int | None = None,
        mask_stray: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        import torch

        self.space = space
        self.device = torch.device(device)
        self.vocab_size = max(space.size, vocab_size or 0)
        self.names = list(space.modalities)
        mods = [space.modalities[n] for n in self.names]
        count = len(mods)
        self.text = count
        # Per modality number (the last entry, M, is text): codebooks, fixed frames (0: none),
        # frame limit, end id, first row of its layer masks in `table`.
        self.codebooks = self._long([m.spec.num_codebooks for m in mods] + [1])
        self.fixed = self._long([m.spec.fixed_frames or 0 for m in mods] + [0])
        self.max_frames = self._long([m.spec.max_frames or _BIG for m in mods] + [_BIG])
        self.end_ids = self._long([m.end_id for m in mods] + [0])
        self.start_ids = self._long([m.start_id for m in mods])
        self.min_span = self._long(
            [(m.spec.fixed_frames or 1) * m.spec.num_codebooks + 2 for m in mods]
        )
        self.stop_ids = self._long(list(space.stop_ids))
        vocab = self.vocab_size
        text = torch.ones(vocab, dtype=torch.bool)
        text[space.size :] = False
        stray = [m.code_ids for m in mods] + [torch.tensor([m.end_id]) for m in mods]
        # inside an answer a role token would start a new turn: never part of a reply
        stray.append(torch.tensor([space.human_id, space.mmgpt_id, space.eoh_id]))
        #: int64: the ids text may not use (codes, end tokens, role tokens); empty without
        #: `mask_stray`.
        self.stray_ids = torch.cat(stray) if mask_stray else torch.empty(0, dtype=torch.long)
        text[self.stray_ids] = False
        text[self.start_ids.cpu()] = False  # legal only where a span fits (see `mask`)
        layers = [text]
        offsets = []
        for m in mods:
            offsets.append(len(layers))
            for ids in m.layer_ids:
                row = torch.zeros(vocab, dtype=torch.bool)
                row[ids] = True
                layers.append(row)
        self.offsets = self._long([*offsets, 0])
        #: bool [S, V]: legal ids of each state (row 0: text; then each modality's layers).
        self.table = torch.stack(layers).to(self.device)
        self.stop_mask = torch.zeros(vocab, dtype=torch.bool, device=self.device)
        self.stop_mask[self.stop_ids] = True
        #: int64 [V]: modality number of each start id, -1 for other ids.
        self.start_of = torch.full((vocab,), -1, dtype=torch.long, device=self.device)
        self.start_of[self.start_ids] = torch.arange(count, device=self.device)

    def _long(self, values: Sequence[int]) -> torch.Tensor:
        import torch

        return torch.tensor(list(values), dtype=torch.long, device=self.device)

    # -- state -------------------------------------------------------------------------------

    def check(self, row: Row) -> None:
        """Raise `GenerationError` if `row` cannot run (a forced span that its budget cannot hold)."""
        if row.open_span is not None:
            self._frames(self.names.index(self._known(row.open_span)), row.max_new_tokens)

    def _known(self, name: str) -> str:
        self.space.require(name)
        return name

    def _frames(self, number: int, budget: int) -> int:
        """Most frames of a span of modality `number` with `budget` tokens for codes and end."""
        spec = self.space.modalities[self.names[number]].spec
        frames = (budget - 1) // spec.num_codebooks
        if spec.max_frames is not None:
            frames = min(frames, spec.max_frames)
        if spec.fixed_frames is not None:
            if frames < spec.fixed_frames:
                raise GenerationError(
                    f"max_new_tokens leaves room for {max(frames, 0)} {spec.name} codes; a "
                    f"{spec.name} span needs {spec.fixed_frames * spec.num_codebooks + 1} tokens: "
                    "raise --max-new-tokens"
                )
            frames = spec.fixed_frames
        if frames < 1:
            raise GenerationError(f"max_new_tokens leaves no room for a {spec.name} span")
        return frames

    def start(self, rows: Sequence[Row]) -> SpanState:
        """The state of new rows before their first token (spans of `open_span` already open)."""
        import torch

        for row in rows:
            self.check(row)
        modality = [
            self.text if r.open_span is None else self.names.index(r.open_span) for r in rows
        ]
        frames = [
            0 if m == self.text else self._frames(m, r.max_new_tokens)
            for m, r in zip(modality, rows, strict=True)
        ]
        zeros = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        return SpanState(
            rows=list(rows),
            modality=self._long(modality),
            position=zeros.clone(),
            frames=self._long(frames),
            produced=zeros.clone(),
            reason=zeros.clone(),
            forced_end=torch.zeros(len(rows), dtype=torch.bool, device=self.device),
            budget=self._long([r.max_new_tokens for r in rows]),
            min_new=self._long([r.text_config.min_new_tokens for r in rows]),
            stop_after=torch.tensor(
                [r.stop_after_span for r in rows], dtype=torch.bool, device=self.device
            ),
            allow_spans=torch.tensor(
                [r.allow_spans for r in rows], dtype=torch.bool, device=self.device
            ),
        )

    def _layout(
        self, state: SpanState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row: in a span, its codebook, whether the end token is allowed, whether forced."""
        if state.layout is not None:
            in_span, layer, can_end, forced = state.layout
            return in_span, layer, can_end, forced
        m = state.modality
        in_span = m != self.text
        k = self.codebooks[m]
        layer = state.position % k
        frames_done = state.position // k
        boundary = in_span & (layer == 0)
        forced = boundary & (frames_done >= state.frames)
        can_end = boundary & (frames_done > 0) & (self.fixed[m] == 0)
        state.layout = (in_span, layer, can_end, forced)
        return in_span, layer, can_end, forced

    def summary(self, state: SpanState) -> list[tuple[int, int, bool, bool]]:
        """Per row `(modality number, codebook, end allowed, end forced)`, as Python values."""
        import torch

        _, layer, can_end, forced = self._layout(state)
        packed = torch.stack([state.modality, layer, can_end.long(), forced.long()], dim=1)
        return [(m, k, bool(e), bool(f)) for m, k, e, f in packed.tolist()]

    def forced(self, state: SpanState) -> torch.Tensor:
        """int64 [B]: the one legal id of rows that have only one (a full span's end), else -1."""
        import torch

        *_, forced = self._layout(state)
        return torch.where(forced, self.end_ids[state.modality], -1)

    def mask(self, state: SpanState) -> torch.Tensor:
        """Bool [B, V]: the ids legal next for each row (done rows: the end-of-turn ids)."""
        import torch

        in_span, layer, can_end, forced = self._layout(state)
        m = state.modality
        index = (self.offsets[m] + layer) * in_span  # text rows use table row 0
        legal = self.table[index]  # (B, V), a copy
        rows = torch.arange(m.shape[0], device=self.device)
        end = self.end_ids[m]
        legal[rows, end] |= can_end
        text = ~in_span
        if self.start_ids.numel():
            remaining = state.budget - state.produced
            fits = remaining[:, None] >= self.min_span[None, :]  # (B, M)
            legal[:, self.start_ids] = fits & (text & state.allow_spans)[:, None]
        early = text & (state.produced < state.min_new)
        legal[:, self.stop_ids] &= ~early[:, None]
        if bool(forced.any()):
            legal[forced] = False
            legal[forced, end[forced]] = True
        done = state.done
        if bool(done.any()):
            legal[done] = self.stop_mask
        return legal

    def config(self, state: SpanState, row: int) -> DecodingConfig:
        """The decoding config in force for `row`."""
        number = int(state.modality[row])
        return state.rows[row].config(None if number == self.text else self.names[number])

    def advance(self, state: SpanState, tokens: torch.Tensor) -> Step:
        """Record each row's next token (int64 [B]; ignored for done rows) and update the state."""
        import torch

        tokens = tokens.to(self.device)
        running = ~state.done
        m = state.modality
        in_span = m != self.text
        *_, forced = self._layout(state)
        none = torch.full_like(m, -1)
        # text: a stop id ends the row, a start id opens a span
        text = running & ~in_span
        stop = text & self.stop_mask[tokens]
        opened = torch.where(text & ~stop, self.start_of[tokens], none)
        # span: its end token closes it, any other token is a code
        span = running & in_span
        closing = span & (tokens == self.end_ids[m])
        closed = torch.where(closing, m, none)
        state.produced = state.produced + running.long()
        state.position = torch.where(span & ~closing, state.position + 1, state.position)
        is_open = opened >= 0
        if bool(is_open.any()):
            budget = state.budget - state.produced  # tokens left for the span's codes and end
            k = self.codebooks[opened.clamp(min=0)]
            frames = torch.minimum((budget - 1) // k, self.max_frames[opened.clamp(min=0)])
            fixed = self.fixed[opened.clamp(min=0)]
            frames = torch.where(fixed > 0, fixed, frames)
            state.frames = torch.where(is_open, frames, state.frames)
            state.position = torch.where(is_open, 0, state.position)
            state.modality = torch.where(is_open, opened, state.modality)
        state.forced_end = torch.where(closing, forced & (self.fixed[m] == 0), state.forced_end)
        state.modality = torch.where(closing, self.text, state.modality)
        now_text = state.modality == self.text
        reason = state.reason
        reason = torch.where(stop, _STOP, reason)
        reason = torch.where(closing & state.stop_after & (reason == 0), _SPAN, reason)
        spent = running & now_text & (state.produced >= state.budget) & (reason == 0)
        state.reason = torch.where(spent, _LENGTH, reason)
        state.layout = None
        return Step(opened, closed, running & state.done)

    def replay(self, rows: Sequence[Row], tokens: torch.Tensor) -> SpanState:
        """The state after the generated tokens int64 [B, L] of each row (rows done stay done).

        For drivers that do not keep state between steps (beam search reorders its rows).
        """
        state = self.start(rows)
        tokens = tokens.to(self.device)
        for t in range(tokens.shape[1]):
            self.advance(state, tokens[:, t])
        return state
