"""The prefix cache: prompts and answers already run lend their keys and values to later prompts."""

from __future__ import annotations

import re

import pytest
import torch
from cli_runner import run_cli, tiny_llama

from anygpt_core import DecodingConfig
from anygpt_core.engine.backends import LlamaBackend, TransformersBackend
from anygpt_core.engine.constraint import Row
from anygpt_core.engine.events import Done, Request
from anygpt_core.engine.prefix import BLOCK, MIN_REUSE, PrefixCache

GREEDY = DecodingConfig(do_sample=False)


def kv(tokens: int) -> torch.Tensor:
    """Keys and values as the cache holds them: 2 layers, 1 head of 4; 64 bytes a token."""
    return torch.zeros(2, 2, 1, tokens, 4)


def test_the_longest_shared_start_is_reused_and_one_token_is_left_to_run():
    cache = PrefixCache(budget=10**6)
    cache.add(torch.arange(40), kv(40))
    cache.add(torch.arange(100, 140), kv(40))
    assert cache.match(torch.cat([torch.arange(20), torch.tensor([999, 998])]))[0] == 20
    assert cache.match(torch.arange(60))[0] == 40
    assert cache.match(torch.arange(40))[0] == 39  # the last token runs: its hidden state is needed
    assert cache.match(torch.arange(100, 150))[0] == 40
    # less than a whole block (BLOCK tokens) in common: not worth fitting in
    assert MIN_REUSE == BLOCK
    assert cache.match(torch.cat([torch.arange(BLOCK - 1), torch.full((10,), 7)]))[0] == 0
    assert cache.match(torch.full((20,), 7))[0] == 0
    n, found = cache.match(torch.arange(80))
    assert n == 40 and found is not None and found.shape == (2, 2, 1, 40, 4)


def test_an_entry_held_by_a_longer_one_goes_and_the_budget_evicts_the_oldest():
    cache = PrefixCache(budget=64 * 100)
    cache.add(torch.arange(20), kv(20))
    cache.add(torch.arange(40), kv(40))  # holds the first: it goes
    assert len(cache) == 1 and cache.bytes == 64 * 40
    assert not cache.wants(torch.arange(30), 64 * 30)  # held by the entry there
    cache.add(torch.arange(30), kv(30))
    assert len(cache) == 1
    assert cache.wants(torch.arange(50), 64 * 50)
    assert not cache.wants(torch.arange(50), 64 * 101)  # more than the whole budget
    assert not cache.wants(torch.arange(BLOCK - 1), 64)
    cache.add(torch.arange(100, 140), kv(40))
    assert cache.match(torch.arange(50))[0] == 40  # used: now the newest
    cache.add(torch.arange(200, 240), kv(40))  # 120 tokens of room for 100: the oldest goes
    assert cache.bytes == 64 * 80
    assert cache.match(torch.arange(100, 150))[0] == 0
    assert cache.match(torch.arange(50))[0] == 40
    assert cache.match(torch.arange(200, 250))[0] == 40
    nothing = PrefixCache(budget=0)
    nothing.add(torch.arange(20), kv(20))
    assert len(nothing) == 0
    with pytest.raises(ValueError, match="budget"):
        PrefixCache(budget=-1)


def test_lookups_go_through_the_block_index_among_thousands_of_entries():
    cache = PrefixCache(budget=10**9)
    shared = torch.arange(48)  # a system line every entry starts with
    for i in range(3000):
        cache.add(torch.cat([shared, torch.arange(1000 + 60 * i, 1060 + 60 * i)]), kv(108))
    assert len(cache) == 3000
    probe = torch.cat([shared, torch.arange(1000 + 60 * 1234, 1030 + 60 * 1234), shared])
    assert cache.match(probe)[0] == 48 + 30
    assert cache.match(torch.cat([shared, torch.tensor([5, 5, 5])]))[0] == 48
    # the index, not a scan, finds them: each entry has its blocks and its last block's hash
    assert len(cache._ends) == 3000
    assert len(cache._index[next(iter(cache._entries.values())).chain[0]]) == 3000


@pytest.fixture(scope="module")
def llama():
    return tiny_llama(max_position_embeddings=512)


@pytest.mark.parametrize("kind", [LlamaBackend, TransformersBackend])
def test_a_prompt_after_its_cached_start_has_the_states_of_one_run_in_full(llama, kind):
    cached, plain = kind(llama), kind(llama)
    plain.prefix_cache = None
    first = torch.arange(3, 40)
    longer = torch.cat([torch.arange(3, 30), torch.arange(60, 75)])  # shares 27 tokens
    other = torch.arange(80, 90)  # shares nothing
    tokens = torch.tensor([5, 6, 7])
    with torch.inference_mode():
        cached.prefill([first])
        session, hidden = cached.prefill([longer, other, first])
        reference, expected = plain.prefill([longer, other, first])
        assert cached.prefix_cache.reused == 27 + 36  # `first` again: all but its last token
        torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
        for _ in range(6):
            hidden = cached.step(session, tokens)
            expected = plain.step(reference, tokens)
        torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
        cached.select(session, torch.tensor([2, 0]))
        plain.select(reference, torch.tensor([2, 0]))
        torch.testing.assert_close(
            cached.step(session, tokens[:2]),
            plain.step(reference, tokens[:2]),
            atol=1e-5,
            rtol=1e-5,
        )
        # a prompt whose start is all cached, alone: no hole, no padding, so its steps need no mask
        again, _ = cached.prefill([first])
        assert not again.padded and cached.prefix_cache.reused == 27 + 36 + 36


def answer(generator, prompt, tokens=12):
    with torch.inference_mode():
        events = list(generator.generate_batch([Request(prompt, Row(GREEDY, {}, tokens))]))
    done = events[-1][1]
    assert isinstance(done, Done)
    return done.token_ids


def test_a_next_turn_reuses_the_answer_and_answers_as_without_the_cache(toy_gpt):
    generator = toy_gpt.generator
    backend = generator.backend
    kept = backend.prefix_cache
    prompt = toy_gpt.tokenizer("[Human]: Tell me a story<eoh> [MMGPT]:", return_tensors="pt")
    first = prompt.input_ids
    more = toy_gpt.tokenizer("[Human]: and then?<eoh> [MMGPT]:", return_tensors="pt").input_ids
    try:
        backend.prefix_cache = None
        said = answer(generator, first)
        turn = torch.cat([first[0], torch.tensor(said), more[0, 1:]])[None]
        expected = answer(generator, turn)
        backend.prefix_cache = cache = PrefixCache()
        assert answer(generator, first) == said
        before = cache.reused
        assert answer(generator, turn) == expected
        # the first turn's prompt and answer, but the answer's last token (never run)
        assert cache.reused - before == first.shape[1] + len(said) - 1
    finally:
        backend.prefix_cache = kept


def test_a_conversation_reuses_its_history(toy_gpt):
    from anygpt_core.chat import Conversation

    backend = toy_gpt.generator.backend
    kept = backend.prefix_cache
    try:
        replies = {}
        for cache in (None, PrefixCache()):
            backend.prefix_cache = cache
            chat = Conversation(toy_gpt, do_sample=False, max_new_tokens=10)
            sent = [chat.send(text) for text in ("Hello", "And then?")]
            replies[cache is None] = [reply.text for reply in sent]
            if cache is not None:
                assert cache.reused > 0
                # the second turn's history came from the cache: what it reports is what it took
                assert sent[1].cached_tokens == cache.reused > 0
            else:
                assert [reply.cached_tokens for reply in sent] == [0, 0]
        assert replies[True] == replies[False]
    finally:
        backend.prefix_cache = kept


def test_run_answers_the_same_with_the_cache_off(capsys, tmp_path):
    outputs = []
    for megabytes in ("0", "256"):
        args = ["run", "--device", "cpu", "--seed", "0", "--prefix-cache-mb", megabytes]
        args += ["--output-dir", str(tmp_path / megabytes), "text|text|Hello there, how are you?"]
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        outputs.append(re.sub(r" in \d+\.\d+ s", "", out))  # the time it took differs
    assert outputs[0] == outputs[1]
