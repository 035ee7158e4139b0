"""The span rules inside transformers' `model.generate`: a `LogitsProcessor`, beam search included.

`SpanLogitsProcessor` masks every id the span rules forbid and, with `warp=True`, applies the
decoding config in force per row and state (repetition penalty, temperature, top-k, top-p), which
`generate`'s own warpers cannot: they take one config for the whole call. Beam search reorders its
rows every step, so the processor finds each row's parent among the previous step's rows by its
tokens and continues from the parent's state.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from anygpt_core.engine.backends import left_pad
from anygpt_core.engine.constraint import Row, SpanConstraint, SpanState
from anygpt_core.engine.sampling import warp

if TYPE_CHECKING:
    import torch

    from anygpt_core.engine.events import Request

__all__ = ["SpanLogitsProcessor", "generate_ids"]


class SpanLogitsProcessor:
    """A transformers logits processor enforcing the span rules of each row.

    Args:
        constraint: the span rules.
        rows: one `Row` per row of the `generate` batch (beams included: each sequence's row
            repeated `num_beams` times, as `generate` expands them).
        prompt_length: length of the (left-padded) prompts; later tokens are generated ones.
        groups: the sequence each row belongs to (default: one row each); a row's parent in
            the previous step is looked for among its group's rows.
        warp: apply each row's decoding config of its current state (set `generate`'s own
            temperature, top-k, top-p and repetition penalty to neutral values); the
            repetition penalty counts every input id, left padding included.
    """

    def __init__(
        self,
        constraint: SpanConstraint,
        rows: Sequence[Row],
        *,
        prompt_length: int,
        groups: Sequence[int] | None = None,
        warp: bool = False,
    ) -> None:
        import torch

        self.constraint = constraint
        self.rows = list(rows)
        #: int64 [rows]: the sequence each row belongs to (its beams share it)
        self.groups = torch.tensor(
            list(groups) if groups is not None else range(len(self.rows)), device=constraint.device
        )
        self.prompt_length = prompt_length
        self.warp = warp
        #: whether any row may need warping: some config of a row samples or penalises
        self._warps = warp and any(
            c.do_sample or c.repetition_penalty != 1.0
            for row in self.rows
            for c in (row.text_config, *row.span_configs.values())
        )
        self._state: SpanState | None = None
        self._tokens: torch.Tensor | None = None

    def state(self, input_ids: torch.Tensor) -> SpanState:
        """The span state after the generated part of `input_ids` [rows, prompt + t]."""
        generated = input_ids[:, self.prompt_length :].to(self.constraint.device)
        previous, before = self._state, self._tokens
        if previous is None or before is None or before.shape[1] != generated.shape[1] - 1:
            state = self.constraint.replay(self.rows, generated)
        else:
            # each row continues the previous row whose tokens it extends (its beam's parent)
            same = (generated[:, None, :-1] == before[None, :, :]).all(dim=2)
            same &= self.groups[:, None] == self.groups[None, :]
            if not bool(same.any(dim=1).all()):
                state = self.constraint.replay(self.rows, generated)
            else:
                parent = same.long().argmax(dim=1)
                state = previous.select(parent)
                state.rows = self.rows
                self.constraint.advance(state, generated[:, -1])
        self._state, self._tokens = state, generated
        return state

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Scores float [rows, V] with forbidden ids at -inf (and warped, with `warp`)."""
        import torch

        state = self.state(input_ids)
        width = scores.shape[1]
        legal = self.constraint.mask(state)[:, :width].to(scores.device)
        if legal.shape[1] < width:  # output rows beyond the tokenizer: never legal
            pad = legal.new_zeros((legal.shape[0], width - legal.shape[1]))
            legal = torch.cat([legal, pad], dim=1)
        scores = torch.where(legal, scores, -math.inf)  # masks before the cut, as in the loop
        return self._warp(input_ids, scores, state) if self._warps else scores

    def _warp(
        self, input_ids: torch.Tensor, scores: torch.Tensor, state: SpanState
    ) -> torch.Tensor:
        import torch

        configs = [self.constraint.config(state, i) for i in range(scores.shape[0])]
        if all(c.repetition_penalty == 1.0 and not c.do_sample for c in configs):
            return scores  # greedy and beam search rows: nothing to warp, nothing to copy
        out = scores.clone()
        for i, config in enumerate(configs):
            row = out[i]
            if config.repetition_penalty != 1.0:
                ids = input_ids[i].to(row.device)
                picked = row.gather(0, ids)
                penalty = config.repetition_penalty
                picked = torch.where(picked < 0, picked * penalty, picked / penalty)
                row = row.scatter(0, ids, picked)
            if config.do_sample:
                row = warp(row, config)
            out[i] = row
        return out


@functools.cache
def _beam_cache() -> type:
    """A `DynamicCache` (transformers') for beam search over prompts shared by their beams.

    - Reorder: `generate` reorders the whole cache at every step of a beam search, each beam
      taking its parent's keys and values. The prompt's positions are the same in every beam of
      a request (`_shared_prefill` repeats them) and a beam's parent is one of its request's
      beams, so those positions would be copied onto equal ones: only the positions from
      `shared` on are moved (with `shared` 0, all).
    - Append: `DynamicCache` concatenates each step's keys and values to a new tensor, copying
      the whole cache; here they are written into room kept after it (`room` positions, given
      when the cache is made), and the layer holds a view of the filled part.

    Both copies grow with the rows of a batch and the prompt's length (a transcription's prompt
    is most of its cache): without them a batch of beams costs less per row. The values the
    attention sees are the same.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class BeamCache(DynamicCache):
        shared = 0
        room = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - DynamicCache's
            super().__init__(*args, **kwargs)
            #: layer -> the full tensors its keys and values view
            self.held: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            for layer in self.layers:
                if type(layer) is not DynamicLayer:  # a sliding window drops the prefix
                    layer.reorder_cache(beam_idx)
                    continue
                keys, values = layer.keys, layer.values
                if keys is not None and values is not None and keys.shape[-2] > self.shared:
                    index = beam_idx.to(keys.device)
                    keys[:, :, self.shared :] = keys[index, :, self.shared :]
                    values[:, :, self.shared :] = values[index, :, self.shared :]

        def update(
            self,
            key_states: torch.Tensor,
            value_states: torch.Tensor,
            layer_idx: int,
            *args: Any,  # noqa: ANN401 - as `Cache.update`
            **kwargs: Any,  # noqa: ANN401
        ) -> tuple[torch.Tensor, torch.Tensor]:
            layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
            if type(layer) is not DynamicLayer or not self.room or layer.get_seq_length() == 0:
                return super().update(key_states, value_states, layer_idx, *args, **kwargs)
            keys, values = layer.keys, layer.values  # (B, heads, T, head_dim)
            if keys is None or values is None:
                return super().update(key_states, value_states, layer_idx, *args, **kwargs)
            length, new = keys.shape[-2], key_states.shape[-2]
            held = self.held.get(layer_idx)
            if (
                held is None
                or held[0].data_ptr() != keys.data_ptr()
                or (held[0].shape[-2] < length + new or held[0].shape[0] != keys.shape[0])
            ):
                shape = (*keys.shape[:-2], length + max(new, self.room), keys.shape[-1])
                held = (keys.new_empty(shape), values.new_empty(shape))
                held[0][:, :, :length] = keys
                held[1][:, :, :length] = values
                self.held[layer_idx] = held
            held[0][:, :, length : length + new] = key_states
            held[1][:, :, length : length + new] = value_states
            layer.keys = held[0][:, :, : length + new]
            layer.values = held[1][:, :, : length + new]
            return layer.keys, layer.values

    return BeamCache


def _shared_prefill(
    model: Any,  # noqa: ANN401 - a transformers causal LM
    ids: torch.Tensor,
    mask: torch.Tensor,
    beams: int,
    room: int,
) -> dict[str, Any]:
    """The prompts' KV cache computed once per prompt and repeated for its beams.

    `generate` expands the prompts to `beams` copies before its first forward pass, so each
    prompt's prefill is computed `beams` times over; a long prompt (a speech span to transcribe)
    then dominates the cost. Here the prompt but its last token runs once per request, and the
    cache is repeated per beam: `generate` then feeds only the last token, as it would continue.
    Those repeated positions stay in place when the beams are reordered, and `room` more
    positions are kept for the answer's tokens (`_beam_cache`).
    """
    import torch

    if beams == 1 or ids.shape[1] < 2:
        return {}
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = _beam_cache()(config=model.config)
    with torch.inference_mode():
        model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1].long(),
            position_ids=positions[:, :-1],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    cache.batch_repeat_interleave(beams)
    cache.shared = ids.shape[1] - 1
    cache.room = room
    return {"cache": cache}


def generate_ids(
    model: Any,  # noqa: ANN401 - a transformers causal LM
    constraint: SpanConstraint,
    requests: Sequence[Request],
) -> list[list[int]]:
    """Generate for `requests` in one `model.generate` call under the span rules.

    The requests share `generate`'s search settings: beams (`num_beams`) and `do_sample` come from
    the first request's answer config, the configs in force per state from each request (the
    processor warps). Prompts are left-padded. Seeds: the first request's seeds the call.

    Returns:
        The generated ids of each request, cut after its end (stop token, budget, or span).
    """
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    first = requests[0]
    beams = first.num_beams
    do_sample = first.row.config(first.row.open_span).do_sample
    ids, mask = left_pad([r.input_ids for r in requests], device)
    rows = [r.row for r in requests for _ in range(beams)]
    groups = [i for i in range(len(requests)) for _ in range(beams)]
    processor = SpanLogitsProcessor(
        constraint, rows, prompt_length=ids.shape[1], groups=groups, warp=True
    )
    stops = sorted(constraint.space.stop_ids)
    pad = getattr(model.generation_config, "pad_token_id", None)
    pad = pad if isinstance(pad, int) else stops[0]  # fills rows that ended early; cut below
    generation = GenerationConfig(
        num_beams=beams,
        num_return_sequences=1,
        do_sample=do_sample,
        **({"temperature": 1.0, "top_k": 0, "top_p": 1.0} if do_sample else {}),
        repetition_penalty=1.0,
        max_new_tokens=max(r.row.max_new_tokens for r in requests) + 1,
        length_penalty=1.0,
        early_stopping=False,
        eos_token_id=stops,
        pad_token_id=pad,
    )
    cuda = []  # seeding must not leak into the caller's random streams, GPU ones included
    if device.type == "cuda":
        cuda = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=cuda):
        if first.seed is not None:
            torch.manual_seed(first.seed)
        out = model.generate(
            ids,
            attention_mask=mask.long(),
            generation_config=generation,
            logits_processor=LogitsProcessorList([processor]),
            **_shared_prefill(model, ids, mask, beams, generation.max_new_tokens),
        )
    generated = out[:, ids.shape[1] :]
    state = constraint.start([r.row for r in requests])
    results: list[list[int]] = [[] for _ in requests]
    for t in range(generated.shape[1]):
        running = [i for i, done in enumerate(state.done) if not done]
        if not running:
            break
        column = generated[:, t].tolist()
        constraint.advance(state, column)
        for i in running:
            results[i].append(column[i])
    return results
