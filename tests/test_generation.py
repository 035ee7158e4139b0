from __future__ import annotations

import math

import pytest
import torch

from anygpt_core import ConfigError, DecodingConfig, GenerationError
from anygpt_core.engine.events import Done, SpanClosed, SpanOpened, TokenEvent
from anygpt_core.engine.loop import Generator
from anygpt_core.engine.sampling import sample
from anygpt_core.protocol import parse_response

GREEDY = DecodingConfig(do_sample=False, max_new_tokens=64)


def events_of(gpt, prompt, **kwargs):
    ids = gpt.tokenizer(prompt, return_tensors="pt").input_ids
    kwargs.setdefault("text_config", GREEDY)
    kwargs.setdefault("span_configs", {})
    kwargs.setdefault("max_new_tokens", 64)
    with torch.inference_mode():
        return list(gpt.generator.generate(ids, **kwargs))


def test_greedy_text_equals_model_generate(text_only_env):
    from anygpt_core.api import AnyGPT

    gpt = AnyGPT.load(device="cpu")
    loop = Generator(gpt.backend, gpt.space, mask_stray=False)
    for prompt in ["[Human]: Hello there<eoh>[MMGPT]: ", "[Human]: A red bus<eoh> [MMGPT]:"]:
        ids = gpt.tokenizer(prompt, return_tensors="pt").input_ids
        ids_in = gpt.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            events = list(
                loop.generate(ids_in, text_config=GREEDY, span_configs={}, max_new_tokens=48)
            )
        done = events[-1]
        assert isinstance(done, Done)
        with torch.inference_mode():
            reference = gpt.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=48,
                eos_token_id=list(gpt.space.stop_ids),
                pad_token_id=0,
            )
        assert done.token_ids == reference[0, ids.shape[1] :].tolist()
        assert len(done.token_ids) > 10


def test_toy_spans_always_well_formed(toy_gpt):
    """On the random demo model, every span the loop writes parses strictly and decodes."""
    toy = toy_gpt.space.require("toy")
    sampled = DecodingConfig(do_sample=True, top_k=0, temperature=3.0, max_new_tokens=300)
    opened = 0
    for seed in range(12):
        events = events_of(
            toy_gpt,
            "[Human]: Turn this text into a signal. This is input: waves<eoh> [MMGPT]:",
            text_config=sampled,
            span_configs={"toy": sampled},
            max_new_tokens=300 if seed % 2 else 23,
            open_span="toy" if seed % 3 == 0 else None,
            seed=seed,
        )
        tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
        in_span = False
        for e in events:
            if isinstance(e, SpanOpened):
                opened += 1
                in_span = True
            if isinstance(e, SpanClosed):
                in_span = False
                assert e.codes.shape[0] == 2 and e.codes.shape[1] >= 1
                assert int(e.codes.max()) < 16
        assert not in_span
        # Every token id inside spans is a legal code for its position, and spans end on frames.
        text = toy_gpt.tokenizer.decode(tokens)
        if seed % 3 == 0:
            text = "<soty>" + text
        spans = [s for s in parse_response(text, {"toy": toy.spec}) if hasattr(s, "codes")]
        closed = [e for e in events if isinstance(e, SpanClosed)]
        assert len(spans) == len(closed)
        for span, event in zip(spans, closed, strict=True):
            assert torch.equal(span.codes, event.codes)
        space = toy_gpt.space
        assert not {space.human_id, space.mmgpt_id, space.eoh_id} & set(tokens)  # no role tokens
        assert len(tokens) <= (300 if seed % 2 else 23)
    assert opened >= 4


def test_span_budget_closes_on_frame_boundary(toy_gpt):
    events = events_of(
        toy_gpt,
        "[Human]: x<eoh> [MMGPT]:",
        open_span="toy",
        max_new_tokens=8,
        seed=0,
        span_configs={"toy": DecodingConfig(do_sample=True, top_k=0)},
    )
    (closed,) = [e for e in events if isinstance(e, SpanClosed)]
    assert closed.codes.shape == (2, 3)  # 7 tokens for 3 frames of 2 codebooks + end token
    done = events[-1]
    assert done.token_ids[6] == toy_gpt.space.require("toy").end_id
    assert len(done.token_ids) == 8 and done.reason == "length"


def test_fixed_length_span_needs_room(toy_gpt, monkeypatch):
    import dataclasses

    toy = toy_gpt.space.require("toy")
    fixed = dataclasses.replace(toy, spec=toy.spec.model_copy(update={"fixed_frames": 5}))
    monkeypatch.setitem(toy_gpt.space.modalities, "toy", fixed)
    monkeypatch.setattr(toy_gpt, "generator", Generator(toy_gpt.backend, toy_gpt.space))
    events = events_of(
        toy_gpt, "[Human]: x<eoh> [MMGPT]:", open_span="toy", max_new_tokens=40, seed=1
    )
    (closed,) = [e for e in events if isinstance(e, SpanClosed)]
    assert closed.codes.shape == (2, 5) and not closed.forced
    with pytest.raises(GenerationError, match="needs 11 tokens"):
        events_of(toy_gpt, "[Human]: x<eoh> [MMGPT]:", open_span="toy", max_new_tokens=9)


def test_min_new_tokens_blocks_stop_tokens(text_only_env):
    from anygpt_core.api import AnyGPT

    gpt = AnyGPT.load(device="cpu")
    prompt = "[Human]: Hello<eoh>[MMGPT]: "
    hidden_stop = DecodingConfig(do_sample=False, min_new_tokens=30)

    class StopLover:
        """A backend wrapper whose logits always favour <eos>."""

        def __init__(self, inner):
            self.inner, self.vocab_size, self.device = inner, inner.vocab_size, inner.device

        def prefill(self, prompts):
            return self.inner.prefill(prompts)

        def step(self, session, tokens):
            return self.inner.step(session, tokens)

        def select(self, session, rows):
            self.inner.select(session, rows)

        def head(self, rows):
            return self.inner.head(rows)

        def project(self, hidden, rows=None):
            logits = self.inner.project(hidden, rows)
            if rows is None:
                logits[:, gpt.space.eos_id] = 1e4
            return logits

    loop = Generator(StopLover(gpt.backend), gpt.space)
    ids = gpt.tokenizer(prompt, return_tensors="pt").input_ids
    done = list(loop.generate(ids, text_config=hidden_stop, span_configs={}, max_new_tokens=64))[-1]
    assert done.reason == "stop" and len(done.token_ids) == 31


def test_seeded_sampling_repeats(toy_gpt):
    cfg = DecodingConfig(do_sample=True, top_k=0)

    def answer(seed):
        return events_of(
            toy_gpt,
            "[Human]: x<eoh> [MMGPT]:",
            text_config=cfg,
            span_configs={"toy": cfg},
            open_span="toy",
            max_new_tokens=30,
            seed=seed,
        )[-1].token_ids

    assert answer(7) == answer(7) != answer(8)


def test_sliced_logits_match_full_vocabulary(toy_gpt):
    cfg = DecodingConfig(do_sample=True, top_k=0, repetition_penalty=1.3)
    kwargs = dict(
        text_config=cfg, span_configs={"toy": cfg}, open_span="toy", max_new_tokens=40, seed=3
    )
    ids = toy_gpt.tokenizer("[Human]: x<eoh> [MMGPT]:", return_tensors="pt").input_ids
    sliced = list(toy_gpt.generator.generate(ids, **kwargs))[-1].token_ids
    full = list(
        Generator(toy_gpt.backend, toy_gpt.space, slice_logits=False).generate(ids, **kwargs)
    )
    assert sliced == full[-1].token_ids


def _reference_beam_search(model, ids, beams, steps, banned):
    """Plain beam search, recomputing every prefix: log-softmax, then bans, top `beams` overall."""
    hypotheses = [(ids[0].tolist(), 0.0)]
    for _ in range(steps):
        candidates = []
        for tokens, score in hypotheses:
            logits = model(torch.tensor([tokens])).logits[0, -1].float()
            logp = torch.log_softmax(logits, -1)
            logp[banned] = -math.inf
            top = torch.topk(logp, beams)
            candidates += [
                ([*tokens, int(i)], score + float(v))
                for v, i in zip(top.values, top.indices, strict=True)
            ]
        hypotheses = sorted(candidates, key=lambda c: -c[1])[:beams]
    return hypotheses[0][0][ids.shape[1] :]


def test_beam_search_finds_the_best_beam(text_only_env):
    from anygpt_core.api import AnyGPT

    gpt = AnyGPT.load(device="cpu")
    prompt = "[Human]: Hello there<eoh>[MMGPT]: "
    ids = gpt.tokenizer(prompt, return_tensors="pt").input_ids
    steps = 12  # min_new_tokens = max_new_tokens: no beam ends early, all are compared at 12
    beam = DecodingConfig(do_sample=False, num_beams=3, min_new_tokens=steps)
    with torch.inference_mode():
        done = list(
            gpt.generator.generate(ids, text_config=beam, span_configs={}, max_new_tokens=steps)
        )[-1]
        greedy = events_of(gpt, prompt, max_new_tokens=steps)[-1]
        banned = torch.cat(
            [gpt.generator.constraint.stray_ids, torch.tensor(list(gpt.space.stop_ids))]
        )
        expected = _reference_beam_search(gpt.model, ids, 3, steps, banned)
    assert done.reason == "length"
    assert done.token_ids == expected
    assert done.token_ids != greedy.token_ids  # the beams found something greedy did not


def test_beam_search_answers_in_text_and_honours_min_new_tokens(toy_gpt, monkeypatch):
    head = toy_gpt.model.get_output_embeddings()
    start = toy_gpt.space.require("toy").start_id
    eos = toy_gpt.space.eos_id
    forward = head.forward

    def favour_span_then_eos(hidden):
        logits = forward(hidden).clone()
        logits[..., start] += 1e4  # the greedy loop would open a toy span at once
        logits[..., eos] += 50.0
        return logits

    # model.generate, which beam search runs on, calls the head's forward
    monkeypatch.setattr(head, "forward", favour_span_then_eos)
    ids = toy_gpt.tokenizer("[Human]: hi<eoh> [MMGPT]:", return_tensors="pt").input_ids
    with torch.inference_mode():
        plain = toy_gpt.model.generate(ids, do_sample=False, max_new_tokens=1, pad_token_id=0)
    assert int(plain[0, -1]) == start
    # with sampling and top_k 1, the kept token must come from what the masks allow
    for sampled, top_k in ((False, None), (True, 1)):
        beam = DecodingConfig(do_sample=sampled, num_beams=4, min_new_tokens=6, top_k=top_k)
        events = events_of(
            toy_gpt, "[Human]: hi<eoh> [MMGPT]:", text_config=beam, max_new_tokens=20, seed=1
        )
        done = events[-1]
        assert isinstance(done, Done) and done.reason == "stop" and not done.spans
        assert len(done.token_ids) == 7 and done.token_ids[-1] == eos  # not before 6 tokens
        codes = set(toy_gpt.generator.constraint.stray_ids.tolist()) | set(toy_gpt.space.start_ids)
        assert not codes & set(done.token_ids)
        assert [e.token_id for e in events[:-1]] == done.token_ids


def test_seeded_beam_sampling_repeats(toy_gpt):
    beam = DecodingConfig(do_sample=True, num_beams=3, top_k=0, temperature=2.0)

    def answer(seed):
        return events_of(
            toy_gpt, "[Human]: x<eoh> [MMGPT]:", text_config=beam, max_new_tokens=16, seed=seed
        )[-1].token_ids

    state = torch.get_rng_state()
    assert answer(5) == answer(5) != answer(6)
    assert torch.equal(torch.get_rng_state(), state)  # the seed did not touch torch's global stream


def test_beams_apply_to_the_answers_own_state(toy_gpt):
    with pytest.raises(ConfigError, match="num_beams 5 for toy"):
        events_of(toy_gpt, "x", span_configs={"toy": DecodingConfig(num_beams=5)})


def test_beam_search_inside_a_span_writes_a_well_formed_span(toy_gpt):
    beam = DecodingConfig(do_sample=False, num_beams=3)
    kwargs = dict(open_span="toy", stop_after_span=True, max_new_tokens=15)
    events = events_of(
        toy_gpt, "[Human]: x<eoh> [MMGPT]: <soty>", span_configs={"toy": beam}, **kwargs
    )
    done = events[-1]
    assert isinstance(done, Done) and done.reason in {"span", "length"}
    (span,) = done.spans
    assert span.codes.shape[0] == 2 and span.codes.shape[1] >= 1
    toy = toy_gpt.space.require("toy")
    for i, token in enumerate(done.token_ids[:-1]):  # codebook k at position k of each frame
        assert int(toy_gpt.space.id_to_code[token]) // 16 == i % 2
    assert done.token_ids[-1] == toy.end_id
    again = events_of(
        toy_gpt, "[Human]: x<eoh> [MMGPT]: <soty>", span_configs={"toy": beam}, **kwargs
    )
    assert again[-1].token_ids == done.token_ids


def test_sample_top_k_top_p_repetition_penalty():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    greedy = DecodingConfig(do_sample=False, repetition_penalty=3.0)
    assert sample(logits, greedy) == 0
    assert sample(logits, greedy, seen=torch.tensor([True, False, False, False])) == 1
    gen = torch.Generator().manual_seed(0)
    top1 = DecodingConfig(top_k=1)
    assert {sample(logits, top1, generator=gen) for _ in range(20)} == {0}
    probs = torch.softmax(logits, 0)
    nucleus = DecodingConfig(top_p=float(probs[0]) - 1e-3)  # only the first token is needed
    assert {sample(logits, nucleus, generator=gen) for _ in range(20)} == {0}
    wide = DecodingConfig(top_p=float(probs[0] + probs[1]) + 1e-3)
    assert {sample(logits, wide, generator=gen) for _ in range(200)} <= {0, 1, 2}
    assert not math.isnan(float(probs.sum()))
