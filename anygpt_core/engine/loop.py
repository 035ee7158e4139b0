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
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, TypeVar, cast

from anygpt_core.config import DecodingConfig
from anygpt_core.engine.constraint import REASONS, Row, SpanConstraint, SpanState
from anygpt_core.engine.events import Done, Event, Request, SpanClosed, SpanOpened, TokenEvent
from anygpt_core.engine.hf import generate_ids
from anygpt_core.engine.replay import Replay
from anygpt_core.engine.sampling import sample_rows
from anygpt_core.errors import ConfigError
from anygpt_core.tokens import TokenSpace

if TYPE_CHECKING:
    import torch

    from anygpt_core.engine.backends import Backend, Head

__all__ = ["Batch", "Generator"]

K = TypeVar("K", bound=Hashable)


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
        batch: Batch[int] = Batch(self)
        yield from batch.admit(requests, range(len(requests)))
        while batch:
            yield from batch.step(cancelled)

    def _token_events(
        self,
        token: int,
        number: int,
        closed: int,
        opened: int,
        state: SpanState,
        i: int,
        log: _RowLog,
    ) -> Iterator[Event]:
        """The events of one row's token: it, the span it closed, the span it opened.

        `number` is the row's modality number before the token, `closed` / `opened` the numbers
        of spans the step closed / opened (-1: none); the row's open span's ids gather in
        `log.span_ids`, its closed spans in `log.spans`.
        """
        import torch

        names = self.constraint.names
        yield TokenEvent(token, None if number == self.constraint.text else names[number])
        if closed >= 0:
            name = names[closed]
            codes = self.space.ids_to_codes(name, torch.tensor(log.span_ids, dtype=torch.long))
            event = SpanClosed(name, codes, state.forced_end[i])
            log.spans.append(event)
            log.span_ids.clear()
            yield event
        elif number != self.constraint.text:
            log.span_ids.append(token)
        if opened >= 0:
            yield self._opened(names[opened], state.frames[i])

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
        tokens = torch.empty((len(layout),), dtype=torch.long, device=device)
        forced: dict[int, int] = {}  # row: its one legal id (a full span's end; no random draw)
        groups: dict[tuple[int, int, bool], list[int]] = {}
        for i, (number, layer, can_end, must_end) in enumerate(layout):
            if must_end:
                forced[i] = constraint._end_ids[number]
            elif number == constraint.text or not self.slice_logits:
                groups.setdefault((constraint.text, 0, False), []).append(i)
            else:
                groups.setdefault((number, layer, can_end), []).append(i)
        if forced:
            index = torch.tensor(list(forced), device=device)
            tokens[index] = torch.tensor(list(forced.values()), device=device)
        whole = len(layout)
        for key, members in groups.items():
            pick = None if len(members) == whole else torch.tensor(members, device=device)
            h = hidden if pick is None else hidden[pick]
            cfgs = [configs[i] for i in members]
            gens = [rngs[i] for i in members]
            # which ids each row has seen matters only to a repetition penalty
            rows_seen = None
            if any(c.repetition_penalty != 1.0 for c in cfgs):
                rows_seen = seen if pick is None else seen[pick]
            if key[0] != constraint.text:
                ids, head = self._legal_rows(*key)
                logits = self.backend.project(h, head)
                span_seen = None if rows_seen is None else rows_seen[:, ids]
                chosen = sample_rows(logits, cfgs, seen=span_seen, generators=gens)
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
                tokens = picked
            else:
                tokens[pick] = picked
        return tokens

    def _full_rows(
        self,
        full: torch.Tensor,
        legal: torch.Tensor,
        seen: torch.Tensor | None,
        layout: list[tuple[int, int, bool, bool]],
        configs: list[DecodingConfig],
        rngs: list[torch.Generator | None],
    ) -> torch.Tensor:
        """Tokens int64 [B] from whole-vocabulary logits [B, V] and legal masks [B, V].

        Text rows choose over the vocabulary masked to their legal ids, together; span rows
        (only without `slice_logits`) over exactly their legal ids, each as in a slice.
        """
        import torch

        if seen is not None:
            seen = seen[:, : full.shape[1]]
        text = [i for i, row in enumerate(layout) if row[0] == self.constraint.text]
        if len(text) == len(layout):
            masked = torch.where(legal, full, -math.inf)  # one pass; masked_fill(~legal) takes two
            return sample_rows(masked, configs, seen=seen, generators=rngs)
        out = torch.empty(len(layout), dtype=torch.long, device=full.device)
        for i, (number, layer, can_end, _) in enumerate(layout):
            one = slice(i, i + 1)
            if number == self.constraint.text:
                row = torch.where(legal[one], full[one], -math.inf)
                row_seen = None if seen is None else seen[one]
                out[i] = sample_rows(row, configs[one], seen=row_seen, generators=rngs[one])[0]
            else:
                index = self._ids_tensor(self._legal_rows(number, layer, can_end)[0])
                row_seen = None if seen is None else seen[one, index]
                column = sample_rows(
                    full[one, index], configs[one], seen=row_seen, generators=rngs[one]
                )
                out[i] = index[column[0]]
        return out

    def _ids_tensor(self, ids: slice | torch.Tensor) -> torch.Tensor:
        import torch

        if isinstance(ids, slice):
            return torch.arange(ids.start, ids.stop, device=self.backend.device)
        return ids

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
        constraint = self.constraint
        state = constraint.start([r.row for r in requests])
        for b, r in enumerate(requests):
            if r.row.open_span is not None:
                yield b, self._opened(r.row.open_span, state.frames[b])
        logs = [_RowLog() for _ in requests]
        rows = list(range(len(requests)))  # original index of each row still fed
        for t in range(max((len(ids) for ids in token_ids), default=0) + 1):
            done = state.done
            keep = [i for i, b in enumerate(rows) if not done[i] and t < len(token_ids[b])]
            kept = set(keep)
            for i, b in enumerate(rows):
                if i not in kept:  # ended, or no more tokens: `length` (as `Replay.done`)
                    reason = REASONS[state.reason[i]] or "length"
                    ending = cast(Literal["stop", "length", "span"], reason)
                    yield b, Done(logs[b].ids, ending, logs[b].spans)
            if not keep:
                return
            if len(keep) < len(rows):
                state = state.select(keep)
                rows = [rows[i] for i in keep]
            numbers = list(state.modality)
            tokens = [token_ids[b][t] for b in rows]
            step = constraint.advance(state, tokens)
            for i, b in enumerate(rows):
                token, log = tokens[i], logs[b]
                log.ids.append(token)
                events = self._token_events(
                    token, numbers[i], step.closed[i], step.opened[i], state, i, log
                )
                for event in events:
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


class Batch(Generic[K]):
    """Rows that generate together, one token each per `step`; new rows join between steps.

    Iteration-level scheduling (as in Orca and vLLM): a caller `admit`s requests whenever rows
    are free, and they join the running rows at the next step; a row that ends leaves at once.
    Newcomers are prefilled together, then their KV cache is appended to the batch's
    (`Backend.join`), so no running row is recomputed or re-padded. Each row is known by the
    key it was admitted with, which its events carry.

    Args:
        generator: the model and span rules.
    """

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self._clear()

    def _clear(self) -> None:
        self.keys: list[K] = []
        self._state: SpanState | None = None
        self._session: object = None
        self._hidden: torch.Tensor | None = None  # each row's next token is chosen from it
        self._seen: torch.Tensor | None = None
        self._penalised = False  # some row has a repetition penalty: `_seen` is kept up to date
        self._rngs: list[torch.Generator | None] = []
        self._rows: list[_RowLog] = []

    def __len__(self) -> int:
        return len(self.keys)

    def joinable(self) -> bool:
        """Whether new rows can be admitted now (always when empty; else as the backend says)."""
        if self._state is None:
            return True
        can_join = getattr(self.generator.backend, "can_join", None)
        return can_join is not None and bool(can_join(self._session))

    def admit(self, requests: Sequence[Request], keys: Iterable[K]) -> Iterator[tuple[K, Event]]:
        """Prefill `requests` (checked with `Generator.check`) and add them to the batch.

        Yields the `SpanOpened` of each request that starts inside a span; the rows join the
        batch when this iterator ends.
        """
        import torch

        keys = list(keys)
        if not requests:
            return
        generator = self.generator
        backend = generator.backend
        device = backend.device
        state = generator.constraint.start([r.row for r in requests])
        rngs = [
            None if r.seed is None else torch.Generator(device=device).manual_seed(r.seed)
            for r in requests
        ]
        width = generator.constraint.vocab_size
        seen = torch.zeros((len(requests), width), dtype=torch.bool, device=device)
        for b, r in enumerate(requests):
            seen[b, r.input_ids.reshape(-1).to(device)] = True
        for key, r, frames in zip(keys, requests, state.frames, strict=True):
            if r.row.open_span is not None:
                yield key, generator._opened(r.row.open_span, frames)
        session, hidden = backend.prefill([r.input_ids for r in requests])
        cached = list(getattr(session, "reused", None) or [0] * len(requests))
        if self._state is None or self._hidden is None or self._seen is None:
            self._state, self._session, self._hidden, self._seen = state, session, hidden, seen
        else:
            backend.join(self._session, session)
            self._state = SpanState.concat([self._state, state])
            self._hidden = torch.cat([self._hidden, hidden])
            self._seen = torch.cat([self._seen, seen])
        self.keys.extend(keys)
        self._rngs.extend(rngs)
        self._penalised = self._penalised or any(_penalises(r.row) for r in requests)
        self._rows.extend(
            _RowLog(prompt=r.input_ids.reshape(-1), cached=n)
            for r, n in zip(requests, cached, strict=True)
        )

    def step(self, cancelled: Callable[[K], bool] | None = None) -> Iterator[tuple[K, Event]]:
        """Choose one token for every row and yield the events; the last of a row is `Done`.

        Rows that end, or whose key `cancelled` says gave up, leave the batch; the others are
        run over their new token, ready for the next step.
        """
        import torch

        state, hidden, seen = self._state, self._hidden, self._seen
        if state is None or hidden is None or seen is None:
            return
        generator = self.generator
        layout = generator.constraint.summary(state)
        tokens = generator._choose(hidden, state, layout, seen, self._rngs)
        step = generator.constraint.advance(state, tokens)
        if self._penalised:  # only a repetition penalty reads which ids a row has seen
            seen[torch.arange(len(self.keys), device=seen.device), tokens] = True
        for i, token in enumerate(tokens.tolist()):
            key, log = self.keys[i], self._rows[i]
            log.ids.append(token)
            events = generator._token_events(
                token, layout[i][0], step.closed[i], step.opened[i], state, i, log
            )
            for event in events:
                yield key, event
            if step.finished[i]:
                self._remember(i, log)
                reason = cast(Literal["stop", "length", "span"], REASONS[state.reason[i]])
                yield key, Done(log.ids, reason, log.spans, log.cached)
        keep = [
            i
            for i, (key, ended) in enumerate(zip(self.keys, step.finished, strict=True))
            if not ended and (cancelled is None or not cancelled(key))
        ]
        if self._keep(keep):
            if len(keep) < len(tokens):
                tokens = tokens[torch.tensor(keep, device=tokens.device)]
            self._hidden = generator.backend.step(self._session, tokens)

    def _remember(self, i: int, log: _RowLog) -> None:
        """Offer row `i`'s prompt and answer to the backend's prefix cache.

        A chat's next turn starts with them. The answer's last token was never run, so it is
        left out.
        """
        import torch

        remember = getattr(self.generator.backend, "remember", None)
        if remember is None or log.prompt is None:
            return
        answer = torch.tensor(log.ids[:-1], dtype=torch.long)
        remember(self._session, i, torch.cat([log.prompt.cpu(), answer]))

    def drop(self, gone: Callable[[K], bool]) -> None:
        """Remove, without a step, the rows whose key `gone` says gave up."""
        self._keep([i for i, key in enumerate(self.keys) if not gone(key)])

    def _keep(self, keep: list[int]) -> bool:
        """Keep only the rows `keep`; False when none is left."""
        import torch

        if not keep:
            self._clear()
            return False
        if len(keep) == len(self.keys) or self._state is None:
            return True
        index = torch.tensor(keep, device=self.generator.backend.device)
        self._state = self._state.select(keep)
        self.generator.backend.select(self._session, index)
        if self._seen is not None:
            self._seen = self._seen[index]
        if self._hidden is not None:
            self._hidden = self._hidden[index]
        self.keys = [self.keys[i] for i in keep]
        self._rngs = [self._rngs[i] for i in keep]
        self._rows = [self._rows[i] for i in keep]
        return True


@dataclass
class _RowLog:
    """What one row generated: its ids, the ids of its open span, its closed spans.

    `prompt` (int64 [T]) is what it was prefilled with, when known; `cached`, how many of its
    tokens the prefix cache supplied.
    """

    prompt: torch.Tensor | None = None
    #: prompt tokens the prefix cache supplied
    cached: int = 0
    ids: list[int] = field(default_factory=list)
    span_ids: list[int] = field(default_factory=list)
    spans: list[SpanClosed] = field(default_factory=list)


def _penalises(row: Row) -> bool:
    """Whether any decoding config of `row` has a repetition penalty."""
    configs = [row.text_config, *row.span_configs.values()]
    return any(c.repetition_penalty != 1.0 for c in configs)
