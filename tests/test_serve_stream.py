"""Streamed audio from a real `anygpt serve` on a loopback port: /v1/audio/speech as SSE and as
chunked bytes, chat completions' audio deltas, and the /v1/realtime WebSocket through the official
`openai` client (and `websockets` for what that client cannot send)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from test_serve import KEY, MODEL, start_server, stop

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")

#: The wire's PCM16 rate and the speech codec's rate (16 kHz: 320 samples per code frame).
WIRE, CODEC = 24000, 16000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One row at a time (so a row that is not freed holds up the next request), short answers."""
    folder = tmp_path_factory.mktemp("serve_stream")
    config = folder / "short.json"
    config.write_text(json.dumps({"max_new_tokens": 150}))
    srv = start_server(
        folder / "server.log",
        "--max-batch",
        "1",
        "--config",
        str(config),
        "--max-audio-seconds",
        "3",
    )
    yield srv
    stop(srv)


def speech(server, stream_format: str | None, fmt: str, seed: int = 4) -> list[dict]:
    """The events (SSE) or the one body (`audio`, `None`) of a /v1/audio/speech request."""
    body = {"model": MODEL, "input": "Hello there", "response_format": fmt, "seed": seed}
    if stream_format:
        body["stream_format"] = stream_format
    with httpx.stream(
        "POST",
        server.url + "/v1/audio/speech",
        headers={"Authorization": f"Bearer {KEY}"},
        json=body,
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.read()
        if stream_format == "sse":
            assert response.headers["content-type"].startswith("text/event-stream")
            return [
                json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")
            ]
        return [
            {"type": "body", "data": b"".join(response.iter_bytes()), "headers": response.headers}
        ]


def pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32767


# ---- /v1/audio/speech ------------------------------------------------------------------------


def test_speech_sse_sends_pcm_deltas_then_done_with_usage(server):
    events = speech(server, "sse", "pcm")
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert events[-1]["type"] == "speech.audio.done" and len(deltas) > 2  # window by window
    usage = events[-1]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    frames, rest = divmod(len(audio), 320 * WIRE // CODEC * 2)  # PCM16 at 24 kHz
    assert rest == 0 and frames in {usage["output_tokens"] - 1, usage["output_tokens"]}
    raw = speech(server, "audio", "pcm")[0]  # the same seed, the same windows, the same bytes
    assert raw["headers"]["content-type"] == "audio/pcm" and raw["data"] == audio


def test_speech_streamed_wav_is_the_pcm_at_the_codecs_rate(server):
    import torch
    import torchaudio.functional as AF

    body = speech(server, "audio", "wav")[0]["data"]
    assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt " and body[36:40] == b"data"
    assert int.from_bytes(body[24:28], "little") == CODEC  # the header gives the codec's rate
    assert body[40:44] == b"\xff\xff\xff\xff"  # streamed: size unknown
    wave = pcm(body[44:])
    wire = pcm(speech(server, "audio", "pcm")[0]["data"])
    # the pcm stream is the wav's waveform resampled whole: the chunks' seams left no trace
    whole = AF.resample(torch.from_numpy(wave).float(), CODEC, WIRE).numpy()
    assert wire.shape == whole.shape and np.abs(wire - whole).max() < 3e-4


def test_speech_stream_in_mp3_is_the_whole_file_at_the_end(server):
    events = speech(server, "sse", "mp3", seed=7)
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) == 1 and events[-1]["type"] == "speech.audio.done"
    whole = server.post(
        "/v1/audio/speech",
        json={"model": MODEL, "input": "Hello there", "response_format": "mp3", "seed": 7},
    )
    assert base64.b64decode(deltas[0]["audio"]) == whole.content


def test_speech_stream_format_is_checked(server):
    bad = server.post(
        "/v1/audio/speech", json={"model": MODEL, "input": "Hi", "stream_format": "chunks"}
    )
    assert bad.status_code == 400 and "stream_format" in bad.json()["error"]["message"]


# ---- chat completions ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcm16", "wav"])
def test_chat_stream_sends_audio_deltas_as_decoded(server, fmt):
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello"}],
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": fmt},
        stream=True,
        seed=3,
    )
    data, ids, finish = [], set(), None
    for chunk in stream:
        for choice in chunk.choices:
            audio = choice.delta.audio
            if audio is not None:
                ids.add(audio.id)
                data.append(base64.b64decode(audio.data or ""))
            finish = choice.finish_reason or finish
    assert len([d for d in data if d]) > 2 and len(ids) == 1 and finish in {"stop", "length"}
    audio = b"".join(data)
    if fmt == "pcm16":
        assert len(audio) % (320 * 3) == 0  # whole code frames of PCM16 at 24 kHz
    else:  # a streamed wav: its header, then whole code frames of PCM16 at the codec's rate
        assert audio[:4] == b"RIFF" and int.from_bytes(audio[24:28], "little") == CODEC
        assert (len(audio) - 44) % (320 * 2) == 0


# ---- /v1/realtime ----------------------------------------------------------------------------


def tone(seconds: float, rate: int = WIRE) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def until(connection, kind: str) -> list:
    """Events up to and including the first of type `kind`."""
    seen = []
    for event in connection:
        seen.append(event)
        if event.type == kind:
            return seen
    raise AssertionError(f"closed before {kind}")


def spoken_turn(server) -> list:
    """One spoken answer (at most 120 tokens) to a second of tone, on a new connection."""
    with server.client().realtime.connect(model=MODEL) as connection:
        assert until(connection, "session.created")[-1].session.audio.output.format.rate == WIRE
        connection.session.update(
            session={"type": "realtime", "output_modalities": ["audio"], "max_output_tokens": 120}
        )
        assert until(connection, "session.updated")[-1].session.max_output_tokens == 120
        connection.input_audio_buffer.append(audio=b64(tone(0.5)))
        connection.input_audio_buffer.append(audio=b64(tone(0.5)))
        connection.input_audio_buffer.commit()
        committed = until(connection, "input_audio_buffer.committed")[-1]
        created = until(connection, "conversation.item.created")[-1]
        assert created.item.id == committed.item_id and created.item.role == "user"
        connection.response.create()
        return until(connection, "response.done")


def test_realtime_spoken_turn_with_the_openai_client(server):
    # The answer starts in a speech span, and the demo model samples (unseeded: the realtime API
    # has no seed) when to close it: 17 of 40 seeds close it before frame 100, and the text after
    # it takes the rest of the budget. Streaming window by window needs a long span, so answers
    # are asked for until one spends at least 100 frames on speech (each is checked).
    for _ in range(10):
        events = spoken_turn(server)
        kinds = [e.type for e in events]
        audio = [
            base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta"
        ]
        assert kinds[0] == "response.created" and audio
        assert kinds.index("response.output_audio.delta") < kinds.index(
            "response.output_audio.done"
        )
        done = events[-1].response
        assert done.status == "completed" and done.usage.output_tokens <= 120
        total = sum(len(a) for a in audio)  # whole code frames of PCM16 at 24 kHz
        assert total % (320 * 3) == 0 and 1 <= total // (320 * 3) <= 119
        transcript = [e for e in events if e.type == "response.output_audio_transcript.done"]
        assert len(transcript) == 1
        assert done.output[0].content[0].transcript == transcript[0].transcript
        if total // (320 * 3) >= 100:
            break
    else:
        raise AssertionError("ten spoken answers all closed their speech span before frame 100")
    assert len(audio) > 2  # streamed, window by window


def test_realtime_text_turns_keep_a_history(server):
    with server.client().realtime.connect(model=MODEL) as connection:
        connection.session.update(
            session={"type": "realtime", "output_modalities": ["text"], "max_output_tokens": 12}
        )
        prompts = []
        for turn in range(2):
            connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": f"Count to {turn + 3}"}],
                }
            )
            connection.response.create()
            events = until(connection, "response.done")
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            done = next(e for e in events if e.type == "response.output_text.done")
            assert done.text.strip() == text.strip()
            assert events[-1].response.status == "completed"
            prompts.append(events[-1].response.usage.input_tokens)
    assert prompts[1] > prompts[0] + 12  # the first turn, answer included, is in the second prompt


def raw_socket(server, **kwargs):
    from websockets.sync.client import connect

    url = server.url.replace("http", "ws") + f"/v1/realtime?model={MODEL}"
    return connect(url, open_timeout=10, **kwargs)


def events_until(socket, kind: str) -> list[dict]:
    seen = []
    while True:
        event = json.loads(socket.recv(timeout=30))
        seen.append(event)
        if event["type"] == kind:
            return seen


@pytest.mark.parametrize(
    ("event", "code", "says"),
    [
        ("{not json", "invalid_json", "not valid JSON"),
        ('["a list"]', "invalid_value", "string `type`"),
        ('{"type": "response.fly"}', "unknown_event", "unknown event type 'response.fly'"),
        ('{"type": "input_audio_buffer.append", "audio": "@@@"}', "invalid_value", "base64"),
        ('{"type": "input_audio_buffer.append", "audio": "AAEC"}', "invalid_audio", "16-bit"),
        ("wav", "invalid_audio", "a wav file, not raw PCM16"),
        ("big", "input_audio_buffer_too_large", "limit of 3 s"),
        ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty", "0 ms"),
        ('{"type": "response.create"}', "no_input", "nothing to answer"),
        ('{"type": "response.cancel"}', "response_cancel_not_active", "no response"),
        (
            '{"type": "session.update", "session": {"audio": {"input": {"format": '
            '{"type": "audio/pcmu"}}}}}',
            "invalid_value",
            "only audio/pcm at 24000 Hz",
        ),
        (
            '{"type": "session.update", "session": {"output_modalities": ["image"]}}',
            "invalid_value",
            "output_modalities",
        ),
    ],
)
def test_realtime_bad_events_get_an_error_and_the_connection_stays(server, event, code, says):
    if event == "wav":
        event = json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"RIFF" + tone(0.1))})
    elif event == "big":
        event = json.dumps({"type": "input_audio_buffer.append", "audio": b64(tone(3.5))})
    with raw_socket(server, additional_headers={"Authorization": f"Bearer {KEY}"}) as socket:
        events_until(socket, "session.created")
        socket.send(json.dumps({"type": "input_audio_buffer.clear"}))
        events_until(socket, "input_audio_buffer.cleared")
        socket.send(event)
        error = events_until(socket, "error")[-1]["error"]
        assert error["code"] == code and says in error["message"], error
        socket.send(json.dumps({"type": "session.update", "session": {"instructions": "Be brief"}}))
        assert events_until(socket, "session.updated")[-1]["session"]["instructions"] == "Be brief"


def test_realtime_api_key_by_header_or_subprotocol(server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        raw_socket(server, additional_headers={"Authorization": "Bearer wrong"})
    assert refused.value.response.status_code == 401
    assert b"invalid_api_key" in refused.value.response.body
    with pytest.raises(InvalidStatus) as official:  # the official client, with a wrong key
        server.client(key="wrong").realtime.connect(model=MODEL).enter()
    assert official.value.response.status_code == 401
    protocols = ["realtime", f"openai-insecure-api-key.{KEY}"]
    with raw_socket(server, subprotocols=protocols) as socket:
        assert socket.subprotocol == "realtime"
        assert events_until(socket, "session.created")[-1]["session"]["model"] == MODEL
    other_model = server.url.replace("http", "ws") + "/v1/realtime?model=gpt-4o"
    with pytest.raises(InvalidStatus) as other:
        connect(other_model, subprotocols=protocols)
    assert other.value.response.status_code == 404


def long_text_answer(socket) -> None:
    socket.send(json.dumps({"type": "session.update", "session": {"output_modalities": ["text"]}}))
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "A story"}],
    }
    socket.send(json.dumps({"type": "conversation.item.create", "item": item}))
    socket.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 4000}}))
    events_until(socket, "response.output_text.delta")


@pytest.fixture(scope="module")
def long_answer_seconds(server) -> float:
    """How long a whole 4,000-token text answer takes on this server, on this machine now: a row
    that is not freed holds the next request up to that long (a fixed limit cannot tell the two
    apart on both a fast quiet machine and a slow busy one)."""
    with raw_socket(server, additional_headers={"Authorization": f"Bearer {KEY}"}) as socket:
        for _ in range(3):
            started = time.monotonic()
            long_text_answer(socket)
            done = events_until(socket, "response.done")[-1]["response"]
            if done["usage"]["output_tokens"] == 4000:  # not ended early by a sampled stop token
                return time.monotonic() - started
    pytest.fail("no realtime answer ran to its 4,000 tokens")


def quick_chat(server) -> float:
    started = time.monotonic()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    assert server.post("/v1/chat/completions", json=body).status_code == 200
    return time.monotonic() - started


def test_realtime_cancel_stops_the_answer_and_frees_its_row(server, long_answer_seconds):
    with raw_socket(server, additional_headers={"Authorization": f"Bearer {KEY}"}) as socket:
        for _ in range(5):
            long_text_answer(socket)
            socket.send(json.dumps({"type": "response.cancel"}))
            done = events_until(socket, "response.done")[-1]["response"]
            if done["status"] != "completed":
                break
            # the demo model sampled its stop token before the cancel arrived: ask again
        assert done["status"] == "cancelled"
        assert quick_chat(server) < long_answer_seconds / 3  # --max-batch 1: the row is free


def test_realtime_client_that_leaves_mid_answer_frees_its_row(server, long_answer_seconds):
    socket = raw_socket(server, additional_headers={"Authorization": f"Bearer {KEY}"})
    long_text_answer(socket)
    socket.close()
    assert quick_chat(server) < long_answer_seconds / 3
    assert server.logged(r"WS /v1/realtime 101 .* 1 responses")


def test_realtime_openai_event_shapes_parse_as_the_clients_types(server):
    from openai.types.realtime import RealtimeServerEvent
    from pydantic import TypeAdapter

    adapter = TypeAdapter(RealtimeServerEvent)
    with raw_socket(server, additional_headers={"Authorization": f"Bearer {KEY}"}) as socket:
        seen = events_until(socket, "session.created")
        socket.send(json.dumps({"type": "session.update", "session": {"max_output_tokens": 60}}))
        socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(tone(0.4))}))
        socket.send(json.dumps({"type": "input_audio_buffer.commit"}))
        socket.send(json.dumps({"type": "response.create"}))
        seen += events_until(socket, "response.done")
        socket.send("{}")
        seen += events_until(socket, "error")
    for event in seen:
        adapter.validate_python(event)  # strict: every required field, every literal
    assert {e["type"] for e in seen} >= {
        "session.created",
        "session.updated",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "response.created",
        "response.output_item.added",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.output_item.done",
        "response.done",
        "error",
    }


def test_concurrent_realtime_sessions_stream_side_by_side(server):
    results: list[str] = []

    def one() -> None:
        with server.client().realtime.connect(model=MODEL) as connection:
            connection.session.update(session={"type": "realtime", "max_output_tokens": 60})
            connection.input_audio_buffer.append(audio=b64(tone(0.3)))
            connection.input_audio_buffer.commit()
            connection.response.create()
            results.append(until(connection, "response.done")[-1].response.status)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == ["completed", "completed"]


def test_pcm_helpers_round_trip():
    import torch

    from anygpt_cli.server.audio_out import from_pcm16, pcm16

    samples = torch.tensor([0.0, 0.5, -0.5, 1.5, -1.5])
    back = from_pcm16(pcm16(samples))
    assert torch.allclose(back, samples.clamp(-1, 1), atol=1e-4)
    assert io.BytesIO(pcm16(samples)).getbuffer().nbytes == 10
