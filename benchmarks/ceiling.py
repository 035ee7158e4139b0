"""The batching ratio this machine's kernels allow: what a driver that adds no work would reach.

A decode step of N rows costs at least the model's own operations: the transformer body over the N
new tokens (the lean LLaMA path, `LlamaBackend.step`), each group's output-layer projection (the
whole vocabulary for text rows, one codebook's rows inside a span) and the choice (an argmax; for
beam search the log-softmax over the vocabulary and the top-k over each request's beams). `ceiling`
times exactly those, bare, for one row of each kind alone and for a full batch of N, and returns
N x (one row's step, averaged over the kinds) / (the N rows' step).

That is the ratio of batched to one-by-one throughput that a scheduler with no bookkeeping, no
masks, no padding and every row busy at every step would measure here. It is an upper bound for
the engine's ratio on the same shapes: where a benchmark's target lies above it, no driver reaches
the target on this machine, and the gap between the engine's ratio and the ceiling is what the
engine itself still costs. On a CPU a single row's step reads every weight for one token (memory
bound) while a batch's step computes N rows (compute bound), so the ceiling depends on the CPU's
arithmetic against its memory bandwidth: a faster core lowers it.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anygpt_core.engine.backends import Backend, Head

__all__ = ["ceiling", "step_ms"]


def step_ms(
    backend: Backend,
    groups: Sequence[tuple[int, Head | None]],
    *,
    prompt: int,
    beams: int = 1,
    steps: int = 24,
) -> float:
    """Median milliseconds of one bare decode step.

    Args:
        backend: the engine's backend of the model (the lean path where it applies).
        groups: `(requests, head)` per kind: `head` None projects onto the whole vocabulary.
        prompt: tokens of each request's prompt (unpadded: all the same length).
        beams: rows per request; with more than 1, each step takes the log-softmax over the
            vocabulary and the top 2 x beams of each request's beams, as beam search does.
        steps: timed steps after 3 warm-up steps.
    """
    import torch

    requests = sum(count for count, _ in groups)
    with torch.inference_mode():
        prompts = [torch.arange(3, 3 + prompt) % 1000 for _ in range(requests)]
        session, hidden = backend.prefill(prompts)
        if beams > 1:  # the prompt's cache once per request, repeated for its beams
            repeat = torch.arange(requests).repeat_interleave(beams)
            backend.select(session, repeat)
            hidden = hidden[repeat]
        tokens = torch.zeros(requests * beams, dtype=torch.long)
        times = []
        for step in range(3 + steps):
            started = time.perf_counter()
            hidden = backend.step(session, tokens)
            row = 0
            for count, head in groups:
                rows = count * beams
                logits = backend.project(hidden[row : row + rows], head)
                if beams > 1:
                    scores = torch.log_softmax(logits, dim=-1).view(count, -1)
                    scores.topk(2 * beams, dim=1)
                else:
                    logits.argmax(dim=1)
                row += rows
            if step >= 3:
                times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def ceiling(
    backend: Backend,
    heads: Sequence[Head | None],
    size: int,
    *,
    prompt: int = 32,
    beams: int = 1,
) -> tuple[float, float, float]:
    """`(ratio, a row's step in ms, a batch's step in ms)` for requests run `size` at a time.

    `heads` has one entry per request: the output rows it projects onto (None: the whole
    vocabulary). One by one, each request's step is timed alone; batched, the requests go in
    consecutive batches of `size` (as the benchmarks chunk their task pools), each batch's step
    timed with every row busy. With every request as long as the others, the ratio is the sum of
    the requests' steps alone over the sum of the batches' steps. Each distinct head and each
    distinct batch is timed once.
    """
    keys = [_key(head) for head in heads]
    kinds = dict(zip(keys, heads, strict=True))
    alone = {
        key: step_ms(backend, [(1, head)], prompt=prompt, beams=beams)
        for key, head in kinds.items()
    }
    batches: dict[tuple[object, ...], float] = {}
    total_alone = sum(alone[key] for key in keys)
    total_batched = 0.0
    chunks = [keys[i : i + size] for i in range(0, len(keys), size)]
    for chunk in chunks:
        if tuple(chunk) not in batches:
            counts = Counter(chunk)
            groups = [(count, kinds[key]) for key, count in counts.items()]
            batches[tuple(chunk)] = step_ms(backend, groups, prompt=prompt, beams=beams)
        total_batched += batches[tuple(chunk)]
    return total_alone / total_batched, total_alone / len(heads), total_batched / len(chunks)


def _key(head: Head | None) -> object:
    """Heads over the same rows are the same kind (a head is gathered anew for each request)."""
    if head is None:
        return None
    return (head.weight.data_ptr(), tuple(head.weight.shape))
