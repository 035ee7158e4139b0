"""`AnyGPT.run_many`: spans decode on a decode stage beside generation; results stay in task order."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from anygpt_core.engine.events import Done
from anygpt_core.errors import GenerationError


def test_spans_decode_while_the_engine_generates_and_errors_stay_per_task(
    toy_gpt, tmp_path, monkeypatch
):
    toy_gpt.output_dir = tmp_path
    toy_gpt.engine.max_batch = 4
    tasks = ["text|toy|one", "text|toy|two", "text|text|hi", "text|toy|three"]
    alone = [toy_gpt.run(task, seed=0, save=False) for task in tasks if "two" not in task]
    decoding = threading.Event()
    threads = []
    decode = toy_gpt._decode_answer

    def failing(prepared, spans):
        threads.append(threading.current_thread().name)
        decoding.set()
        if prepared.task.payload == "two":
            raise GenerationError("two: cannot decode")
        return decode(prepared, spans)

    monkeypatch.setattr(toy_gpt, "_decode_answer", failing)
    ended, waited, released = [], [], []

    def on_event(index, event):
        if isinstance(event, Done):
            ended.append(index)
            if len(ended) == len(tasks):  # the last task's end: the first ones decode meanwhile
                waited.append(decoding.wait(5))

    results = toy_gpt.run_many(
        tasks, seed=0, on_event=on_event, on_result=lambda i, r: released.append(i)
    )
    assert waited == [True] and set(threads) == {"anygpt-decode"}
    assert released == [0, 1, 2, 3]
    assert isinstance(results[1], GenerationError) and str(results[1]) == "two: cannot decode"
    kept = [results[0], results[2], results[3]]
    assert [r.text for r in kept] == [r.text for r in alone]
    assert [[m.data() for m in r.media] for r in kept] == [
        [m.data() for m in r.media] for r in alone
    ]
    assert [f.read_bytes() for r in kept for f in r.files] == [
        m.data() for r in alone for m in r.media
    ]
    assert not any(t.name == "anygpt-decode" for t in threading.enumerate())


class _Tasks:
    """What the decode stage asks of `AnyGPT`, with a record of the order of each step."""

    def __init__(self, fail: int | None = None, gate: threading.Event | None = None) -> None:
        self.decoded: list[int] = []
        self.written: list[int] = []
        self.fail = fail
        self.gate = gate
        self.decoding = threading.Event()

    def _generated(self, prepared, events):
        return SimpleNamespace(index=prepared, spans=[])

    def _decode_answer(self, prepared, spans):
        self.decoding.set()
        if self.gate is not None:
            self.gate.wait(5)
        if prepared == self.fail:
            raise RuntimeError("a bug in a codec")
        self.decoded.append(prepared)
        return []

    def _complete(self, prepared, result, values, *, started, save):
        self.written.append(prepared)
        return result


def test_the_decode_stage_writes_in_task_order_whatever_order_tasks_end():
    from anygpt_core.api import _DecodeStage

    gpt = _Tasks()
    with _DecodeStage(gpt, 4, started=0.0, save=True) as stage:
        for index in (2, 3, 0):
            stage.put(index, index, [])
        stage.put(1, GenerationError("no room"), [])
        released = list(stage.rest())
    assert gpt.decoded == [2, 3, 0] and gpt.written == [0, 2, 3]
    assert [i for i, _ in released] == [0, 1, 2, 3]
    assert isinstance(released[1][1], GenerationError)


def test_a_bug_on_the_decode_stage_reaches_the_caller_and_stops_the_worker():
    from anygpt_core.api import _DecodeStage

    stage = _DecodeStage(_Tasks(fail=1), 2, started=0.0, save=True)
    with pytest.raises(RuntimeError, match="a bug in a codec"), stage:  # noqa: PT012
        stage.put(0, 0, [])
        stage.put(1, 1, [])
        list(stage.rest())
    assert not any(t.name == "anygpt-decode" for t in threading.enumerate())


def test_a_caller_that_leaves_early_stops_the_decode_stage_after_its_current_task():
    from anygpt_core.api import _DecodeStage

    gate = threading.Event()
    gpt = _Tasks(gate=gate)
    with _DecodeStage(gpt, 3, started=0.0, save=True) as stage:
        for index in range(3):
            stage.put(index, index, [])
        assert gpt.decoding.wait(5)
        threading.Timer(0.2, gate.set).start()  # the caller leaves while task 0 decodes
    assert gpt.decoded == [0] and gpt.written == [0]
    assert not any(t.name == "anygpt-decode" for t in threading.enumerate())
