"""The processor's logic without vLLM: the span rules applied to real logits of the demo model.

A small stand-in for vLLM's loop drives `SpanRules` the way vLLM drives the processor (a live list
of output ids, logits of the whole batch per step); vLLM itself runs in tests/test_vllm.py.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import entry_points

import pytest
import torch
from anygpt_vllm.rules import PAYLOAD_KEY, SpanRules

from anygpt_core.config import DecodingConfig
from anygpt_core.engine.constraint import Row
from anygpt_core.engine.events import Done
from anygpt_core.engine.wire import encode_payload, row_to_json, space_layout
from anygpt_core.errors import ConfigError


def test_processor_is_registered_for_vllm():
    (entry,) = [e for e in entry_points(group="vllm.logits_processors") if e.name == "anygpt"]
    assert entry.value == "anygpt_vllm.processor:AnyGPTLogitsProcessor"


def _greedy_under_rules(gpt, requests, steps):
    """Greedy ids of `requests` (None: an ordinary row) decoded together, as vLLM would."""
    layout = space_layout(gpt.space, vocab_size=gpt.model.config.vocab_size)
    rules = SpanRules()
    outputs = [[] for _ in requests]
    prompts = [r.input_ids.reshape(-1).tolist() for r in requests]
    for index, request in enumerate(requests):
        extra = {PAYLOAD_KEY: encode_payload(layout, request.row)} if request.row else None
        tracked = rules.track(extra, prompts[index], outputs[index])
        if tracked is not None:
            rules.rows[index] = tracked
    for _ in range(steps):
        with torch.no_grad():
            rows = [torch.tensor([p + o]) for p, o in zip(prompts, outputs, strict=True)]
            logits = torch.cat([gpt.model(r).logits[:, -1] for r in rows])
        raw = logits.clone()
        chosen = rules.apply(logits).argmax(dim=1).tolist()
        for index, out in enumerate(outputs):
            if index not in rules.rows:
                assert torch.equal(logits[index], raw[index])  # an ordinary row is left alone
            out.append(chosen[index])
    return outputs


def test_rules_give_the_local_engines_greedy_ids(gpt):
    tasks = ["text|image|a red bus", "text|music|calm piano", "text|text|hello"]
    prepared = [gpt.prepare(t, seed=0, do_sample=False, max_new_tokens=40) for t in tasks]
    requests = [gpt.request(p) for p in prepared]
    local = {i: e for i, e in gpt.stream_many(prepared) if isinstance(e, Done)}
    ours = _greedy_under_rules(gpt, requests, steps=41)
    for index, task in enumerate(tasks):
        # vLLM stops at the stop ids the gateway sends; the stand-in runs on, so compare a prefix
        expected = local[index].token_ids
        assert ours[index][: len(expected)] == expected, task


def test_rules_leave_ordinary_rows_alone(gpt):
    from dataclasses import replace

    prepared = gpt.prepare("text|image|a red bus", seed=0, do_sample=False, max_new_tokens=40)
    request = gpt.request(prepared)
    plain = replace(request, row=None)
    ours, free = _greedy_under_rules(gpt, [request, plain], steps=8)
    image = set(gpt.space.modalities["image"].code_ids.tolist())
    assert all(t in image for t in ours)  # the prompt opened an image span: codes only
    assert not all(t in image for t in free)  # the same prompt without the payload: anything


def test_greedy_state_inside_a_sampled_request_keeps_one_id(gpt):
    layout = space_layout(gpt.space, vocab_size=gpt.model.config.vocab_size)
    prepared = gpt.prepare("text|image|a red bus", seed=0, do_sample=False, max_new_tokens=40)
    row = gpt.request(prepared).row
    assert row.text_config.do_sample
    assert not row.span_configs["image"].do_sample
    rules = SpanRules()
    rules.rows[0] = rules.track({PAYLOAD_KEY: encode_payload(layout, row)}, [1], [])
    logits = rules.apply(torch.randn(1, gpt.model.config.vocab_size))
    assert int(torch.isfinite(logits[0]).sum()) == 1


def test_warped_state_cuts_to_top_k(gpt):
    layout = space_layout(gpt.space, vocab_size=gpt.model.config.vocab_size)
    prepared = gpt.prepare("text|text|hello", seed=0, top_k=5, temperature=0.5)
    rules = SpanRules()
    rules.rows[0] = rules.track(
        {PAYLOAD_KEY: encode_payload(layout, gpt.request(prepared).row)}, [1], []
    )
    raw = torch.randn(1, gpt.model.config.vocab_size)
    out = rules.apply(raw.clone())[0]
    kept = torch.isfinite(out)
    assert int(kept.sum()) == 5
    assert torch.allclose(out[kept], raw[0][kept] / 0.5)
    assert float(out.max()) < math.inf


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{", "span payload"),
        (
            json.dumps({"layout": {"version": 99}, "row": row_to_json(Row(DecodingConfig()))}),
            "version 99",
        ),
        (3, "expected a JSON string"),
    ],
)
def test_bad_payload_is_refused(value, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        SpanRules().track({PAYLOAD_KEY: value}, [1], [])


def test_request_without_payload_is_not_tracked():
    assert SpanRules().track({"other": "x"}, [1], []) is None
    assert SpanRules().track(None, [1], []) is None
