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
from dataclasses import dataclass, field
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
    """The state of every row of a batch, as Python lists (one entry per row).

    `modality` is the open span's modality number (`SpanConstraint.names`), or M (their count)
    in text; `position` counts the codes written in the open span; `frames` is the most frames
    the open span may hold; `produced` counts generated tokens; `reason` is an index into
    `REASONS` (0 while running); `forced_end` tells whether the last span closed was cut by its
    frame limit. Plain lists, not tensors: a step updates a few integers per row, which Python
    does in about a microsecond, where each of the dozens of small tensor operations it would
    take costs several (the loop's per-step bookkeeping; see `SpanConstraint.advance`).
    """

    rows: list[Row]
    modality: list[int]
    position: list[int]
    frames: list[int]
    produced: list[int]
    reason: list[int]
    forced_end: list[bool]

    @property
    def done(self) -> list[bool]:
        """Per row: whether it ended."""
        return [r > 0 for r in self.reason]

    #: The per-row lists, in the order the fields are declared.
    ROW_FIELDS = ("modality", "position", "frames", "produced", "reason", "forced_end")

    def select(self, keep: Sequence[int] | torch.Tensor) -> SpanState:
        """The state of the rows `keep` (indices, a list or an int64 tensor), in that order."""
        index = keep.tolist() if hasattr(keep, "tolist") else list(keep)
        fields = {name: [getattr(self, name)[i] for i in index] for name in self.ROW_FIELDS}
        return SpanState(rows=[self.rows[i] for i in index], **fields)

    @classmethod
    def concat(cls, states: Sequence[SpanState]) -> SpanState:
        """One state of the rows of `states`, in order."""
        fields = {name: [v for s in states for v in getattr(s, name)] for name in cls.ROW_FIELDS}
        return cls(rows=[r for s in states for r in s.rows], **fields)


@dataclass(frozen=True)
class Step:
    """What one `advance` did, per row (`opened`/`closed` hold modality numbers, -1: none)."""

    opened: list[int]
    closed: list[int]
    finished: list[bool]


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
        # The same tables as Python values, for the per-row bookkeeping of `advance`.
        self._codebooks: list[int] = self.codebooks.tolist()
        self._fixed: list[int] = self.fixed.tolist()
        self._max_frames: list[int] = self.max_frames.tolist()
        self._end_ids: list[int] = self.end_ids.tolist()
        self._min_span: list[int] = self.min_span.tolist()
        self._offsets: list[int] = self.offsets.tolist()
        self._stop_set = frozenset(self.stop_ids.tolist())
        self._start_of = {int(t): number for number, t in enumerate(self.start_ids.tolist())}
        #: bool [V] rows of `mask`, one per distinct row state (a small set), built on first use
        self._mask_rows: dict[tuple[int, ...], torch.Tensor] = {}

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
        for row in rows:
            self.check(row)
        modality = [
            self.text if r.open_span is None else self.names.index(r.open_span) for r in rows
        ]
        frames = [
            0 if m == self.text else self._frames(m, r.max_new_tokens)
            for m, r in zip(modality, rows, strict=True)
        ]
        count = len(rows)
        return SpanState(
            rows=list(rows),
            modality=modality,
            position=[0] * count,
            frames=frames,
            produced=[0] * count,
            reason=[0] * count,
            forced_end=[False] * count,
        )

    def _row_layout(self, state: SpanState, i: int) -> tuple[int, int, bool, bool]:
        """Row `i`: `(modality number, codebook, end allowed, end forced)`."""
        m = state.modality[i]
        if m == self.text:
            return m, 0, False, False
        k = self._codebooks[m]
        position = state.position[i]
        if position % k:
            return m, position % k, False, False
        frames_done = position // k
        forced = frames_done >= state.frames[i]
        return m, 0, frames_done > 0 and self._fixed[m] == 0, forced

    def summary(self, state: SpanState) -> list[tuple[int, int, bool, bool]]:
        """Per row `(modality number, codebook, end allowed, end forced)`."""
        return [self._row_layout(state, i) for i in range(len(state.rows))]

    def forced(self, state: SpanState) -> torch.Tensor:
        """int64 [B]: the one legal id of rows that have only one (a full span's end), else -1."""
        ids = [self._end_ids[m] if f else -1 for m, _, _, f in self.summary(state)]
        return self._long(ids)

    def mask(self, state: SpanState) -> torch.Tensor:
        """Bool [B, V], read-only: the ids legal next for each row (done rows: end-of-turn ids).

        A row's legal ids depend on a few facts (its span and codebook, whether the end may or
        must come; in text, which spans still fit, whether it may stop yet): each distinct
        combination's row is built once and stacked. Where every row has the same one (the
        beams of one answer, a batch of text answers), the result is that row expanded, a view
        that costs no copy.
        """
        import torch

        keys = [self._mask_key(state, i) for i in range(len(state.rows))]
        if not keys:
            return torch.zeros((0, self.vocab_size), dtype=torch.bool, device=self.device)
        first = keys[0]
        if all(key == first for key in keys):
            return self._mask_row(first).expand(len(keys), -1)  # read it, never write it
        return torch.stack([self._mask_row(key) for key in keys])

    def _mask_key(self, state: SpanState, i: int) -> tuple[int, ...]:
        """What row `i`'s legal ids depend on, as a key of `_mask_rows`.

        `(0,)` done; `(1, modality, codebook, end allowed, end forced)` in a span; `(2, too early
        to stop, whether each modality's span fits...)` in text.
        """
        if state.reason[i]:
            return (0,)
        m, layer, can_end, forced = self._row_layout(state, i)
        if m != self.text:
            return (1, m, layer, can_end, forced)
        row = state.rows[i]
        produced = state.produced[i]
        remaining = row.max_new_tokens - produced
        early = produced < row.text_config.min_new_tokens
        return (2, early, *(row.allow_spans and remaining >= need for need in self._min_span))

    def _mask_row(self, key: tuple[int, ...]) -> torch.Tensor:
        import torch

        cached = self._mask_rows.get(key)
        if cached is not None:
            return cached
        if key[0] == 0:
            legal = self.stop_mask.clone()
        elif key[0] == 1:
            _, m, layer, can_end, forced = key
            if forced:
                legal = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            else:
                legal = self.table[self._offsets[m] + layer].clone()
            if can_end or forced:
                legal[self._end_ids[m]] = True
        else:
            legal = self.table[0].clone()
            if self.start_ids.numel():
                fits = torch.tensor(key[2:], dtype=torch.bool, device=self.device)
                legal[self.start_ids] = fits
            if key[1]:
                legal[self.stop_ids] = False
        self._mask_rows[key] = legal
        return legal

    def config(self, state: SpanState, row: int) -> DecodingConfig:
        """The decoding config in force for `row`."""
        number = state.modality[row]
        return state.rows[row].config(None if number == self.text else self.names[number])

    def advance(self, state: SpanState, tokens: torch.Tensor | Sequence[int]) -> Step:
        """Record each row's next token (ignored for done rows) and update the state.

        `tokens`: int64 [B], or a list. Per row, in Python: a few integers change, so a step costs
        about a microsecond a row (benchmarks/bench_generate.py measures it).
        """
        values = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
        count = len(state.rows)
        opened, closed, finished = [-1] * count, [-1] * count, [False] * count
        text = self.text
        for i in range(count):
            if state.reason[i]:
                continue
            token = values[i]
            row = state.rows[i]
            m = state.modality[i]
            state.produced[i] += 1
            if m == text:
                if token in self._stop_set:
                    state.reason[i] = _STOP
                else:
                    number = self._start_of.get(token, -1)
                    if number >= 0:
                        self._open(state, i, number)
                        opened[i] = number
            elif token == self._end_ids[m]:
                _, _, _, forced = self._row_layout(state, i)
                state.forced_end[i] = forced and self._fixed[m] == 0
                state.modality[i] = text
                closed[i] = m
                if row.stop_after_span:
                    state.reason[i] = _SPAN
            else:
                state.position[i] += 1
            if (
                not state.reason[i]
                and state.modality[i] == text
                and state.produced[i] >= row.max_new_tokens
            ):
                state.reason[i] = _LENGTH
            finished[i] = state.reason[i] > 0
        return Step(opened, closed, finished)

    def _open(self, state: SpanState, i: int, number: int) -> None:
        """Row `i` opens a span of modality `number`: its frame limit from the budget left."""
        budget = state.rows[i].max_new_tokens - state.produced[i]  # for its codes and end
        frames = min((budget - 1) // self._codebooks[number], self._max_frames[number])
        state.frames[i] = self._fixed[number] or frames
        state.position[i] = 0
        state.modality[i] = number

    def replay(self, rows: Sequence[Row], tokens: torch.Tensor) -> SpanState:
        """The state after the generated tokens int64 [B, L] of each row (rows done stay done).

        For drivers that do not keep state between steps (beam search reorders its rows).
        """
        state = self.start(rows)
        tokens = tokens.to(self.device)
        for t in range(tokens.shape[1]):
            self.advance(state, tokens[:, t])
        return state
