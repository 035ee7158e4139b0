"""The in-process driver of the span rules: a batched KV-cached loop (and beams through `hf`).

What is legal next is decided by `SpanConstraint` (anygpt_core.engine.constraint); this module only runs
the model under it. The loop runs B sequences at once (different prompts, tasks, budgets, configs
and seeds), left-padded; rows that finish leave the batch. Where every running row is inside a span
at the same codebook, only that codebook's rows of the output embedding are scored (a slice, not a
mask over the vocabulary). Each row samples with its own config and seeded generator over exactly
its legal ids, so a row's tokens do not depend on the rows beside it (greedy ids are the same in a
batch as alone). Beam search runs through transformers' `generate` with the constraint as a logits
processor (`anygpt_core.engine.hf`), so beams obey spans too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, cast

from anygpt_core.config import DecodingConfig
from anygpt_core.engine.constraint import REASONS, Row, SpanConstraint, SpanState
from anygpt_core.engine.events import Done, Event, Request, SpanClosed, SpanOpened, TokenEvent
from anygpt_core.engine.hf import generate_ids
from anygpt_core.engine.replay import Replay
from anygpt_core.engine.sampling import sample
from anygpt_core.errors import ConfigError
from anygpt_core.tokens import TokenSpace

if TYPE_CHECKING:
    import torch

    from anygpt_core.engine.backends import Backend, Head

__all__ = ["Generator"]


class Generator:
    """Drives a `Backend` under the span rules, for one sequence or a batch, yielding events.

    One `Generator` may be shared by several threads: each call has its own cache and state.

    Args:
        backend: the language model.
        space: the token ids of the model's tokenizer.
        mask_stray: in text, forbid code and end tokens that have no open span, and the role
            tokens `[Human]`, `[MMGPT]`, `<eoh>` (False: score exactly as `model.generate`).
        slice_logits: where all running rows are inside a span at one codebook, score only its
            rows (False scores the whole vocabulary and masks; kept for the benchmark baseline).
    """

    def __init__(
        self,
        backend: Backend,
        space: TokenSpace,
        *,
        mask_stray: bool = True,
        slice_logits: bool = True,
    ) -> None:
        self.backend = backend
        self.space = space
        self.slice_logits = slice_logits
        self.constraint = SpanConstraint(
            space, vocab_size=backend.vocab_size, mask_stray=mask_stray, device=backend.device
        )
        self._legal: dict[tuple[int, int, bool], tuple[slice | torch.Tensor, Head]] = {}
        self._lock = threading.Lock()

    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        text_config: DecodingConfig,
        span_configs: Mapping[str, DecodingConfig],
        max_new_tokens: int,
        open_span: str | None = None,
        stop_after_span: bool = False,
        seed: int | None = None,
    ) -> Iterator[Event]:
        """Generate after the prompt `input_ids` (int64 [1, T]), yielding events; the last is `Done`.

        Args:
            input_ids: the prompt; when `open_span` is set it already ends with that start token.
            text_config: decoding config of the text state.
            span_configs: decoding config per modality (missing ones use `text_config`).
            max_new_tokens: budget for the whole answer.
            open_span: start generating inside a span of this modality.
            stop_after_span: end as soon as the first span closes (text-to-modality tasks).
            seed: seeds the sampling generator; None draws from torch's global generator.
        """
        row = Row(text_config, dict(span_configs), max_new_tokens, open_span, stop_after_span)
        for _, event in self.generate_batch([Request(input_ids, row, seed)]):
            yield event

    def check(self, request: Request) -> None:
        """Raise `ConfigError` or `GenerationError` if `request` cannot run (before any work)."""
        row = request.row
        beams = request.num_beams
        for name, config in row.span_configs.items():
            if config.num_beams != 1 and name != row.open_span:
                raise ConfigError(
                    f"num_beams {config.num_beams} for {name}: beams apply to the answer's own "
                    "state; set num_beams 1 for a modality the answer does not start in"
                )
        if row.open_span is not None and row.text_config.num_beams != 1 and beams == 1:
            raise ConfigError(
                f"num_beams {row.text_config.num_beams}: this answer is a {row.open_span} span; "
                f"set num_beams in the {row.open_span} config"
            )
        self.constraint.check(row)

    def generate_batch(
        self,
        requests: Sequence[Request],
        *,
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[tuple[int, Event]]:
        """Generate for many prompts at once, yielding `(request index, event)` pairs.

        Each request's events come in the same order as alone; the last of each is its `Done`.
        Requests with beams run through `model.generate`: beam searches with the same number of
        beams together in one call (they are deterministic), beam sampling one at a time (its
        seed seeds the whole call); the others in one batch of the loop. A request for which
        `cancelled(index)` turns True leaves the batch without a `Done`.
        """
        for request in requests:
            self.check(request)
        looped = [i for i, r in enumerate(requests) if r.num_beams == 1]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(requests):
            if r.num_beams > 1:
                sampled = r.row.config(r.row.open_span).do_sample
                groups.setdefault((r.num_beams, i if sampled else -1), []).append(i)
        for group in groups.values():
            live = [i for i in group if cancelled is None or not cancelled(i)]
            if live:
                yield from self._beams([requests[i] for i in live], live)
        if looped:
            stop = None if cancelled is None else (lambda row: cancelled(looped[row]))
            for row, event in self._loop([requests[i] for i in looped], stop):
                yield looped[row], event

    def _loop(
        self, requests: Sequence[Request], cancelled: Callable[[int], bool] | None
    ) -> Iterator[tuple[int, Event]]:
        import torch

        constraint = self.constraint
        device = self.backend.device
        count = len(requests)
        state = constraint.start([r.row for r in requests])
        rngs = [
            None if r.seed is None else torch.Generator(device=device).manual_seed(r.seed)
            for r in requests
        ]
        width = constraint.vocab_size
        seen = torch.zeros((count, width), dtype=torch.bool, device=device)
        for b, r in enumerate(requests):
            seen[b, r.input_ids.reshape(-1).to(device)] = True
        new_ids: list[list[int]] = [[] for _ in requests]
        span_ids: list[list[int]] = [[] for _ in requests]
        spans: list[list[SpanClosed]] = [[] for _ in requests]
        for b, r in enumerate(requests):
            if r.row.open_span is not None:
                yield b, self._opened(r.row.open_span, int(state.frames[b]))
        session, hidden = self.backend.prefill([r.input_ids for r in requests])
        rows = list(range(count))  # original index of each row still in the batch
        while True:
            layout = constraint.summary(state)
            tokens = self._choose(hidden, state, layout, seen, [rngs[b] for b in rows])
            step = constraint.advance(state, tokens)
            seen[torch.arange(len(rows), device=device), tokens] = True
            token_list = tokens.tolist()
            opened = step.opened.tolist()
            closed = step.closed.tolist()
            finished = step.finished.tolist()
            for i, b in enumerate(rows):
                token = token_list[i]
                number = layout[i][0]
                new_ids[b].append(token)
                for event in self._token_events(
                    token, number, closed[i], opened[i], state, i, span_ids[b], spans[b]
                ):
                    yield b, event
                if finished[i]:
                    reason = cast(Literal["stop", "length", "span"], REASONS[int(state.reason[i])])
                    yield b, Done(new_ids[b], reason, spans[b])
            if cancelled is not None:
                finished = [f or cancelled(b) for f, b in zip(finished, rows, strict=True)]
            if any(finished):
                keep = [i for i, f in enumerate(finished) if not f]
                if not keep:
                    return
                index = torch.tensor(keep, device=device)
                state = state.select(index)
                self.backend.select(session, index)
                seen = seen[index]
                tokens = tokens[index]
                rows = [rows[i] for i in keep]
            hidden = self.backend.step(session, tokens)

    def _token_events(
        self,
        token: int,
        number: int,
        closed: int,
        opened: int,
        state: SpanState,
        i: int,
        span_ids: list[int],
        spans: list[SpanClosed],
    ) -> Iterator[Event]:
        """The events of one row's token: it, the span it closed, the span it opened.

        `number` is the row's modality number before the token, `closed` / `opened` the numbers
        of spans the step closed / opened (-1: none); the row's open span's ids gather in
        `span_ids`, its closed spans in `spans`.
        """
        import torch

        names = self.constraint.names
        yield TokenEvent(token, None if number == self.constraint.text else names[number])
        if closed >= 0:
            name = names[closed]
            codes = self.space.ids_to_codes(name, torch.tensor(span_ids, dtype=torch.long))
            event = SpanClosed(name, codes, bool(state.forced_end[i]))
            spans.append(event)
            span_ids.clear()
            yield event
        elif number != self.constraint.text:
            span_ids.append(token)
        if opened >= 0:
            yield self._opened(names[opened], int(state.frames[i]))

    def _opened(self, name: str, frames: int) -> SpanOpened:
        return SpanOpened(name, frames * self.space.modalities[name].spec.num_codebooks)

    def _legal_rows(
        self, number: int, layer: int, can_end: bool
    ) -> tuple[slice | torch.Tensor, Head]:
        """A span state's legal ids, and their output-embedding rows, gathered once.

        The ids are its codebook's codes, then the end token when allowed: a slice where
        contiguous, else an index tensor.
        """
        import torch

        key = (number, layer, can_end)
        if key not in self._legal:
            with self._lock:
                tokens = self.space.modalities[self.constraint.names[number]]
                span_range = tokens.layer_ranges[layer]
                ids: slice | torch.Tensor
                if not can_end and span_range is not None:
                    ids = slice(*span_range)
                else:
                    parts = [tokens.layer_ids[layer]]
                    if can_end:
                        parts.append(torch.tensor([tokens.end_id]))
                    ids = torch.cat(parts).to(self.backend.device)
                self._legal[key] = (ids, self.backend.head(ids))
        return self._legal[key]

    def _choose(
        self,
        hidden: torch.Tensor,
        state: SpanState,
        layout: list[tuple[int, int, bool, bool]],
        seen: torch.Tensor,
        rngs: list[torch.Generator | None],
    ) -> torch.Tensor:
        """The next token of every row: int64 [B].

        Rows inside spans are grouped by state (modality, codebook, end allowed): each group
        scores only its legal rows of the output embedding. Text rows score the whole
        vocabulary, masked.
        """
        import torch

        constraint = self.constraint
        configs = [constraint.config(state, i) for i in range(len(layout))]
        device = hidden.device
        tokens = torch.full((len(layout),), -1, dtype=torch.long, device=device)
        groups: dict[tuple[int, int, bool], list[int]] = {}
        for i, (number, layer, can_end, forced) in enumerate(layout):
            if forced:  # a full span's end: nothing to choose, no random draw
                tokens[i] = constraint.end_ids[number]
            elif number == constraint.text or not self.slice_logits:
                groups.setdefault((constraint.text, 0, False), []).append(i)
            else:
                groups.setdefault((number, layer, can_end), []).append(i)
        whole = len(layout)
        for key, members in groups.items():
            pick = None if len(members) == whole else torch.tensor(members, device=device)
            h = hidden if pick is None else hidden[pick]
            rows_seen = seen if pick is None else seen[pick]
            cfgs = [configs[i] for i in members]
            gens = [rngs[i] for i in members]
            if key[0] != constraint.text:
                ids, head = self._legal_rows(*key)
                logits = self.backend.project(h, head)
                chosen = self._sample_rows(logits, rows_seen[:, ids], cfgs, gens)
                picked = self._ids_tensor(ids)[chosen]
            else:
                full = self.backend.project(h)
                legal = constraint.mask(state if pick is None else state.select(pick))
                picked = self._full_rows(
                    full,
                    legal[:, : full.shape[1]],
                    rows_seen,
                    [layout[i] for i in members],
                    cfgs,
                    gens,
                )
            if pick is None:
                tokens = torch.where(tokens < 0, picked, tokens)
            else:
                tokens[pick] = picked
        return tokens

    def _full_rows(
        self,
        full: torch.Tensor,
        legal: torch.Tensor,
        seen: torch.Tensor,
        layout: list[tuple[int, int, bool, bool]],
        configs: list[DecodingConfig],
        rngs: list[torch.Generator | None],
    ) -> torch.Tensor:
        """Tokens int64 [B] from whole-vocabulary logits [B, V] and legal masks [B, V]."""
        import torch

        if all(not c.do_sample for c in configs):  # greedy rows: one masked argmax
            penalty = torch.tensor([c.repetition_penalty for c in configs], device=full.device)
            if bool((penalty != 1.0).any()):
                p = penalty[:, None]
                scaled = torch.where(full < 0, full * p, full / p)
                full = torch.where(seen[:, : full.shape[1]] & (p != 1.0), scaled, full)
            return full.masked_fill(~legal, -math.inf).argmax(dim=1)
        out = []
        for i, (number, layer, can_end, _) in enumerate(layout):
            # each row over exactly its legal ids, with its own generator
            if number == self.constraint.text:
                row = full[i].masked_fill(~legal[i], -math.inf)
                out.append(sample(row, configs[i], seen=seen[i, : row.numel()], generator=rngs[i]))
            else:
                index = self._ids_tensor(self._legal_rows(number, layer, can_end)[0])
                column = sample(full[i, index], configs[i], seen=seen[i, index], generator=rngs[i])
                out.append(int(index[column]))
        return torch.tensor(out, dtype=torch.long, device=full.device)

    def _ids_tensor(self, ids: slice | torch.Tensor) -> torch.Tensor:
        import torch

        if isinstance(ids, slice):
            return torch.arange(ids.start, ids.stop, device=self.backend.device)
        return ids

    def _sample_rows(
        self,
        logits: torch.Tensor,
        seen: torch.Tensor,
        configs: list[DecodingConfig],
        rngs: list[torch.Generator | None],
    ) -> torch.Tensor:
        """Column chosen in each row of `logits` [B, N]: int64 [B]."""
        import torch

        if all(not c.do_sample and c.repetition_penalty == 1.0 for c in configs):
            return logits.argmax(dim=1)
        return torch.tensor(
            [
                sample(logits[i], configs[i], seen=seen[i], generator=rngs[i])
                for i in range(logits.shape[0])
            ],
            device=logits.device,
        )

    def _beams(
        self, requests: Sequence[Request], indices: Sequence[int]
    ) -> Iterator[tuple[int, Event]]:
        """Answers by beam search (or beam sampling) through transformers' `generate`, together.

        The span rules run as a logits processor, so beams obey them inside spans as in text;
        a text answer's beams may not open spans (beams are compared by summed log
        probabilities, which spans of constrained codes would distort). The tokens come out
        together once the best beams are known; each answer's events are yielded with its index.
        """
        from dataclasses import replace

        model = getattr(self.backend, "model", None)
        if model is None or not hasattr(model, "generate"):
            raise ConfigError(
                f"num_beams {requests[0].num_beams}: beam search needs a transformers model backend"
            )
        requests = [
            r if r.row.open_span is not None else replace(r, row=replace(r.row, allow_spans=False))
            for r in requests
        ]
        for row, event in self._replay_many(
            requests, generate_ids(model, self.constraint, requests)
        ):
            yield indices[row], event

    def _replay_many(
        self, requests: Sequence[Request], token_ids: Sequence[Sequence[int]]
    ) -> Iterator[tuple[int, Event]]:
        """`replay` of many requests at once, `(row, event)`: one state, one step per position.

        Each row's events are those `replay` yields for it, in its order; rows interleave.
        """
        import torch

        constraint = self.constraint
        state = constraint.start([r.row for r in requests])
        for b, r in enumerate(requests):
            if r.row.open_span is not None:
                yield b, self._opened(r.row.open_span, int(state.frames[b]))
        fed: list[list[int]] = [[] for _ in requests]
        span_ids: list[list[int]] = [[] for _ in requests]
        spans: list[list[SpanClosed]] = [[] for _ in requests]
        rows = list(range(len(requests)))  # original index of each row still fed
        for t in range(max((len(ids) for ids in token_ids), default=0) + 1):
            done = state.done.tolist()
            keep = [i for i, b in enumerate(rows) if not done[i] and t < len(token_ids[b])]
            kept = set(keep)
            for i, b in enumerate(rows):
                if i not in kept:  # ended, or no more tokens: `length` (as `Replay.done`)
                    reason = REASONS[int(state.reason[i])] or "length"
                    yield b, Done(fed[b], cast(Literal["stop", "length", "span"], reason), spans[b])
            if not keep:
                return
            if len(keep) < len(rows):
                state = state.select(torch.tensor(keep, device=state.modality.device))
                rows = [rows[i] for i in keep]
            numbers = state.modality.tolist()
            tokens = [token_ids[b][t] for b in rows]
            step = constraint.advance(state, torch.tensor(tokens, dtype=torch.long))
            closed, opened = step.closed.tolist(), step.opened.tolist()
            for i, b in enumerate(rows):
                token, number = tokens[i], numbers[i]
                fed[b].append(token)
                for event in self._token_events(
                    token, number, closed[i], opened[i], state, i, span_ids[b], spans[b]
                ):
                    yield b, event

    def replay(self, request: Request, token_ids: Sequence[int]) -> Iterator[Event]:
        """The events of tokens another driver generated for `request`, up to its end."""
        replay = Replay(self.constraint, self.space, request.row)
        yield from replay.opening()
        for token in token_ids:
            yield from replay.feed(token)
            if replay.finished:
                break
        yield replay.done()
