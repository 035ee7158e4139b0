"""Generation on a real vLLM server (vLLM's CPU build, `.ci/vllm_env.sh`) with the anygpt-vllm processor.

The server runs in its own environment and serves a tiny seeded LLaMA built by our demo builder with
the demo's tokenizer (head_dim 64: vLLM's CPU attention refuses the demo's 16). The gateway is an
`AnyGPT` of the embedded demo whose engine is `VLLMEngine`: prompts, span parsing and codecs here,
generation there. Without that environment these tests skip, unless ANYGPT_REQUIRE_VLLM is set
(CI), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from anygpt_core.engine.events import Done, TokenEvent
from anygpt_core.errors import EngineUnavailableError, GenerationError
from anygpt_core.testing import VLLMServer, free_port, run_cli

ROOT = Path(__file__).parents[1]


def _vllm_python() -> Path | None:
    path = Path(os.environ.get("ANYGPT_VLLM_PYTHON") or ROOT / ".venv-vllm" / "bin" / "python")
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def demo():
    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    return ensure_demo(discover())


@pytest.fixture(scope="module")
def model_dir(demo, tmp_path_factory):
    from anygpt_core.demo import write_demo_model

    target = tmp_path_factory.mktemp("vllm") / "model"
    return write_demo_model(demo.model_dir, target, hidden_size=128, num_heads=2)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    python = _vllm_python()
    if python is None:
        if os.environ.get("ANYGPT_REQUIRE_VLLM"):
            pytest.fail("no vLLM environment at .venv-vllm: run .ci/vllm_env.sh")
        pytest.skip("no vLLM environment (.ci/vllm_env.sh builds it)")
    log = tmp_path_factory.mktemp("vllm-log") / "serve.log"
    with VLLMServer(python, model_dir, log) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(server):
    from anygpt_core.api import AnyGPT

    return AnyGPT.load(vllm_url=server.url)


@pytest.fixture(scope="module")
def local(model_dir, demo):
    from anygpt_core.api import AnyGPT

    gpt = AnyGPT.load(model_dir, device="cpu", codec_options=demo.options)
    gpt.engine.max_batch = 16
    return gpt


def _greedy(gpt, prepared):
    """The engine request of a prepared task with every state greedy.

    `do_sample=False` sets the target's config; a text answer that opens a span of another
    modality would sample there with that modality's default, and the two engines draw from
    different random generators.
    """
    request = gpt.request(prepared)
    row = request.row
    configs = {name: c.merged(do_sample=False) for name, c in row.span_configs.items()}
    text = row.text_config.merged(do_sample=False)
    return replace(request, row=replace(row, text_config=text, span_configs=configs))


def _done(gpt, prepared, *, greedy=False):
    """Each task's Done, by one call of the engine (all of them in flight together)."""
    requests = [_greedy(gpt, p) if greedy else gpt.request(p) for p in prepared]
    done = [None] * len(prepared)
    for index, event in gpt.engine.submit(requests):
        if isinstance(event, Done):
            done[index] = event
    return done


TASKS = [
    "text|image|a red bus at dawn",
    "text|music|a calm piano piece",
    "text|speech|hello there",
    "text|sequence|a slow wave",
    "text|text|tell me a story",
]


def test_vllm_engine_replaces_the_local_one(gateway):
    from anygpt_core.engine.vllm import VLLMEngine

    assert isinstance(gateway.engine, VLLMEngine)
    assert gateway.model is None  # the gateway holds no weights
    assert gateway.engine.info().model == "anygpt-test"


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_vllm_span_of_every_modality_is_well_formed(gateway, do_sample):
    names = gateway.space.names
    prepared = [
        gateway.prepare(f"text|{name}|a small test", seed=3, do_sample=do_sample, max_new_tokens=90)
        for name in names
    ]
    for name, done in zip(names, _done(gateway, prepared), strict=True):
        tokens = gateway.space.modalities[name]
        spec = tokens.spec
        assert done.reason == "span", name
        (span,) = done.spans
        assert span.modality == name
        assert span.codes.shape[0] == spec.num_codebooks
        if spec.fixed_frames:
            assert span.codes.shape[1] == spec.fixed_frames  # image: exactly 32 codes
        *codes, end = done.token_ids
        assert end == tokens.end_id
        assert len(codes) % spec.num_codebooks == 0
        for position, token in enumerate(codes):  # codebook k at position k of each frame
            assert token in set(tokens.layer_ids[position % spec.num_codebooks].tolist()), (
                name,
                position,
            )


def test_vllm_greedy_ids_equal_the_local_engine(gateway, local):
    remote = _done(
        gateway, [gateway.prepare(t, seed=1, max_new_tokens=160) for t in TASKS], greedy=True
    )
    here = _done(local, [local.prepare(t, seed=1, max_new_tokens=160) for t in TASKS], greedy=True)
    for task, a, b in zip(TASKS, remote, here, strict=True):
        assert a.token_ids == b.token_ids, task
        assert a.reason == b.reason, task
        assert [s.codes.tolist() for s in a.spans] == [s.codes.tolist() for s in b.spans], task


def _peak(spans):
    """The most intervals `(start, end)` open at one time."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    peak = running = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_vllm_sixteen_concurrent_requests(gateway, local, monkeypatch):
    tasks = [f"{TASKS[i % len(TASKS)]} number {i}" for i in range(16)]
    prepared = [gateway.prepare(t, seed=i, max_new_tokens=64) for i, t in enumerate(tasks)]
    spans = []
    stream = gateway.engine._stream

    def timed(request, model, job):
        """Each request's first token and end, timed where its stream is read (its thread)."""
        first = None
        for event in stream(request, model, job):
            if first is None and isinstance(event, TokenEvent):
                first = time.perf_counter()
            yield event
        spans.append((first, time.perf_counter()))

    monkeypatch.setattr(gateway.engine, "_stream", timed)
    done = [None] * 16
    for index, event in gateway.engine.submit([_greedy(gateway, p) for p in prepared]):
        if isinstance(event, Done):
            done[index] = event
    assert all(d is not None for d in done)
    # vLLM ran them together, not one after another: from first token to last they overlapped
    # (16 on a quiet machine; timed as the gateway's threads read the streams, not as its caller
    # got round to their events, which a busy machine lets pile up)
    assert _peak(spans) >= 4, spans
    here = _done(
        local,
        [local.prepare(t, seed=i, max_new_tokens=64) for i, t in enumerate(tasks)],
        greedy=True,
    )
    assert [d.token_ids for d in done] == [d.token_ids for d in here]


def test_vllm_request_past_its_deadline_raises_and_a_cancelled_one_ends(gateway):
    from anygpt_core.engine.batcher import Stop
    from anygpt_core.errors import DeadlineError

    long = gateway.prepare(  # surely long: a greedy answer could end early, before the cancel
        "text|text|tell me a long story",
        seed=0,
        do_sample=False,
        max_new_tokens=1500,
        min_new_tokens=1500,
    )
    with pytest.raises(DeadlineError, match=r"limit of 0\.3 s"):
        list(gateway.stream_many([long], stop=Stop.after(0.3)))
    cancel = threading.Event()
    events = gateway.stream_many([long], stop=Stop(cancel=cancel))
    next(events)
    cancel.set()
    assert not any(isinstance(e, Done) for _, e in events)  # ends without an answer
    assert _done(gateway, [gateway.prepare("text|text|hi", seed=0)])[0].token_ids


def test_vllm_seeded_sampling_repeats(gateway):
    prepared = [gateway.prepare(t, seed=7, max_new_tokens=120) for t in TASKS]
    once = _done(gateway, prepared)
    again = _done(gateway, prepared)
    assert [d.token_ids for d in once] == [d.token_ids for d in again]
    assert all(d.reason in {"span", "stop", "length"} for d in once)


def _complete(server, body):
    request = urllib.request.Request(
        f"{server.url}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def test_vllm_processor_is_inert_for_an_ordinary_request(server, gateway, model_dir):
    import torch
    from transformers import LlamaForCausalLM

    prompt = gateway.encode_prompt("[Human]: hello<eoh>[MMGPT]: ")[0].tolist()
    body = {
        "model": "anygpt-test",
        "prompt": prompt,
        "max_tokens": 24,
        "temperature": 0,
        "return_token_ids": True,
        "skip_special_tokens": False,
    }
    theirs = _complete(server, body)["choices"][0]["token_ids"]
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=0
        )
    assert theirs == out[0, len(prompt) :].tolist()  # transformers' unconstrained greedy ids
    stray = set(gateway.engine.constraint.stray_ids.tolist())
    assert stray & set(theirs)  # ids the span rules would have masked: the processor did not


def test_vllm_processor_refuses_a_bad_payload(server):
    body = {
        "model": "anygpt-test",
        "prompt": [1, 5],
        "max_tokens": 2,
        "vllm_xargs": {"anygpt": "{"},
    }
    with pytest.raises(urllib.error.HTTPError) as caught:
        _complete(server, body)
    assert caught.value.code == 400
    assert "span payload" in caught.value.read().decode()


def test_vllm_refused_request_is_a_generation_error(gateway):
    prepared = gateway.prepare("text|text|hi", seed=0, max_new_tokens=4000)  # > max_model_len
    with pytest.raises(GenerationError, match="refused the request"):
        list(gateway.stream(prepared))


def test_cli_run_on_vllm(server, capsys, tmp_path):
    code, out, err = run_cli(
        [
            "run",
            "text|image|a red bus",
            "text|music|calm piano",
            "text|text|hi",
            "--engine",
            "vllm",
            "--vllm-url",
            server.url,
            "--seed",
            "0",
            "--json",
            "--batch-size",
            "4",
            "--output-dir",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["instruction"] for r in results] == [
        "text|image|a red bus",
        "text|music|calm piano",
        "text|text|hi",
    ]
    assert [len(r["files"]) for r in results] == [1, 1, 0]
    assert all(
        Path(f).is_file() and Path(f).parent == tmp_path for r in results for f in r["files"]
    )
    assert results[0]["spans"][0]["shape"] == [1, 32]


def test_cli_eval_on_vllm(server, capsys, tmp_path):
    """`anygpt eval --engine vllm`: answers come from the vLLM server; beams are refused up front."""
    from eval_data import write_librispeech

    root = write_librispeech(tmp_path / "libri", count=3)
    common = [
        "eval",
        "librispeech-asr",
        "--data",
        f"librispeech-asr={root}",
        "--engine",
        "vllm",
        "--vllm-url",
        server.url,
    ]
    code, _, err = run_cli(
        [*common, "--decode", "model", "--max-new-tokens", "12", "--out", str(tmp_path / "out")],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["engine"] == "vllm"
    entry = report["tasks"]["librispeech-asr"]
    assert (entry["n"], entry["skipped"]) == (3, 0) and entry["value"] is not None
    code, _, err = run_cli([*common, "--out", str(tmp_path / "paper")], capsys)
    assert code == 6 and "text answers use beam search" in err


def test_cli_run_on_vllm_that_is_down(capsys, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli(
        [
            "run",
            "text|text|hi",
            "--engine",
            "vllm",
            "--vllm-url",
            url,
            "--output-dir",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == EngineUnavailableError.exit_code == 8
    assert err.strip().splitlines()[-1] == (
        f"Error: vLLM server at {url}: connection refused (is `vllm serve` running there?)"
    )
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--engine", "vllm"],
            "Error: --engine vllm needs --vllm-url URL (a vLLM server's base URL)",
        ),
        (["--vllm-url", "http://127.0.0.1:1"], "Error: --vllm-url is for --engine vllm"),
        (["--engine", "remote"], "Error: --engine remote: use local or vllm"),
    ],
)
def test_cli_engine_flags_are_checked(capsys, args, message):
    code, _, err = run_cli(["run", "text|text|hi", *args], capsys)
    assert code == 6
    assert err.strip().splitlines()[-1] == message


class _Proxy:
    """A TCP forwarder to the vLLM server that the test can cut (a server gone after start)."""

    def __init__(self, target: str, *, hold_after: int | None = None) -> None:
        """`hold_after`: forward only that many server-sent events of the answer, then hold."""
        import socket
        import threading

        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.hold_after = hold_after
        self.held = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open = True
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b, hold in ((client, upstream, None), (upstream, client, self.hold_after)):
                threading.Thread(target=self._pipe, args=(a, b, hold), daemon=True).start()

    def _pipe(self, a, b, hold: int | None) -> None:
        events = 0
        try:
            while data := a.recv(65536):
                if hold is not None and events + data.count(b"\n\n") >= hold:
                    end = -1
                    for _ in range(hold - events):
                        end = data.index(b"\n\n", end + 1)
                    self.held.set()  # before the last event goes: its reader may act on it
                    b.sendall(data[: end + 2])
                    while self.open:  # nothing more until cut
                        time.sleep(0.05)
                    return
                events += data.count(b"\n\n")
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        import socket

        self.open = False
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for s in self.sockets:  # shutdown wakes the pipes' recv and tells both ends
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def _start_gateway(url: str, log: Path):
    import re
    import subprocess
    import sys

    anygpt = Path(sys.executable).with_name("anygpt")
    out = log.open("wb")
    proc = subprocess.Popen(
        [str(anygpt), "serve", "--engine", "vllm", "--vllm-url", url, "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=out,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("gateway did not start: " + log.read_text())


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_serve_on_vllm_answers_as_the_local_engine_and_503_when_vllm_goes(server, local, tmp_path):
    from anygpt_core.chat import Conversation

    proxy = _Proxy(server.url)
    proc, url = _start_gateway(proxy.url, tmp_path / "gateway.log")
    try:
        assert "on the vLLM server at" in (tmp_path / "gateway.log").read_text()
        for prompt in ["tell me a story", "hello there"]:
            body = {
                "model": "anygpt-demo",
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
                "max_tokens": 12,
            }
            status, answer = _post(url, body)
            assert status == 200, answer
            message = answer["choices"][0]["message"]
            reply = Conversation(local, do_sample=False, max_new_tokens=12).send(prompt)
            if not reply.spans and "media" not in message:  # spans would sample by modality
                assert message["content"] == reply.text
        spoken = _post(url, {**body, "modalities": ["text", "audio"], "max_tokens": 200})
        assert spoken[0] == 200 and spoken[1]["choices"][0]["message"]["audio"]["data"]
        proxy.cut()
        status, error = _post(url, body)
        assert status == 503, error
        assert "vLLM server at" in error["error"]["message"]
        assert error["error"]["code"] == "engine_unavailable"
    finally:
        proxy.cut()
        proc.terminate()
        proc.wait(timeout=60)


def test_vllm_server_dying_mid_request_is_engine_unavailable(server, gateway):
    # the last test of the module: it kills the module's server. A proxy passes the answer's
    # first 5 events and holds the rest, so the server cannot have sent the whole answer before
    # it dies however late the gateway reads.
    from anygpt_core.api import AnyGPT

    proxy = _Proxy(server.url, hold_after=5)
    through = AnyGPT.load(vllm_url=proxy.url)
    prepared = through.prepare(
        "text|text|tell me a long story", seed=0, do_sample=False, max_new_tokens=1500
    )

    def crash() -> None:
        if proxy.held.wait(timeout=300):
            time.sleep(0.3)  # the gateway reads what it was sent
        server.kill()
        proxy.cut()

    killer = threading.Thread(target=crash, daemon=True)
    killer.start()
    seen = 0

    def read() -> None:
        nonlocal seen
        for event in through.stream(prepared):
            seen += isinstance(event, TokenEvent)

    with pytest.raises(EngineUnavailableError, match=f"vLLM server at {proxy.url}: ") as caught:
        read()
    killer.join(timeout=60)
    assert proxy.held.is_set()
    assert seen >= 1
    assert "\n" not in str(caught.value)
    with pytest.raises(EngineUnavailableError, match="connection refused"):
        list(gateway.stream(gateway.prepare("text|text|hi", seed=0)))
