"""The generation loop: a state machine that switches decoding config and vocabulary inside spans.

Text state samples with the text config over the whole vocabulary (stray code and end tokens
masked). A start token opens a span of its modality: from then on only that modality's legal ids
are scored (a slice of the output embedding, not a mask over the vocabulary), with the modality's
config, and length rules guarantee that every span decodes: a fixed-length modality gets exactly its
frame count, an RVQ modality gets codebook k at position k of each frame and may end only on a frame
boundary, and a span is closed before the token budget runs out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from anygpt_core.config import DecodingConfig
from anygpt_core.errors import ConfigError, GenerationError
from anygpt_core.tokens import ModalityTokens, TokenSpace

if TYPE_CHECKING:
    import torch

    from anygpt_core.backend import Backend

__all__ = ["Done", "Event", "Generator", "SpanClosed", "SpanOpened", "TokenEvent", "sample"]


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


@dataclass(frozen=True)
class Done:
    """Generation ended: `stop` (end-of-turn token), `length` (budget spent) or `span` (target closed)."""

    token_ids: list[int]
    reason: Literal["stop", "length", "span"]
    spans: list[SpanClosed] = field(default_factory=list)


Event = TokenEvent | SpanOpened | SpanClosed | Done


def sample(
    logits: torch.Tensor,
    config: DecodingConfig,
    *,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick one column of `logits` (float32 [N]) as `config` says.

    Applies, in transformers' order: repetition penalty (on columns where `seen` is True), then for
    sampling temperature, top-k and top-p, then a multinomial draw with `generator`.
    """
    import torch

    if config.repetition_penalty != 1.0 and seen is not None:
        penalty = config.repetition_penalty
        scaled = torch.where(logits < 0, logits * penalty, logits / penalty)
        logits = torch.where(seen, scaled, logits)
    if not config.do_sample:
        return int(torch.argmax(logits))
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k and config.top_k < logits.numel():
        threshold = torch.topk(logits, config.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, -math.inf)
    if config.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        drop = before > config.top_p
        logits = logits.scatter(0, order, ordered.masked_fill(drop, -math.inf))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class Generator:
    """Drives a `Backend` through text and modality spans, yielding events.

    Args:
        backend: the language model.
        space: the token ids of the model's tokenizer.
        mask_stray: in text, forbid code and end tokens that have no open span, and the role
            tokens `[Human]`, `[MMGPT]`, `<eoh>` (False: score exactly as `model.generate`).
        slice_logits: inside a span, score only its legal rows (False scores the whole vocabulary
            and masks; kept for the benchmark baseline).
    """

    def __init__(
        self,
        backend: Backend,
        space: TokenSpace,
        *,
        mask_stray: bool = True,
        slice_logits: bool = True,
    ) -> None:
        import torch

        self.backend = backend
        self.space = space
        self._rows: dict[tuple[str, int, bool], slice | torch.Tensor] = {}
        self.slice_logits = slice_logits
        stray = [m.code_ids for m in space.modalities.values()]
        stray += [torch.tensor([m.end_id]) for m in space.modalities.values()]
        # Inside an answer a role token would start a new turn: never part of a reply.
        stray.append(torch.tensor([space.human_id, space.mmgpt_id, space.eoh_id]))
        self.stray_ids = torch.cat(stray).to(backend.device) if mask_stray and stray else None

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
        import torch

        for name, config in span_configs.items():
            if config.num_beams != 1:
                raise ConfigError(
                    f"num_beams {config.num_beams} for {name}: beam search decodes text answers "
                    "only; set num_beams 1 for a modality"
                )
        if text_config.num_beams > 1:
            if open_span is not None:
                raise ConfigError(
                    f"num_beams {text_config.num_beams}: beam search decodes text answers only, "
                    f"and this answer is a {open_span} span; set num_beams 1"
                )
            yield from self._beam_text(input_ids, text_config, max_new_tokens, seed)
            return
        device = self.backend.device
        rng = None
        if seed is not None:
            rng = torch.Generator(device=device).manual_seed(seed)
        size = max(self.space.size, self.backend.vocab_size)
        seen = torch.zeros(size, dtype=torch.bool, device=device)
        seen[input_ids.reshape(-1).to(device)] = True
        hidden = self.backend.start(input_ids)
        new_ids: list[int] = []
        spans: list[SpanClosed] = []
        span: _Span | None = None
        if open_span is not None:
            span = self._open(open_span, max_new_tokens)
            yield SpanOpened(open_span, span.max_frames * span.tokens.spec.num_codebooks)
        step_input = torch.empty((1, 1), dtype=torch.long, device=device)
        while True:
            remaining = max_new_tokens - len(new_ids)
            if span is None:
                if remaining <= 0:
                    yield Done(new_ids, "length", spans)
                    return
                token = self._text_token(hidden, text_config, seen, len(new_ids), remaining, rng)
            else:
                config = span_configs.get(span.tokens.spec.name, text_config)
                token = self._span_token(hidden, span, config, seen, rng)
            new_ids.append(token)
            seen[token] = True
            if span is None:
                yield TokenEvent(token, None)
                if token in self.space.stop_ids:
                    yield Done(new_ids, "stop", spans)
                    return
                if token in self.space.start_ids:
                    span = self._open(self.space.start_ids[token], remaining - 1)
                    yield SpanOpened(
                        span.tokens.spec.name, span.max_frames * span.tokens.spec.num_codebooks
                    )
            else:
                yield TokenEvent(token, span.tokens.spec.name)
                if token == span.tokens.end_id:
                    codes = self.space.ids_to_codes(span.tokens.spec.name, torch.tensor(span.ids))
                    closed = SpanClosed(span.tokens.spec.name, codes, span.forced)
                    spans.append(closed)
                    span = None
                    yield closed
                    if stop_after_span:
                        yield Done(new_ids, "span", spans)
                        return
                else:
                    span.ids.append(token)
            step_input.fill_(token)
            hidden = self.backend.advance(step_input)

    def _beam_text(
        self,
        input_ids: torch.Tensor,
        config: DecodingConfig,
        max_new_tokens: int,
        seed: int | None,
    ) -> Iterator[Event]:
        """A text-only answer by beam search (or beam sampling), as the reference chat decoded.

        Runs transformers' own beam search on the backend's model, with the same masks as the
        text state plus every modality's start token: beams are compared by their summed log
        probabilities, which spans of constrained codes would distort, so the answer is text. The
        tokens come out together once the best beam is known.
        """
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        model = getattr(self.backend, "model", None)
        if model is None or not hasattr(model, "generate"):
            raise ConfigError(
                f"num_beams {config.num_beams}: beam search needs a transformers model backend"
            )
        device = self.backend.device
        banned = [torch.tensor(sorted(self.space.start_ids), dtype=torch.long)]
        if self.stray_ids is not None:
            banned.append(self.stray_ids.cpu())
        stops = sorted(self.space.stop_ids)
        processor = _TextOnly(
            torch.cat(banned).to(device),
            torch.tensor(stops, dtype=torch.long, device=device),
            prompt_length=input_ids.shape[1],
            min_new_tokens=config.min_new_tokens,
        )
        pad = getattr(model.generation_config, "pad_token_id", None)
        pad = pad if isinstance(pad, int) else stops[0]  # fills beams that ended early; cut below
        generation = GenerationConfig(
            num_beams=config.num_beams,
            num_return_sequences=1,
            do_sample=config.do_sample,
            temperature=config.temperature,
            top_k=config.top_k or 0,
            top_p=config.top_p,
            repetition_penalty=config.repetition_penalty,
            max_new_tokens=max_new_tokens,
            length_penalty=1.0,
            early_stopping=False,
            eos_token_id=stops,
            pad_token_id=pad,
        )
        prompt = input_ids.to(device)
        # transformers runs given processors after its own (repetition penalty) and before its
        # warpers (temperature, top-k, top-p): the masks come before the cut, as in the loop above
        cuda = []  # seeding must not leak into the caller's random streams, GPU ones included
        if device.type == "cuda":
            cuda = [torch.cuda.current_device() if device.index is None else device.index]
        with torch.random.fork_rng(devices=cuda):
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                generation_config=generation,
                logits_processor=LogitsProcessorList([processor]),
            )
        new_ids: list[int] = []
        reason: Literal["stop", "length"] = "length"
        for token in out[0, prompt.shape[1] :].tolist():
            new_ids.append(token)
            yield TokenEvent(token, None)
            if token in self.space.stop_ids:
                reason = "stop"
                break
        yield Done(new_ids, reason, [])

    def _open(self, name: str, budget: int) -> _Span:
        """A span of `name` with `budget` tokens left for its codes and end token."""
        tokens = self.space.require(name)
        spec = tokens.spec
        k = spec.num_codebooks
        frames = (budget - 1) // k
        if spec.max_frames is not None:
            frames = min(frames, spec.max_frames)
        if spec.fixed_frames is not None:
            if frames < spec.fixed_frames:
                raise GenerationError(
                    f"max_new_tokens leaves room for {max(frames, 0)} {name} codes; a {name} span "
                    f"needs {spec.fixed_frames * k + 1} tokens: raise --max-new-tokens"
                )
            frames = spec.fixed_frames
        if frames < 1:
            raise GenerationError(f"max_new_tokens leaves no room for a {name} span")
        return _Span(tokens, frames)

    def _legal_rows(
        self, tokens: ModalityTokens, layer: int, can_end: bool
    ) -> slice | torch.Tensor:
        """Output rows a span may score: the layer's codes, then its end token when allowed.

        A contiguous range is a slice (a view of the output embedding); otherwise an index tensor,
        built once so the backend can cache the gathered rows.
        """
        import torch

        key = (tokens.spec.name, layer, can_end)
        if key not in self._rows:
            span_range = tokens.layer_ranges[layer]
            if not can_end and span_range is not None:
                self._rows[key] = slice(*span_range)
            elif can_end:
                end = torch.tensor([tokens.end_id])
                rows = torch.cat([tokens.layer_ids[layer], end])
                self._rows[key] = rows.to(self.backend.device)  # indexed on the device each token
            else:
                self._rows[key] = tokens.layer_ids[layer].to(self.backend.device)
        return self._rows[key]

    def _min_span_tokens(self, tokens: ModalityTokens) -> int:
        spec = tokens.spec
        return (spec.fixed_frames or 1) * spec.num_codebooks + 2

    def _text_token(
        self,
        hidden: torch.Tensor,
        config: DecodingConfig,
        seen: torch.Tensor,
        produced: int,
        remaining: int,
        rng: torch.Generator | None,
    ) -> int:
        logits = self.backend.project(hidden)
        if self.stray_ids is not None:
            logits.index_fill_(0, self.stray_ids, -math.inf)
        for start_id, name in self.space.start_ids.items():
            if remaining < self._min_span_tokens(self.space.modalities[name]):
                logits[start_id] = -math.inf
        if produced < config.min_new_tokens:
            logits[list(self.space.stop_ids)] = -math.inf
        return sample(logits, config, seen=seen[: logits.numel()], generator=rng)

    def _span_token(
        self,
        hidden: torch.Tensor,
        span: _Span,
        config: DecodingConfig,
        seen: torch.Tensor,
        rng: torch.Generator | None,
    ) -> int:
        import torch

        tokens = span.tokens
        spec = tokens.spec
        k = spec.num_codebooks
        position = len(span.ids)
        layer = position % k
        frames_done = position // k
        if layer == 0 and frames_done >= span.max_frames:
            span.forced = spec.fixed_frames is None
            return tokens.end_id
        can_end = layer == 0 and frames_done > 0 and spec.fixed_frames is None
        ids = tokens.layer_ids[layer]
        if self.slice_logits:
            rows = self._legal_rows(tokens, layer, can_end)
            logits = self.backend.project(hidden, rows)
            cols_seen = seen[rows]
        else:
            full = self.backend.project(hidden)
            legal = self._legal_rows(tokens, layer, can_end)
            if isinstance(legal, slice):
                legal = torch.arange(legal.start, legal.stop)
            legal = legal.to(full.device)
            logits = full[legal]
            cols_seen = seen[legal]
        column = sample(logits, config, seen=cols_seen, generator=rng)
        if column == len(ids):
            return tokens.end_id
        return int(ids[column])


@dataclass
class _Span:
    tokens: ModalityTokens
    max_frames: int
    ids: list[int] = field(default_factory=list)
    forced: bool = False


class _TextOnly:
    """A transformers logits processor: banned ids never, end ids not before `min_new_tokens`."""

    def __init__(
        self,
        banned: torch.Tensor,
        stops: torch.Tensor,
        *,
        prompt_length: int,
        min_new_tokens: int,
    ) -> None:
        self.banned = banned
        self.stops = stops
        self.prompt_length = prompt_length
        self.min_new_tokens = min_new_tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.index_fill(1, self.banned, -math.inf)
        if input_ids.shape[1] - self.prompt_length < self.min_new_tokens:
            scores = scores.index_fill(1, self.stops, -math.inf)
        return scores
