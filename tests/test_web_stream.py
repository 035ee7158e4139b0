"""The page plays a spoken answer from its first decoded second: its streaming Audio output gets
each piece as a wav while the model still writes the span, through Gradio's own HTTP API."""

from __future__ import annotations

import io
import re
import shutil
import socket
from pathlib import Path

import pytest
import soundfile as sf

pytest.importorskip("gradio")
pytest.importorskip("anygpt_speech")
if shutil.which("ffmpeg") is None:  # Gradio encodes streamed audio with ffmpeg
    pytest.skip("ffmpeg is missing (apt-get install ffmpeg)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from anygpt_cli.web_app import WebApp
    from anygpt_core.api import AnyGPT

    out = tmp_path_factory.mktemp("web_stream")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANYGPT_LOAD_PLUGINS", "speech")
        gpt = AnyGPT.load(device="cpu", output_dir=out)
    page = WebApp(gpt, output_dir=out, seed=2, overrides={"max_new_tokens": 160})
    yield page
    page.close()


def test_spoken_answer_pieces_reach_the_speaker_before_the_answer_ends(app):
    assert app.speaks
    updates = list(app._turn({"message": "Say hello", "answer_as": "speech", "seed": 2}, "tab"))
    pieces = [(k, u[-1]) for k, u in enumerate(updates) if u[-1] is not None]
    assert len(pieces) >= 3  # one per second of speech, and the last, shorter one
    for _, piece in pieces:
        samples, rate = sf.read(io.BytesIO(piece), dtype="int16")
        assert rate == 16000 and len(samples) > 0
    assert "Answered" in updates[-1][1] and pieces[-1][0] < len(updates) - 1
    total = sum(len(sf.read(io.BytesIO(p))[0]) for _, p in pieces)
    (turn,) = app.sessions.tab("tab").conversation.history
    frames = turn.assistant.count("<🗣️")
    assert total == frames * 320  # every sample of the answer, once
    app.sessions.drop("tab")


def test_a_text_answer_leaves_the_speaker_alone(app):
    updates = list(app._turn({"message": "Hi", "answer_as": "text", "seed": 1}, "text-tab"))
    assert all(u[-1] is None for u in updates)
    app.sessions.drop("text-tab")


def test_the_streamed_answer_plays_through_gradios_api(app, tmp_path):
    from gradio_client import Client

    url = app.launch(host="127.0.0.1", port=free_port(), block=False)
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
    job = client.submit(message="Say hello", answer_as="speech", seed=2, api_name="/chat")
    result = job.result(timeout=120)
    assert "Answered" in result[1]
    played = result[-1]  # the stream the page played: an HLS playlist of AAC segments
    assert played and Path(played).suffix == ".m3u8", result
    (final,) = [p for p in Path(played).read_text().split("#EXTM3U") if "#EXT-X-ENDLIST" in p]
    seconds = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", final)]
    assert len(seconds) >= 3  # segments went out as the answer was decoded
    (turn,) = next(iter(app.sessions._tabs.values())).conversation.history
    spoken = turn.assistant.count("<🗣️") * 0.02
    assert spoken - 0.05 <= sum(seconds) <= spoken + 0.25  # AAC pads the ends
