"""The span rules as JSON (anygpt_core.engine.wire): what a vLLM server rebuilds them from."""

from __future__ import annotations

import json

import pytest
import torch
from test_engine import toy_requests

from anygpt_core import DecodingConfig
from anygpt_core.engine.constraint import Row, SpanConstraint
from anygpt_core.engine.events import Done, SpanClosed, SpanOpened, TokenEvent
from anygpt_core.engine.wire import (
    constraint_from_layout,
    decode_payload,
    encode_payload,
    row_from_json,
    row_to_json,
    space_layout,
)
from anygpt_core.errors import ConfigError


def test_layout_rebuilds_the_same_rules(toy_gpt):
    space = toy_gpt.space
    ours = SpanConstraint(space, vocab_size=space.size + 7)
    layout = json.loads(json.dumps(space_layout(space, vocab_size=space.size + 7)))
    theirs = constraint_from_layout(layout)
    assert torch.equal(theirs.table, ours.table)
    for name in (
        "codebooks",
        "fixed",
        "max_frames",
        "end_ids",
        "start_ids",
        "stop_ids",
        "stray_ids",
    ):
        assert torch.equal(getattr(theirs, name), getattr(ours, name)), name
    assert theirs.names == ours.names
    # and the same masks along real answers (spans opened, closed, budgets ending)
    requests = toy_requests(toy_gpt)
    done = {i: e for i, e in toy_gpt.generator.generate_batch(requests) if isinstance(e, Done)}
    for index, request in enumerate(requests):
        a, b = ours.start([request.row]), theirs.start([request.row])
        for token in done[index].token_ids:
            assert torch.equal(ours.mask(a), theirs.mask(b))
            ours.advance(a, torch.tensor([token]))
            theirs.advance(b, torch.tensor([token]))
        assert int(a.reason[0]) == int(b.reason[0]) > 0


def test_layout_sends_code_ids_as_runs(toy_gpt):
    (toy,) = space_layout(toy_gpt.space, vocab_size=toy_gpt.space.size)["modalities"]
    tokens = toy_gpt.space.modalities["toy"]
    assert toy["code_ids"] == [[int(tokens.code_ids[0]), tokens.spec.vocab_size]]


def test_row_round_trips():
    row = Row(
        DecodingConfig(top_k=5, min_new_tokens=3),
        {"image": DecodingConfig(do_sample=False)},
        77,
        open_span="image",
        stop_after_span=True,
        allow_spans=False,
    )
    assert row_from_json(json.loads(json.dumps(row_to_json(row)))) == row
    layout = {"version": 1}
    assert decode_payload(encode_payload(layout, row)) == (layout, row)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "span layout version 2; this processor reads version 1"),
        ({"roles": [1, 2]}, "span layout: "),
    ],
)
def test_bad_layout_is_a_config_error(toy_gpt, change, message):
    layout = {**space_layout(toy_gpt.space, vocab_size=toy_gpt.space.size), **change}
    with pytest.raises(ConfigError, match=message):
        constraint_from_layout(layout)


def test_layout_with_missing_codes_is_a_config_error(toy_gpt):
    layout = space_layout(toy_gpt.space, vocab_size=toy_gpt.space.size)
    layout["modalities"][0]["code_ids"] = [[600, 3]]
    with pytest.raises(ConfigError, match="toy: 3 code ids for 32"):
        constraint_from_layout(layout)


def test_bad_row_is_a_config_error():
    with pytest.raises(ConfigError, match="span row: "):
        row_from_json({"text_config": {"top_p": 7}})


def test_replay_of_the_loops_ids_gives_the_loops_events(toy_gpt):
    for request in toy_requests(toy_gpt):
        events = [e for _, e in toy_gpt.generator.generate_batch([request])]
        replayed = list(toy_gpt.generator.replay(request, events[-1].token_ids))
        kinds = (TokenEvent, SpanOpened, SpanClosed, Done)
        assert [type(e) for e in replayed] == [type(e) for e in events if isinstance(e, kinds)]
        for a, b in zip(events, replayed, strict=True):
            if isinstance(a, SpanClosed):
                assert torch.equal(a.codes, b.codes)
                assert a.forced == b.forced
            elif isinstance(a, Done):
                assert (a.token_ids, a.reason, len(a.spans)) == (
                    b.token_ids,
                    b.reason,
                    len(b.spans),
                )
            else:
                assert a == b


def test_replay_of_many_rows_at_once_equals_one_by_one(toy_gpt):
    """`Generator._replay_many` (batched beam answers) gives each row `replay`'s events."""
    requests = toy_requests(toy_gpt)
    ids = [[e for _, e in toy_gpt.generator.generate_batch([r])][-1].token_ids for r in requests]
    ids[0] = ids[0][:3]  # a row cut short: its Done says length
    together: dict[int, list] = {}
    for row, event in toy_gpt.generator._replay_many(requests, ids):
        together.setdefault(row, []).append(event)
    for row, request in enumerate(requests):
        alone = list(toy_gpt.generator.replay(request, ids[row]))
        assert [type(e) for e in together[row]] == [type(e) for e in alone]
        for a, b in zip(together[row], alone, strict=True):
            if isinstance(a, SpanClosed):
                assert a.modality == b.modality and a.forced == b.forced
                assert torch.equal(a.codes, b.codes)
            elif isinstance(a, Done):
                assert (a.token_ids, a.reason, len(a.spans)) == (
                    b.token_ids,
                    b.reason,
                    len(b.spans),
                )
            else:
                assert a == b
