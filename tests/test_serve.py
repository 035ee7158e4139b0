"""`anygpt serve` on a loopback port, driven by the official `openai` client (and raw HTTP for abuse)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEY = "sk-test-key"
MODEL = "anygpt-demo"
ANYGPT = Path(sys.executable).with_name("anygpt")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self, key: str = KEY, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kwargs)

    def post(self, path: str, key: str | None = KEY, **kwargs) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.post(self.url + path, headers=headers, timeout=120, **kwargs)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def logged(self, pattern: str, timeout: float = 15) -> bool:
        """Whether the log shows `pattern` within `timeout` s (a request's line follows its answer)."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def start_server(log: Path, *args: str) -> Server:
    env = {**os.environ, "ANYGPT_API_KEY": KEY}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ANYGPT), "serve", "--port", "0", "--device", "cpu", *args],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
        )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if found:
            server = Server(proc, found.group(1), log)
            httpx.get(server.url + "/health", timeout=10).raise_for_status()
            return server
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start: " + log.read_text())


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.proc.kill()


def wav_bytes(seconds: float = 1.0, rate: int = 16000, freq: float = 220.0) -> bytes:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="WAV")
    return buffer.getvalue()


def png_bytes(size: int = 64) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def voice(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("voice") / "anna.wav"
    path.write_bytes(wav_bytes(2.0, freq=330))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, voice):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = start_server(
        log,
        "--voice",
        f"anna={voice}",
        "--max-body-mb",
        "2",
        "--max-audio-seconds",
        "5",
        "--max-image-pixels",
        "100000",
        "--max-batch",
        "16",
    )
    yield srv
    stop(srv)


def chat(client, content, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )


# ---- endpoints ------------------------------------------------------------------------------


def test_health_models_and_start_line(server):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
    assert {"image", "speech", "music"} <= set(health["modalities"])
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert "Serving anygpt-demo (plugins: " in server.text()
    assert "with an API key" in server.text()
    assert server.logged(r"GET /v1/models 200 \d+\.\d+s"), server.text()  # a line per request


def test_health_reports_the_prefix_cache(server):
    before = httpx.get(server.url + "/health").json()["prefix_cache"]
    assert before["budget_bytes"] == 256 * 2**20
    client = server.client()
    messages = [{"role": "user", "content": "A question long enough to be worth keeping, surely."}]
    usages = [  # the second time, its prompt is all in the cache but its last token
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4).usage
        for _ in range(2)
    ]
    assert usages[1].prompt_tokens_details.cached_tokens == usages[1].prompt_tokens - 1
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
    after = httpx.get(server.url + "/health").json()["prefix_cache"]
    assert after["computed_tokens"] > before["computed_tokens"]
    assert after["reused_tokens"] > before["reused_tokens"]
    assert after["entries"] >= 1 and 0 < after["bytes"] <= after["budget_bytes"]


def test_chat_text_is_seeded_and_matches_the_python_api(server):
    from anygpt_core.api import AnyGPT
    from anygpt_core.chat import Conversation

    client = server.client()
    first = chat(client, "Tell me a joke", seed=7, temperature=0.8)
    again = chat(client, "Tell me a joke", seed=7, temperature=0.8)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.usage.completion_tokens > 0 and first.usage.prompt_tokens > 10
    assert first.choices[0].finish_reason in {"stop", "length"}
    greedy = chat(client, "Tell me a joke", temperature=0, max_tokens=30)
    local = Conversation(AnyGPT.load(device="cpu"), do_sample=False, max_new_tokens=30)
    assert greedy.choices[0].message.content == local.send("Tell me a joke").text


def test_chat_n_choices_and_a_conversation_history(server):
    client = server.client()
    reply = chat(client, "Hi", n=3, seed=1, max_completion_tokens=12)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert (
        reply.usage.completion_tokens
        == sum(12 if c.finish_reason == "length" else 0 for c in reply.choices)
        or reply.usage.completion_tokens <= 36
    )
    system = {"role": "system", "content": "You are terse."}
    last = {"role": "user", "content": [{"type": "text", "text": "And now?"}]}
    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]
    alone = client.chat.completions.create(model=MODEL, messages=[system, last], max_tokens=4)
    both = client.chat.completions.create(model=MODEL, messages=[system, *turn, last], max_tokens=4)
    default = client.chat.completions.create(model=MODEL, messages=[last], max_tokens=4)
    # the history's turn is in the prompt; the system message replaces the template's own line
    assert both.usage.prompt_tokens > alone.usage.prompt_tokens + 4
    assert default.usage.prompt_tokens > alone.usage.prompt_tokens + 10


def test_chat_speech_answer_is_a_wav_in_message_audio(server):
    import soundfile

    client = server.client()
    for voice, fmt in [("alloy", "wav"), ("anna", "flac"), ("alloy", "mp3")]:
        reply = chat(
            client,
            "Say hello",
            modalities=["text", "audio"],
            audio={"voice": voice, "format": fmt},
            seed=2,
            max_tokens=120,
        )
        message = reply.choices[0].message
        assert message.audio is not None and message.audio.id.startswith("audio_")
        data, rate = soundfile.read(io.BytesIO(base64.b64decode(message.audio.data)))
        assert rate > 0 and len(data) > 0
        assert isinstance(message.audio.transcript, str)
    bad = server.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "modalities": ["text", "audio"],
            "audio": {"voice": "bob", "format": "wav"},
        },
    )
    assert bad.status_code == 400 and "unknown voice 'bob'" in bad.json()["error"]["message"]


def test_chat_image_and_music_answers_in_the_media_extension(server):
    import soundfile
    from PIL import Image

    client = server.client()
    reply = chat(client, "Draw a cat", modalities=["text", "image"], seed=4, max_tokens=64)
    media = reply.choices[0].message.media
    assert media[0]["modality"] == "image" and media[0]["format"] == "png"
    assert Image.open(io.BytesIO(base64.b64decode(media[0]["data"]))).size[0] > 0
    reply = chat(client, "Play jazz", modalities=["text", "music"], seed=4, max_tokens=64)
    media = reply.choices[0].message.media
    assert media[0]["modality"] == "music"
    wave, _ = soundfile.read(io.BytesIO(base64.b64decode(media[0]["data"])))
    assert len(wave) > 0


def test_chat_reads_images_speech_and_music(server):
    client = server.client()
    caption = chat(
        client,
        [
            {"type": "text", "text": "Describe this image."},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + b64(png_bytes())},
            },
        ],
        seed=0,
    )
    spoken = chat(
        client,
        [{"type": "input_audio", "input_audio": {"data": b64(wav_bytes()), "format": "wav"}}],
    )
    music = chat(
        client,
        [
            {"type": "text", "text": "What is this music?"},
            {
                "type": "input_media",
                "input_media": {"modality": "music", "data": b64(wav_bytes(2.0)), "format": "wav"},
            },
        ],
    )
    text_only = chat(client, "Describe this image.", seed=0)
    # each attachment became a span in the prompt: many more prompt tokens than the text alone
    for reply in (caption, spoken, music):
        assert reply.usage.prompt_tokens > text_only.usage.prompt_tokens + 5
        assert isinstance(reply.choices[0].message.content, str)


def test_streaming_text_equals_the_whole_answer(server):
    client = server.client()
    whole = chat(client, "Count to ten", temperature=0, max_tokens=30)
    pieces, finish, usage = [], None, None
    stream = chat(
        client,
        "Count to ten",
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([p for p in pieces if p]) > 2  # text came in pieces, as generated
    assert "".join(pieces).strip() == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_streaming_sends_media_when_the_span_closes_and_done(server):
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hi"}],
            "modalities": ["text", "audio"],
            "stream": True,
            "seed": 5,
            "max_tokens": 100,
        },
        timeout=120,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    audio = [
        c["choices"][0]["delta"]["audio"]
        for c in chunks
        if c["choices"] and "audio" in c["choices"][0]["delta"]
    ]
    assert any("data" in a and len(base64.b64decode(a["data"])) > 44 for a in audio)
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_audio_speech_wav_flac_and_voices(server):
    import soundfile

    client = server.client()
    audio = client.audio.speech.create(
        model=MODEL, voice="alloy", input="Hello there", response_format="wav"
    )
    data, rate = soundfile.read(io.BytesIO(audio.read()))
    assert rate > 0 and len(data) > 0 and soundfile.info(io.BytesIO(audio.read())).format == "WAV"
    body = {"model": MODEL, "input": "Hi", "voice": "anna", "response_format": "flac", "seed": 9}
    seeded = [server.post("/v1/audio/speech", json=body) for _ in range(2)]
    assert seeded[0].headers["content-type"] == "audio/flac"
    assert soundfile.info(io.BytesIO(seeded[0].content)).format == "FLAC"
    assert seeded[0].content == seeded[1].content  # seeded: the same voice, the same bytes
    default = server.post("/v1/audio/speech", json={"model": MODEL, "input": "Hi", "seed": 1})
    assert default.headers["content-type"] == "audio/mpeg"  # OpenAI's default: mp3
    assert soundfile.info(io.BytesIO(default.content)).format == "MP3"
    opus = server.post(
        "/v1/audio/speech", json={"model": MODEL, "input": "Hi", "response_format": "opus"}
    )
    assert opus.headers["content-type"] == "audio/ogg; codecs=opus"
    info = soundfile.info(io.BytesIO(opus.content))
    assert (info.format, info.subtype, info.samplerate) == ("OGG", "OPUS", 16000)
    aac = server.post(
        "/v1/audio/speech", json={"model": MODEL, "input": "Hi", "response_format": "aac"}
    )
    assert "use mp3, opus, wav, flac" in error_of(aac, 400)


def test_audio_transcriptions_json_and_text(server):
    client = server.client()
    result = client.audio.transcriptions.create(model=MODEL, file=("q.wav", wav_bytes()))
    assert isinstance(result.text, str) and result.text
    text = client.audio.transcriptions.create(
        model=MODEL, file=("q.wav", wav_bytes()), response_format="text"
    )
    assert text.strip() == result.text.strip()
    verbose = client.audio.transcriptions.create(
        model=MODEL, file=("q.wav", wav_bytes(2.0)), response_format="verbose_json"
    )
    assert verbose.duration == 2.0  # 100 speech tokens at 50 a second
    assert verbose.language == "english" and isinstance(verbose.text, str)
    (segment,) = verbose.segments
    assert (segment.start, segment.end, segment.text) == (0.0, 2.0, verbose.text)


def test_images_generations_b64_n(server):
    from PIL import Image

    result = server.client().images.generate(
        model=MODEL, prompt="a red bus", n=2, response_format="b64_json", extra_body={"seed": 1}
    )
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
    assert len(images) == 2 and images[0].size == images[1].size
    url = server.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
    assert url.status_code == 400 and "b64_json" in url.json()["error"]["message"]
    drawn = f"{images[0].width}x{images[0].height}"
    for size in ("1024x1024", "1792x1024"):  # clients send a size by default
        sized = server.post("/v1/images/generations", json={"prompt": "x", "size": size})
        (item,) = sized.json()["data"]
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        assert f"{image.width}x{image.height}" == size == sized.json()["size"]
        assert sized.json()["drawn_size"] == drawn  # what the decoder drew, scaled
    odd = server.post("/v1/images/generations", json={"prompt": "x", "size": "100x100"})
    assert "use auto or one of 256x256" in error_of(odd, 400)


def test_audio_generations_music(server):
    import soundfile

    response = server.post(
        "/v1/audio/generations", json={"model": MODEL, "prompt": "calm piano", "seed": 3}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    wave, rate = soundfile.read(io.BytesIO(response.content))
    assert rate > 0 and len(wave) > 0
    opus = server.post(
        "/v1/audio/generations",
        json={"model": MODEL, "prompt": "calm piano", "seed": 3, "response_format": "opus"},
    )
    info = soundfile.info(io.BytesIO(opus.content))  # 32 kHz music, resampled for Opus
    assert (info.subtype, info.samplerate) == ("OPUS", 48000)
    assert abs(info.duration - len(wave) / rate) < 0.1


# ---- bad requests ---------------------------------------------------------------------------


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert "Traceback" not in body["message"]
    return body["message"]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"model": MODEL}, 400, "messages: Field required"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"},
            400,
            "max_tokens",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 7},
            400,
            "temperature",
        ),
        (
            b'{"model": "anygpt-demo", "messages": [{"role": "user", "content": "x"}], '
            b'"top_p": NaN}',
            400,
            "top_p: Input should be a finite number",
        ),
        (
            b'{"model": "anygpt-demo", "messages": [{"role": "user", "content": "x"}], '
            b'"temperature": Infinity}',
            400,
            "temperature: Input should be a finite number",
        ),
        ({"model": MODEL, "messages": "hello"}, 400, "messages"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
            404,
            "not served here",
        ),
        (
            {"model": MODEL, "messages": [{"role": "assistant", "content": "x"}]},
            400,
            "last message must be the user's",
        ),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            },
            400,
            "tools is not supported",
        ),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "modalities": ["image", "audio"],
            },
            400,
            "one output modality",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "https://example.com/cat.png"},
                            }
                        ],
                    }
                ],
            },
            400,
            "does not fetch URLs",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}],
                    }
                ],
            },
            400,
            "does not fetch URLs",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
                        ],
                    }
                ],
            },
            400,
            "not valid base64",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {
                                    "data": b64(b"just some text, not audio"),
                                    "format": "wav",
                                },
                            }
                        ],
                    }
                ],
            },
            400,
            "not a readable audio file",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64," + b64(b"hello")},
                            }
                        ],
                    }
                ],
            },
            400,
            "not a readable image",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": b64(wav_bytes(8.0)), "format": "wav"},
                            }
                        ],
                    }
                ],
            },
            400,
            "over this server's limit of 5 s",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {
                                    "url": "data:image/png;base64," + b64(png_bytes(400))
                                },
                            }
                        ],
                    }
                ],
            },
            400,
            "over this server's limit of 100,000",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_media",
                                "input_media": {"modality": "smell", "data": "AAAA"},
                            }
                        ],
                    }
                ],
            },
            400,
            "no smell modality",
        ),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}],
            },
            400,
            "content",
        ),
    ],
)
def test_bad_chat_requests_get_one_line_json_errors(server, body, status, says):
    kwargs = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    message = error_of(server.post("/v1/chat/completions", **kwargs), status)
    assert says in message
    assert "\n" not in message


def test_auth_body_size_and_upload_errors(server):
    request = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    assert "API key" in error_of(server.post("/v1/chat/completions", key=None, json=request), 401)
    assert "API key" in error_of(
        server.post("/v1/chat/completions", key="wrong", json=request), 401
    )
    with pytest.raises(openai.AuthenticationError):
        chat(server.client(key="nope"), "x")
    assert httpx.get(server.url + "/health").status_code == 200  # health needs no key
    assert "API key" in error_of(httpx.get(server.url + "/openapi.json"), 401)
    schema = httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (3 * 1024 * 1024)}]}
    assert "limit of" in error_of(server.post("/v1/chat/completions", json=huge), 413)
    text_file = server.post(
        "/v1/audio/transcriptions",
        data={"model": MODEL},
        files={"file": ("a.wav", b"plain text here")},
    )
    assert "not a readable audio file" in error_of(text_file, 400)
    missing = server.post("/v1/audio/transcriptions", data={"model": MODEL})
    assert "file" in error_of(missing, 400)
    assert error_of(server.post("/v1/nothing", json={}), 404)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def media_message(**input_media):
    return {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [{"type": "input_media", "input_media": input_media}]}
        ],
    }


def test_hostile_input_is_a_4xx_never_a_500(server):
    request = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    for token in (b"Bearer \xff\xfe\xc3", b"Bearer sk-t\xc3\xa9st", b"\xe2\x82\xac sk"):
        response = httpx.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": token},
            json=request,
            timeout=60,
        )
        assert "API key" in error_of(response, 401)
    lone = b'"a\\ud800b"'  # JSON's escape of half a UTF-16 pair, unpaired
    for content in (lone, b'[{"type": "text", "text": ' + lone + b"}]"):
        for role in (b"user", b"system"):
            body = (
                b'{"model": "%s", "messages": [{"role": "%s", "content": %s}, '
                % (
                    MODEL.encode(),
                    role,
                    content,
                )
                + b'{"role": "user", "content": "x"}]}'
            )
            response = server.post(
                "/v1/chat/completions",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert "U+D800 at character 2 is not UTF-8" in error_of(response, 400)
    wav = b64(wav_bytes())
    for bad in ("../../../etc/x", "w/av", "wa\\v", "wav\x00", "txt", ""):
        response = server.post(
            "/v1/chat/completions", json=media_message(modality="music", data=wav, format=bad)
        )
        message = error_of(response, 400)
        assert "is not a format music reads (wav, flac" in message, message
    assert not re.search(r"serve-\d+-|/tmp|\.cache", server.text())  # no server path logged
    # no format: the codec refuses the file; the message names the request's part, not the file
    garbage = b64(b"not music at all" * 64)
    unnamed = server.post(
        "/v1/chat/completions", json=media_message(modality="music", data=garbage)
    )
    assert unnamed.status_code == 400, unnamed.status_code
    message = error_of(unnamed, 400)
    assert message.startswith("messages[0].content[0].input_media: "), message
    assert "serve-" not in message and "/" not in message.split(":", 1)[0]


def test_a_message_longer_than_the_context_is_a_400_before_tokenizing(server):
    long_text = "x" * 200_000  # more than the 4,096 tokens of the demo model can hold
    response = server.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": long_text}]},
    )
    message = error_of(response, 400)
    assert "message too long: 200,000 characters" in message
    assert "context of 4096 positions" in message
    # as an old turn, the same text is dropped from the prompt like any turn that cannot fit
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": long_text},
        {"role": "user", "content": "and now?"},
    ]
    reply = server.client().chat.completions.create(model=MODEL, messages=history, max_tokens=4)
    assert reply.usage.prompt_tokens < 100


def test_32_concurrent_clients_two_requests_each(server):
    client = server.client(timeout=300)
    prompts = [f"Question number {i}" for i in range(32)]
    expected = {
        p: chat(client, p, temperature=0, max_tokens=16).choices[0].message.content
        for p in prompts[:4]
    }

    def one(prompt: str) -> list[str]:
        return [
            chat(client, prompt, temperature=0, max_tokens=16).choices[0].message.content
            for _ in range(2)
        ]

    with ThreadPoolExecutor(32) as pool:
        answers = dict(zip(prompts, pool.map(one, prompts), strict=True))
    for pair in answers.values():
        assert pair[0] == pair[1] and isinstance(pair[0], str)
    for prompt, answer in expected.items():
        assert answers[prompt][0] == answer  # batched with 31 others, the same greedy answer
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


# ---- a small server: queue, disconnects, timeouts, SIGTERM ----------------------------------


@pytest.fixture
def small_server(tmp_path):
    srv = start_server(
        tmp_path / "small.log", "--max-queue", "1", "--max-batch", "1", "--request-timeout", "30"
    )
    yield srv
    stop(srv)


def long_stream(server: Server):
    return httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write a long story"}],
            "stream": True,
            "max_tokens": 3500,
            "temperature": 1.0,
        },
        timeout=120,
    )


def test_full_queue_429_and_a_client_that_leaves_frees_its_place(small_server):
    with long_stream(small_server) as response:
        lines = response.iter_lines()
        next(lines)
        busy = small_server.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        )
        assert "busy" in error_of(busy, 429)
        assert int(busy.headers["retry-after"]) >= 1
    # the client left mid-stream: its place (and its rows in the engine) are given back
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = small_server.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
        )
        if after.status_code != 429:
            break
        time.sleep(0.1)
    assert after.status_code == 200
    assert time.monotonic() < deadline


def trickled(server: Server, start: bytes) -> bytes:
    """What a client that sends `start`, then one byte a second, reads before the server closes."""
    import socket

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(start)
        conn.settimeout(0.9)
        received = b""
        for _ in range(20):
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                conn.sendall(b" ")  # still sending: the head or body is never complete
                continue
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
        raise AssertionError(f"still open after 20 s; read {received!r}")


def test_request_timeout_is_a_504_and_a_trickling_client_is_cut_off(tmp_path):
    srv = start_server(tmp_path / "slow.log", "--request-timeout", "1", "--read-timeout", "1")
    try:
        assert trickled(srv, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n") == b""
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 100\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n{"
        )
        late = trickled(srv, head)
        assert late.startswith(b"HTTP/1.1 408 ")
        assert b"did not arrive within 1 s" in late
        response = srv.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "n": 16,
                "max_tokens": 3500,
            },
        )
        assert "limit of 1 s" in error_of(response, 504)
        assert (
            srv.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 4,
                },
            ).status_code
            == 200
        )
    finally:
        stop(srv)


def test_sigterm_finishes_the_request_in_flight_then_exits(small_server):
    result: dict[str, object] = {}

    def consume() -> None:
        with long_stream(small_server) as response:
            result["lines"] = list(response.iter_lines())

    worker = threading.Thread(target=consume)
    worker.start()
    time.sleep(1.0)
    small_server.proc.send_signal(signal.SIGTERM)
    worker.join(120)
    assert small_server.proc.wait(timeout=60) == 0
    lines = [line for line in result["lines"] if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    with pytest.raises(httpx.ConnectError):
        httpx.get(small_server.url + "/health", timeout=5)


def test_media_store_removes_only_dead_servers_folders(tmp_path):
    from anygpt_cli.server.media import Limits, MediaStore

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"serve-{dead.pid}-abc"
    alive = tmp_path / f"serve-{os.getpid()}-def"
    mine = tmp_path / "serve-notes"
    for folder in (stale, alive, mine):
        folder.mkdir()
        (folder / "x.wav").write_bytes(b"1")
    store = MediaStore(tmp_path, Limits())
    assert not stale.exists() and alive.exists() and mine.exists()
    with store.file(b"data", ".bin", kind="", what="x") as path:
        assert path.parent == store.dir and path.read_bytes() == b"data"
    assert not path.exists()
    store.close()
    assert not store.dir.exists()


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--voice", "anna"], 3, "expected NAME=FILE"),
        (["--voice", "anna=/no/such.wav"], 3, "no such file"),
        (["--voice", "anna=/"], 3, "--voice anna: /: is a directory, not a file"),
        (["--chat-template", "llama"], 6, "choose one of"),
        (["--port", "70000"], 2, ""),
    ],
)
def test_serve_option_errors_are_one_line_before_loading(args, code, says):
    proc = subprocess.run(
        [str(ANYGPT), "serve", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == code, proc.stderr
    if says:
        assert proc.stderr.count("\n") == 1 and says in proc.stderr
    assert "Loading" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_taken_port_is_one_line(server):
    port = server.url.rsplit(":", 1)[1]
    proc = subprocess.run(
        [str(ANYGPT), "serve", "--port", port], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_blocking_request_work_is_cut_at_the_time_limit_and_never_holds_up_exit():
    import asyncio
    from types import SimpleNamespace

    from anygpt_cli.server.app import _in_thread
    from anygpt_cli.server.errors import APIError

    release = threading.Event()
    seen = {}

    def work():
        seen["daemon"] = threading.current_thread().daemon
        release.wait(60)

    service = SimpleNamespace(settings=SimpleNamespace(request_timeout=0.2))
    try:
        with pytest.raises(APIError) as err:
            asyncio.run(_in_thread(service, work))  # returns though `work` still runs
    finally:
        release.set()
    assert err.value.status == 504 and "limit of 0.2 s" in err.value.message
    assert seen["daemon"]  # a server told to stop exits without waiting for it


def test_eval_through_serve_answers_as_in_process(server, tmp_path, capsys):
    """`anygpt eval --server` sends each task to POST /v1/anygpt/tasks: greedy answers are equal."""
    from cli_runner import run_cli
    from eval_data import write_librispeech

    root = write_librispeech(tmp_path / "libri", count=3)
    greedy = tmp_path / "greedy.json"
    greedy.write_text('{"do_sample": false, "max_new_tokens": 24}')
    common = [
        "eval",
        "librispeech-asr",
        "--data",
        f"librispeech-asr={root}",
        "--decode",
        "model",
        "--config",
        str(greedy),
        "--batch-size",
        "1",
    ]
    code, _, err = run_cli(
        [*common, "--server", server.url, "--api-key", KEY, "--out", str(tmp_path / "served")],
        capsys,
    )
    assert code == 0, err
    code, _, err = run_cli([*common, "--device", "cpu", "--out", str(tmp_path / "local")], capsys)
    assert code == 0, err

    def answers(folder):
        rows = (tmp_path / folder / "librispeech-asr" / "samples.jsonl").read_text().splitlines()
        return [(r["id"], r["prompt"], r["output"]) for r in map(json.loads, rows)]

    served, local = answers("served"), answers("local")
    assert len(served) == 3 and served == local
    report = json.loads((tmp_path / "served" / "report.json").read_text())
    assert report["model"] == {"model": MODEL, "engine": "server", "server": server.url}


def test_anygpt_tasks_endpoint_refuses_bad_requests(server):
    body = {"model": MODEL, "source": "speech", "target": "text", "seed": 1}
    r = server.post("/v1/anygpt/tasks", json={**body, "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    media = {"data": b64(wav_bytes(0.5)), "format": "../x"}
    r = server.post("/v1/anygpt/tasks", json={**body, "input_media": media})
    assert r.status_code == 400 and "input_media.format" in r.json()["error"]["message"]
    media["format"] = "wav"
    r = server.post("/v1/anygpt/tasks", json={**body, "input_media": media, "decoding": {"x": 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "decoding.x"
    r = server.post(
        "/v1/anygpt/tasks", json={**body, "input_media": media, "decoding": {"top_p": 7}}
    )
    assert r.status_code == 400
    r = server.post("/v1/anygpt/tasks", json={**body, "input_media": media}, key=None)
    assert r.status_code == 401
    r = server.post("/v1/anygpt/tasks", json={**body, "input_media": media})
    assert r.status_code == 200 and isinstance(r.json()["text"], str)
