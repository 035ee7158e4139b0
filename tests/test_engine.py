"""The engine: one span constraint, three drivers (batched loop, alone, model.generate), many callers."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from anygpt_core import DecodingConfig
from anygpt_core.engine.backends import TransformersBackend
from anygpt_core.engine.constraint import Row, SpanConstraint
from anygpt_core.engine.events import Done, Request, SpanClosed, TokenEvent
from anygpt_core.engine.hf import generate_ids
from anygpt_core.engine.loop import Generator

GREEDY = DecodingConfig(do_sample=False)


def toy_requests(gpt):
    """Different prompts, tasks, budgets and targets: text answers, forced and free spans."""
    start = gpt.space.require("toy").start_id

    def ids(text, *extra):
        prompt = gpt.tokenizer(text, return_tensors="pt").input_ids[0]
        return torch.cat([prompt, torch.tensor(extra, dtype=torch.long)])

    toy = {"toy": GREEDY}
    return [
        Request(ids("[Human]: Hello there<eoh> [MMGPT]:"), Row(GREEDY, toy, 30)),
        Request(
            ids("[Human]: Turn this text into a signal. This is input: waves<eoh> [MMGPT]:", start),
            Row(GREEDY, toy, 41, open_span="toy", stop_after_span=True),
        ),
        Request(ids("[Human]: x<eoh> [MMGPT]:", start), Row(GREEDY, toy, 9, open_span="toy")),
        Request(
            ids("[Human]: A much longer question about many things, asked slowly<eoh> [MMGPT]:"),
            Row(DecodingConfig(do_sample=False, min_new_tokens=12), toy, 17),
        ),
        Request(
            ids("[Human]: hi<eoh> [MMGPT]:", start),
            Row(
                GREEDY, {"toy": DecodingConfig(do_sample=False, repetition_penalty=1.5)}, 25, "toy"
            ),
        ),
    ]


def batch_ids(generator, requests, **kwargs):
    done = {}
    with torch.inference_mode():
        for index, event in generator.generate_batch(requests, **kwargs):
            if isinstance(event, Done):
                done[index] = event.token_ids
    return [done[i] for i in range(len(requests))]


def test_every_driver_gives_the_same_greedy_ids(toy_gpt):
    """Batched loop (lean path), each request alone, the generic transformers path, and
    model.generate with the constraint as a logits processor: identical ids, spans included."""
    requests = toy_requests(toy_gpt)
    alone = [batch_ids(toy_gpt.generator, [r])[0] for r in requests]
    assert batch_ids(toy_gpt.generator, requests) == alone
    generic = Generator(TransformersBackend(toy_gpt.model), toy_gpt.space)
    assert batch_ids(generic, requests) == alone
    with torch.inference_mode():
        assert generate_ids(toy_gpt.model, toy_gpt.generator.constraint, requests) == alone
    toy = toy_gpt.space.require("toy")
    assert toy.end_id in alone[1] and len(alone[2]) == 9  # a span closed; a budget spent


def test_seeded_sampled_rows_are_the_same_in_a_batch_as_alone(toy_gpt):
    sampled = DecodingConfig(do_sample=True, temperature=1.5, top_k=0)
    requests = [
        Request(
            r.input_ids,
            Row(sampled, {"toy": sampled}, r.row.max_new_tokens, r.row.open_span),
            seed=i,
        )
        for i, r in enumerate(toy_requests(toy_gpt))
    ]
    alone = [batch_ids(toy_gpt.generator, [r])[0] for r in requests]
    assert batch_ids(toy_gpt.generator, requests) == alone
    assert len({tuple(a) for a in alone}) == len(alone)


def test_batched_events_are_each_rows_events_alone(toy_gpt):
    requests = toy_requests(toy_gpt)
    with torch.inference_mode():
        together = list(toy_gpt.generator.generate_batch(requests))
        for i, request in enumerate(requests):
            mine = [e for j, e in together if j == i]
            alone = list(toy_gpt.generator.generate_batch([request]))
            assert [type(e) for e in mine] == [type(e) for _, e in alone]
            spans = [e for e in mine if isinstance(e, SpanClosed)]
            closed = [x for x in alone if isinstance(x[1], SpanClosed)]
            for a, (_, b) in zip(spans, closed, strict=True):
                assert torch.equal(a.codes, b.codes) and a.forced == b.forced
            assert isinstance(mine[-1], Done)


def test_a_cancelled_row_leaves_the_batch_and_the_others_finish(toy_gpt):
    requests = toy_requests(toy_gpt)
    alone = batch_ids(toy_gpt.generator, requests)
    stopped = {0}
    ids = {}
    with torch.inference_mode():
        for index, event in toy_gpt.generator.generate_batch(
            requests, cancelled=lambda row: row in stopped
        ):
            if isinstance(event, Done):
                ids[index] = event.token_ids
    assert 0 not in ids and all(ids[i] == alone[i] for i in range(1, len(requests)))


def test_constraint_replay_equals_step_by_step(toy_gpt):
    constraint = SpanConstraint(toy_gpt.space)
    requests = toy_requests(toy_gpt)
    ids = batch_ids(toy_gpt.generator, requests)
    rows = [r.row for r in requests]
    width = max(len(i) for i in ids)
    eos = toy_gpt.space.eos_id
    tokens = torch.tensor([i + [eos] * (width - len(i)) for i in ids])
    state = constraint.start(rows)
    for t in range(width):
        legal = constraint.mask(state)
        running = torch.tensor([not done for done in state.done])
        # every generated token was legal where it was chosen
        assert bool(legal[running.nonzero().flatten(), tokens[running, t]].all())
        constraint.advance(state, tokens[:, t])
    replayed = constraint.replay(rows, tokens)
    for name in ("modality", "position", "produced", "reason", "frames"):
        assert getattr(state, name) == getattr(replayed, name)
    assert all(state.done)


def test_constraint_masks_per_state(toy_gpt):
    space = toy_gpt.space
    toy = space.require("toy")
    constraint = SpanConstraint(space)
    rows = [
        Row(GREEDY, max_new_tokens=50),
        Row(GREEDY, max_new_tokens=50, open_span="toy"),
        Row(GREEDY, max_new_tokens=2),  # too little budget for a span
        Row(DecodingConfig(min_new_tokens=5), max_new_tokens=50),
    ]
    state = constraint.start(rows)
    legal = constraint.mask(state)
    assert bool(legal[0, toy.start_id]) and not bool(legal[2, toy.start_id])
    assert not bool(legal[0, toy.code_ids].any()) and not bool(legal[0, toy.end_id])
    assert bool(legal[0, space.eos_id]) and not bool(legal[3, space.eos_id])
    assert legal[1].nonzero().flatten().tolist() == toy.layer_ids[0].tolist()  # codebook 0, no end
    constraint.advance(state, torch.tensor([5, int(toy.layer_ids[0][3]), 5, 5]))
    legal = constraint.mask(state)
    assert legal[1].nonzero().flatten().tolist() == toy.layer_ids[1].tolist()  # then codebook 1
    constraint.advance(state, torch.tensor([5, int(toy.layer_ids[1][0]), 5, 5]))
    legal = constraint.mask(state)
    assert bool(legal[1, toy.end_id])  # a whole frame: the span may end
    assert constraint.config(state, 1) is GREEDY
    assert state.reason == [0, 0, 2, 0]  # row 2 spent its 2 tokens
    assert constraint.mask(state)[2].nonzero().flatten().tolist() == list(space.stop_ids)


def test_concurrent_callers_get_the_sequential_results(toy_gpt):
    tasks = ["text|toy|a slow wave", "text|text|Tell me a story", "text|toy|noise", "text|text|hi"]
    sequential = [toy_gpt.run(t, seed=i, save=False) for i, t in enumerate(tasks)]
    results: dict[int, object] = {}

    def call(i):
        results[i] = toy_gpt.run(tasks[i], seed=i, save=False)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(tasks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, expected in enumerate(sequential):
        got = results[i]
        assert got.text == expected.text and got.new_tokens == expected.new_tokens
        assert [m.data() for m in got.media] == [m.data() for m in expected.media]


def test_an_interrupted_stream_leaves_the_model_usable(toy_gpt):
    prepared = [toy_gpt.prepare("text|text|Tell me a story", seed=s) for s in range(3)]
    expected = toy_gpt.run("text|toy|a wave", seed=4, save=False)
    stream = toy_gpt.stream_many(prepared)
    for count, (_, event) in enumerate(stream):
        if isinstance(event, TokenEvent) and count > 5:
            break
    stream.close()
    again = toy_gpt.run("text|toy|a wave", seed=4, save=False)
    assert again.new_tokens == expected.new_tokens and again.text == expected.text
    assert [m.data() for m in again.media] == [m.data() for m in expected.media]


def test_run_many_fails_only_the_bad_task(toy_gpt, tmp_path):
    from anygpt_core.api import AnyGPT
    from anygpt_core.errors import AnyGPTError, InputError

    gpt = AnyGPT(
        toy_gpt.model,
        toy_gpt.tokenizer,
        toy_gpt.plugins,
        toy_gpt.codecs,
        output_dir=tmp_path / "out",
        prompt_encoder=toy_gpt.prompt_encoder,
    )
    tasks = ["text|toy|a wave", "toy|text|missing.txt", "not a task", "text|text|hello"]
    results = gpt.run_many(tasks, seed=0)
    assert isinstance(results[1], InputError) and "missing.txt" in str(results[1])
    assert isinstance(results[2], AnyGPTError)
    assert results[0].files and results[0].files[0].parent == tmp_path / "out"
    assert results[3].text == gpt.run("text|text|hello", seed=0, save=False).text
    assert results[0].text == "" and results[0].spans[0].modality == "toy"


def test_media_in_memory_writes_no_file(toy_gpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = toy_gpt.run("text|toy|a wave", seed=2, save=False)
    assert result.files == [] and not any(tmp_path.iterdir())
    (media,) = result.media
    values = [float(v) for v in media.data().split()]
    assert len(values) == result.spans[0].codes.shape[1]


def long_request(gpt, tokens=400):
    """A text answer that cannot end before `tokens` tokens."""
    prompt = gpt.tokenizer("[Human]: Tell me everything<eoh> [MMGPT]:", return_tensors="pt")
    config = DecodingConfig(do_sample=False, min_new_tokens=tokens)
    return Request(prompt.input_ids[0], Row(config, {"toy": GREEDY}, tokens))


def test_a_stop_flag_set_from_another_thread_ends_a_blocked_caller(toy_gpt):
    """The caller is blocked waiting for events; the flag alone frees it and its rows."""
    from anygpt_core.engine.batcher import LocalEngine, Stop

    engine = LocalEngine(toy_gpt.generator, max_batch=1)
    first = engine.submit([long_request(toy_gpt, 4000)])
    next(first)  # the long request holds the only row
    cancel = threading.Event()
    queued = engine.submit([long_request(toy_gpt, 50)], stop=Stop(cancel=cancel))
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.extend(queued))
    waiter.start()
    cancel.set()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and got == []  # ended without an event, while still queued
    first.close()
    done = [e for _, e in engine.submit([long_request(toy_gpt, 20)]) if isinstance(e, Done)]
    assert len(done) == 1 and len(done[0].token_ids) == 20


def test_a_deadline_raises_for_a_queued_caller_and_frees_a_running_one(toy_gpt):
    import pytest

    from anygpt_core.engine.batcher import LocalEngine, Stop
    from anygpt_core.errors import DeadlineError

    engine = LocalEngine(toy_gpt.generator, max_batch=1)
    running = engine.submit([long_request(toy_gpt, 4000)], stop=Stop.after(0.5))
    next(running)
    queued = engine.submit([long_request(toy_gpt, 50)], stop=Stop.after(0.2))
    with pytest.raises(DeadlineError, match=r"limit of 0\.2 s"):
        list(queued)  # never started: the running row held the batch
    with pytest.raises(DeadlineError, match=r"limit of 0\.5 s"):
        list(running)  # 4000 tokens do not fit in half a second on the demo model
    # both left: the next caller runs at once
    done = [e for _, e in engine.submit([long_request(toy_gpt, 20)]) if isinstance(e, Done)]
    assert len(done) == 1 and len(done[0].token_ids) == 20


def staggered_ids(generator, requests, *, every=3):
    """Ids from one `Batch` that admits a new request every `every` steps (continuous batching)."""
    from anygpt_core.engine.loop import Batch

    batch = Batch(generator)
    done, waiting, steps = {}, list(enumerate(requests)), 0
    with torch.inference_mode():
        while waiting or batch:
            if waiting and steps % every == 0:
                index, request = waiting.pop(0)
                list(batch.admit([request], [index]))
            for key, event in batch.step():
                if isinstance(event, Done):
                    done[key] = event.token_ids
            steps += 1
    return [done[i] for i in range(len(requests))]


def test_rows_that_join_a_running_batch_get_their_ids_alone(toy_gpt):
    """Greedy and seeded rows admitted between steps, on both backends (their caches are joined,
    left-padded): each row's ids are its ids alone."""
    sampled = DecodingConfig(do_sample=True, temperature=1.3, top_p=0.9, repetition_penalty=1.2)
    requests = toy_requests(toy_gpt)
    requests += [
        Request(r.input_ids, Row(sampled, {"toy": sampled}, r.row.max_new_tokens), seed=i)
        for i, r in enumerate(requests)
    ]
    alone = [batch_ids(toy_gpt.generator, [r])[0] for r in requests]
    assert staggered_ids(toy_gpt.generator, requests) == alone
    generic = Generator(TransformersBackend(toy_gpt.model), toy_gpt.space)
    assert staggered_ids(generic, requests, every=2) == alone


def test_the_engine_fills_a_finished_row_at_once(toy_gpt):
    """Two rows: a long answer and a short one; a third request takes the short one's place
    while the long one runs, so it ends first (a static batch would wait for the long one)."""
    from anygpt_core.engine.batcher import LocalEngine

    long, short = toy_requests(toy_gpt)[3], toy_requests(toy_gpt)[2]
    long = Request(long.input_ids, Row(DecodingConfig(do_sample=False, min_new_tokens=60), {}, 60))
    requests = [long, short, short]
    alone = [batch_ids(toy_gpt.generator, [r])[0] for r in requests]
    engine = LocalEngine(toy_gpt.generator, max_batch=2)
    order, ids = [], {}
    for index, event in engine.submit(requests):
        if isinstance(event, Done):
            order.append(index)
            ids[index] = event.token_ids
    assert [ids[i] for i in range(3)] == alone
    assert order == [1, 2, 0]


def test_a_prefill_budget_admits_the_waiting_rows_a_few_at_a_time(toy_gpt):
    """With room for one prompt per step, rows join one by one, oldest first; answers unchanged."""
    from anygpt_core.engine.batcher import LocalEngine

    requests = toy_requests(toy_gpt)
    alone = [batch_ids(toy_gpt.generator, [r])[0] for r in requests]
    engine = LocalEngine(toy_gpt.generator, max_batch=8, prefill_tokens=1)
    first_events: list[int] = []
    ids = {}
    for index, event in engine.submit(requests):
        if index not in first_events:
            first_events.append(index)
        if isinstance(event, Done):
            ids[index] = event.token_ids
    assert [ids[i] for i in range(len(requests))] == alone
    assert first_events == list(range(len(requests)))  # admitted in arrival order


def test_a_cache_rows_cannot_join_runs_its_batch_to_the_end_first(toy_gpt):
    """A backend whose cache cannot take new rows (a sliding window): newcomers wait for the
    running batch to end, as in static batching, and every answer is its answer alone."""
    from anygpt_core.engine.batcher import LocalEngine

    class Fixed(TransformersBackend):
        def can_join(self, session):
            return False

    generator = Generator(Fixed(toy_gpt.model), toy_gpt.space)
    long, short = toy_requests(toy_gpt)[3], toy_requests(toy_gpt)[2]
    long = Request(long.input_ids, Row(DecodingConfig(do_sample=False, min_new_tokens=60), {}, 60))
    requests = [long, short, short]
    alone = [batch_ids(toy_gpt.generator, [r])[0] for r in requests]
    order, ids = [], {}
    for index, event in LocalEngine(generator, max_batch=2).submit(requests):
        if isinstance(event, Done):
            order.append(index)
            ids[index] = event.token_ids
    assert [ids[i] for i in range(3)] == alone
    assert order == [1, 0, 2]


def os_threads() -> set[str]:
    """The ids of the process's threads, OpenMP's helpers included."""
    return set(os.listdir("/proc/self/task"))


def eventually(check, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def needs_libgomp():
    from anygpt_core.engine import threads

    if threads._libgomp_pause() is None or torch.get_num_threads() < 2:
        pytest.skip("torch here runs on one thread or not on libgomp")


def parallel_work():
    torch.ones(4_000_000).mul_(2)  # large enough for an OpenMP parallel region


def test_release_lets_a_threads_idle_openmp_helpers_exit():
    """While another thread's idle team exists, libgomp wakes helpers on every operation."""
    from anygpt_core.engine import threads

    needs_libgomp()
    seen: dict[str, object] = {}

    def work():
        before = os_threads()
        parallel_work()
        team = os_threads() - before
        seen["team"] = len(team)
        threads.release()
        seen["left"] = eventually(lambda: not team & os_threads())
        parallel_work()  # the team starts again when needed
        seen["again"] = len(os_threads() - before)
        threads.release()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert seen == {"team": torch.get_num_threads() - 1, "left": True, "again": seen["team"]}


def test_an_idle_engine_and_its_waiting_caller_hold_no_openmp_team(toy_gpt, monkeypatch):
    from anygpt_core.engine import threads
    from anygpt_core.engine.batcher import LocalEngine

    needs_libgomp()
    backend = toy_gpt.generator.backend
    step = backend.step

    def working_step(session, tokens):
        parallel_work()  # the toy model's operations are too small to start a team
        return step(session, tokens)

    monkeypatch.setattr(backend, "step", working_step)
    requests = toy_requests(toy_gpt)[:2]  # (tokenizing may start the tokenizers' own threads)
    threads.release()
    before = os_threads()
    parallel_work()  # the caller's team, as a thread that loaded a model has
    assert os_threads() - before
    engine = LocalEngine(toy_gpt.generator, max_batch=2)
    events = list(engine.submit(requests))
    assert sum(isinstance(event, Done) for _, event in events) == 2
    # the worker thread stays, waiting; its helpers and the caller's have gone
    worker = {str(engine._worker.native_id)}
    assert eventually(lambda: os_threads() - before == worker)


def test_release_without_torch_loaded_does_not_load_it():
    """A caller of a remote engine (vLLM) waits through the same code and needs no torch."""
    import subprocess
    import sys

    code = (
        "import sys; from anygpt_core.engine import threads; threads.release(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_set_stop_flag_ends_the_events_even_those_already_queued():
    """A producer faster than its reader may have queued a whole answer before the flag."""
    from anygpt_core.engine.batcher import CANCELLED, Caller, Stop

    cancel = threading.Event()
    caller = Caller(stop=Stop(cancel=cancel))
    caller.events.put("first")
    caller.events.put("the rest, and the answer's end")
    assert caller.next_item() == "first"
    cancel.set()
    assert caller.next_item() is CANCELLED
    assert caller.gone
