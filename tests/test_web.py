"""`anygpt web` in a real browser: headless Chromium driven by Playwright, on the demo model.

The page is served on a loopback port from this process; every request the browser makes is
recorded, and one that would leave the loopback is refused and fails the test.
"""

from __future__ import annotations

import io
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf
from cli_runner import run_cli

CHROMIUM = Path("/usr/bin/chromium")
#: Flags that run Debian's Chromium here: no sandbox (root), no GPU, nothing phoning home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",  # the microphone: allowed, and a fake device
    "--use-fake-device-for-media-stream",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
TIMEOUT_MS = 90_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_local(url: str) -> bool:
    """A URL the page may load: the app's own origin (or a blob/data URL made in the page)."""
    if url.startswith(("data:", "about:")):
        return True
    if url.startswith("blob:"):
        url = url[len("blob:") :]
    return urlsplit(url).hostname in LOOPBACK


# --- the app, served once for the module -------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The page over the demo model with every installed plugin, on a free loopback port."""
    from anygpt_cli.web_app import WebApp
    from anygpt_core.api import AnyGPT

    out = tmp_path_factory.mktemp("web_out")
    gpt = AnyGPT.load(device="cpu", output_dir=out)
    rows: list[int] = []
    prefill = gpt.generator.backend.prefill

    def counted(prompts):  # the real model, counting the rows the engine admits
        rows.append(len(prompts))
        return prefill(prompts)

    gpt.generator.backend.prefill = counted  # type: ignore[method-assign]
    app = WebApp(gpt, output_dir=out, seed=0, overrides={"max_new_tokens": 300})  # short answers
    url = app.launch(host="127.0.0.1", port=free_port(), block=False)
    app.rows = rows  # type: ignore[attr-defined]
    yield app, url
    app.close()


@pytest.fixture(scope="module")
def browser_context(served):
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,  # a new empty --user-data-dir
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1200, "height": 1000},
            permissions=["microphone"],
        )

        def guard(route):
            if is_local(route.request.url):
                route.continue_()
            else:  # recorded and refused: nothing leaves the machine
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        context.outside = outside  # type: ignore[attr-defined]
        yield context
        context.close()


@pytest.fixture
def page(served, browser_context) -> Iterator:
    """A new browser tab on the page (a new Gradio session: its own conversation)."""
    _, url = served
    tab = browser_context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(url)
    tab.wait_for_selector("#message textarea")
    yield tab
    tab.close()
    assert browser_context.outside == [], "requests left the loopback"


def send(page, text: str = "", *, to: str | None = None) -> None:
    """Type `text`, pick the answer modality, send, and wait until the answer is complete."""
    if to is not None:
        page.locator("#answer-modality label", has_text=to).first.click()
    page.fill("#message textarea", text)
    sent = getattr(page, "sent", 0) + 1
    page.sent = sent  # each tab's status numbers its messages
    page.click("#send")
    page.locator("#status").get_by_text(
        re.compile(rf"(Answered|Error) \(message {sent}\)")
    ).wait_for()


def bot_messages(page):
    return page.locator("#chat [data-testid='bot']")


def file_bytes(page, source: str) -> bytes:
    """The bytes behind a media element's `src` (a blob or a URL of the app), read in the page."""
    numbers = page.evaluate(
        "async src => Array.from(new Uint8Array(await (await fetch(src)).arrayBuffer()))", source
    )
    return bytes(numbers)


def write_png(path: Path) -> Path:
    from PIL import Image

    pixels = np.zeros((48, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (200, 40, 40)
    pixels[::2, 32:] = (40, 40, 200)
    Image.fromarray(pixels).save(path)
    return path


# --- in the browser --------------------------------------------------------------------------


def test_a_text_message_gets_a_reply(page):
    send(page, "Hello, who are you?")
    assert "Answered" in page.inner_text("#status")
    assert page.locator("#chat [data-testid='user']", has_text="Hello, who are you?").count() == 1
    assert bot_messages(page).first.inner_text().strip()


def test_an_uploaded_image_gets_text_back(page, served, tmp_path):
    app, _ = served
    page.set_input_files("#input-image input[type=file]", str(write_png(tmp_path / "red.png")))
    page.wait_for_selector("#input-image :text('red.png')")
    send(page, "What is in this picture?")
    assert "Answered" in page.inner_text("#status")
    user_image = page.locator("#chat [data-testid='user'] img").first
    user_image.wait_for()
    assert bot_messages(page).first.inner_text().strip()
    histories = [t.conversation.history for t in app.sessions._tabs.values()]
    turns = [turn for history in histories for turn in history]
    assert any(turn.user.startswith("<soim>") for turn in turns)  # the image went in as a span


def test_a_spoken_answer_plays_a_valid_wav(page):
    send(page, "Please read this aloud", to="speech")
    assert "Answered" in page.inner_text("#status")
    from playwright.sync_api import expect

    audio = page.locator("#chat [data-testid='bot'] audio").first  # in the player's shadow DOM
    expect(audio).to_have_attribute("src", re.compile(r".+"), timeout=TIMEOUT_MS)
    source = audio.get_attribute("src")
    body = file_bytes(page, source)
    assert body[:4] == b"RIFF"
    assert body[8:12] == b"WAVE"
    samples, rate = sf.read(io.BytesIO(body))
    assert rate == 16000
    assert len(samples) > 0
    downloads = page.locator("a[download]")
    assert downloads.count() >= 1  # the answer's file can be downloaded


def test_a_drawn_answer_is_shown(page):
    send(page, "Draw me a beach", to="image")
    assert "Answered" in page.inner_text("#status")
    image = page.locator("#chat [data-testid='bot'] img").first
    image.wait_for()
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle())
    width = image.evaluate("el => el.naturalWidth")
    assert width > 0


def test_the_page_makes_no_folders_in_the_system_temp(page, tmp_path):
    """Empty 40-hex-digit folders seen in the system temp while the page was used come from
    gradio_client (its downloads make `gettempdir()/<token_hex(20)>`), not from the page: here
    the page alone, through a browser, takes an upload and draws an answer, and none appears."""

    def hex_folders() -> set[str]:
        found = Path(tempfile.gettempdir()).iterdir()
        return {p.name for p in found if re.fullmatch(r"[0-9a-f]{40}", p.name)}

    before = hex_folders()
    send(page, "Draw me a boat", to="image")
    page.locator("#chat [data-testid='bot'] img").first.wait_for()
    page.set_input_files("#input-image input[type=file]", str(write_png(tmp_path / "in.png")))
    page.wait_for_selector("#input-image :text('in.png')")
    send(page, "What is in this picture?", to="text")
    assert "Answered (message 2)" in page.inner_text("#status")
    assert hex_folders() - before == set()


def test_a_wrong_file_shows_an_error_and_the_chat_goes_on(page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("these are my notes, not a picture\n")
    page.set_input_files("#input-image input[type=file]", str(notes))
    page.wait_for_selector("#input-image :text('notes.png')")
    send(page, "What is this?")
    status = page.inner_text("#status")
    assert "Error" in status
    assert "notes.png" in status
    assert "/tmp" not in status  # the upload's temporary folder is not shown
    assert status.count("Error") == 1  # one line: no red pill on every output, no toast
    assert page.locator(".toast-body").count() == 0
    assert page.locator("#chat [data-testid='user']").count() == 0  # the turn was not kept
    page.locator("#input-image button[aria-label='Clear']").last.click()  # take the file away
    send(page, "Then just say hello")
    assert "Answered" in page.inner_text("#status")
    assert page.locator("#chat [data-testid='user']", has_text="Then just say hello").count() == 1


def test_a_message_sent_while_answering_is_kept_and_said(served):
    app, _ = served
    tab = app.sessions.tab("busy-tab")
    with tab.lock:  # a turn of this tab is being answered
        (shown,) = list(app._turn({"message": "and another one", "history": []}, "busy-tab"))
    _, status, _, text, *_ = shown
    assert status.startswith("Still answering")
    assert text == app.gr.update()  # the box keeps what was typed: nothing is lost
    assert tab.conversation.history == []


def test_stop_sets_the_status_and_the_chat_goes_on(page, served, monkeypatch):
    app, _ = served
    backend = app.gpt.generator.backend
    step = backend.step

    def slow(*args, **kwargs):  # the answer is surely still being written when Stop is pressed
        time.sleep(0.05)
        return step(*args, **kwargs)

    monkeypatch.setattr(backend, "step", slow)
    page.fill("#message textarea", "Tell me a long story")
    page.click("#send")
    page.locator("#chat [data-testid='user']", has_text="long story").wait_for()  # it started
    page.click("#stop")
    page.locator("#status").get_by_text("Stopped: the answer was not kept").wait_for()
    monkeypatch.setattr(backend, "step", step)
    page.sent = 1
    send(page, "Then just say hello")
    assert "Answered (message 2)" in page.inner_text("#status")


def test_stop_says_whether_the_answer_was_kept(served, monkeypatch):
    """Stop drops a running answer; one complete before Stop took effect is kept, and said so."""
    app, _ = served
    assert app._stop("stop-tab") == app.gr.update()  # nothing running: the status stays
    backend = app.gpt.generator.backend
    step = backend.step
    started = threading.Event()

    def slow(*args, **kwargs):
        started.set()
        time.sleep(0.05)
        return step(*args, **kwargs)

    monkeypatch.setattr(backend, "step", slow)
    shown: list = []
    turn = threading.Thread(
        target=lambda: shown.extend(app._turn({"message": "A long story"}, "stop-tab"))
    )
    turn.start()
    assert started.wait(60)
    assert app._stop("stop-tab").startswith("Stopped: the answer was not kept")
    turn.join(5)
    assert not turn.is_alive()
    assert not any(str(values[1]).startswith("Answered") for values in shown)
    tab = app.sessions.tab("stop-tab")
    assert tab.conversation.history == []  # the stopped turn left nothing behind

    ended = threading.Event()

    def answered_as_stop_came() -> None:  # its Reply had arrived: the conversation kept it
        with tab.lock:
            tab.begin()  # as a turn does
            tab.kept = True
            ended.set()
            tab.stop.wait(5)
            tab.running = False

    late = threading.Thread(target=answered_as_stop_came)
    late.start()
    assert ended.wait(5)
    assert app._stop("stop-tab") == f"Answered (message {tab.sent}) before Stop took effect"
    late.join(5)
    with tab.lock:  # a Clear holds the lock, but no turn runs: nothing to stop
        assert app._stop("stop-tab") == app.gr.update()


def test_page_api_endpoints_are_named(served):
    import httpx

    _, url = served
    info = httpx.get(url.rstrip("/") + "/gradio_api/info", timeout=30).json()
    named = info["named_endpoints"]
    assert {"/chat", "/stop", "/clear", "/text_speech", "/speech_text"} <= set(named)
    assert not info.get("unnamed_endpoints")
    speech = [p["parameter_name"] for p in named["/text_speech"]["parameters"]]
    assert speech[:2] == ["source", "voice_prompt"] and "seed" in speech


def test_page_api_names_its_parameters_and_optional_ones_may_be_left_out(served, tmp_path):
    """Through gradio_client: named arguments, and an optional voice prompt simply not given."""
    from gradio_client import Client

    _, url = served
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
    named = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for endpoint in named.values():  # no `param_0`, `value_86`: every name says what it is
        names = [p["parameter_name"] for p in endpoint["parameters"]]
        names += [r["label"] for r in endpoint["returns"]]
        assert not [n for n in names if re.fullmatch(r"(param|value)_\d+", n)], names

    def optional(endpoint: str) -> dict[str, bool]:
        parameters = named[endpoint]["parameters"]
        return {p["parameter_name"]: p["parameter_has_default"] for p in parameters}

    chat = optional("/chat")
    assert list(chat)[:2] == ["message", "answer_as"]
    assert {"image_files", "spoken_instruction", "voice_prompt", "seed", "history"} <= set(chat)
    assert all(chat.values())  # each may be left out
    assert optional("/text_speech")["voice_prompt"]
    assert not optional("/speech_text")["source"]  # a recording to transcribe is not optional

    status, _, audio, _ = client.predict(
        source="Good morning", max_new_tokens=60, seed=1, api_name="/text_speech"
    )
    assert status.startswith("Done"), status
    assert audio and Path(audio).suffix == ".wav"
    conversation, status, *_ = client.predict(message="Say hello", api_name="/chat")
    assert status.startswith("Answered"), status
    assert conversation[0]["role"] == "user" and "Say hello" in str(conversation[0]["content"])


def test_clear_empties_the_history(page, served):
    app, _ = served
    send(page, "Remember this")
    assert bot_messages(page).count() >= 1
    page.click("#clear")
    page.wait_for_selector("#status:has-text('History cleared')")
    assert page.locator("#chat [data-testid='bot']").count() == 0
    assert all(
        tab.conversation.history == [] or tab.conversation.history[0].user != "Remember this"
        for tab in app.sessions._tabs.values()
    )


def test_recorded_speech_is_a_spoken_instruction(page, served):
    """The microphone (Chromium's fake device) records an instruction; the turn holds speech."""
    app, _ = served
    page.locator("#input-speech button[aria-label='Record audio']").click()
    record = page.locator("#input-speech button.record-button")
    record.click()
    page.wait_for_timeout(1200)
    page.locator("#input-speech button.stop-button").click()
    page.wait_for_selector("#input-speech button[aria-label='Download']")  # uploaded
    send(page)
    assert "Answered" in page.inner_text("#status")
    turns = [turn for tab in app.sessions._tabs.values() for turn in tab.conversation.history]
    assert any("<sosp>" in turn.user and "voice command" in turn.user for turn in turns)


def test_tabs_keep_their_own_conversations_on_one_model(served, browser_context):
    app, url = served
    first, second = browser_context.new_page(), browser_context.new_page()
    try:
        for tab in (first, second):
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(url)
            tab.wait_for_selector("#message textarea")
        rows_before = sum(app.rows)
        first.fill("#message textarea", "alpha message")
        second.fill("#message textarea", "beta message")
        first.click("#send")
        second.click("#send")
        for tab in (first, second):
            tab.wait_for_selector("#status:has-text('Answered')")
        assert "alpha message" in first.inner_text("#chat")
        assert "beta message" not in first.inner_text("#chat")
        assert "beta message" in second.inner_text("#chat")
        assert "alpha message" not in second.inner_text("#chat")
        histories = [t.conversation.history for t in app.sessions._tabs.values()]
        users = [[turn.user for turn in history] for history in histories]
        assert ["alpha message"] in users
        assert ["beta message"] in users
        assert all(t.conversation.gpt is app.gpt for t in app.sessions._tabs.values())
        assert sum(app.rows) - rows_before == 2  # both turns ran through the model's one engine
    finally:
        first.close()
        second.close()
    assert browser_context.outside == []


def test_tasks_tab_runs_one_shot_tasks(page):
    page.get_by_role("tab", name="Tasks").click()
    page.get_by_role("tab", name="Text → image").click()
    page.fill("#text-image-input textarea", "a red bus at dawn")
    page.click("#text-image-run")
    page.wait_for_selector("#text-image-status:has-text('Done')")
    page.locator("#text-image-out img").first.wait_for()
    page.get_by_role("tab", name="Text → speech").click()
    page.click("#text-speech-run")
    page.wait_for_selector("#text-speech-status:has-text('Done')")
    assert "seed 0" in page.inner_text("#text-speech-status")
    page.locator("#text-speech-out audio").first.wait_for(state="attached")


def test_screenshot_is_not_blank(page, tmp_path):
    """A picture of the page after two turns; `ANYGPT_WEB_SCREENSHOT=docs/web.png` keeps it."""
    from PIL import Image

    page.set_input_files("#input-image input[type=file]", str(write_png(tmp_path / "red.png")))
    page.wait_for_selector("#input-image :text('red.png')")
    send(page, "What is in this picture?")
    assert page.locator("#input-image :text('red.png')").count() == 0  # sent with that message
    send(page, "Draw me a beach at dawn", to="image")
    page.locator("#chat [data-testid='bot'] img").first.wait_for()
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot))
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"))
        target = os.environ.get("ANYGPT_WEB_SCREENSHOT")
        if target:  # the README's picture: smaller, in a palette
            small = image.convert("RGB").resize((image.width * 3 // 4, image.height * 3 // 4))
            small.quantize(colors=128).save(target, optimize=True)
    assert pixels.shape[0] > 500
    assert pixels.std() > 10  # text, borders and buttons, not one flat colour
    assert len(np.unique(pixels)) > 20


# --- without a browser -----------------------------------------------------------------------


def test_streamed_text_grows_before_the_answer_is_complete(served):
    app, _ = served
    updates = list(
        app._turn({"message": "Tell me a story", "answer_as": "text", "seed": 0}, "stream-test")
    )
    shown = [u[0][-1]["content"] for u in updates[1:-1] if u[0] and u[0][-1]["role"] == "assistant"]
    assert len(shown) >= 2  # text appears as it is written, in several updates
    assert len(shown[-1]) > len(shown[0])
    assert "Answered" in updates[-1][1]
    app.sessions.drop("stream-test")


def test_sessions_share_one_model_and_keep_apart(served):
    from anygpt_cli.web_app import Sessions

    app, _ = served
    sessions = Sessions(app.gpt, output_dir=app.output_dir)
    a, b = sessions.tab("a"), sessions.tab("b")
    assert a is sessions.tab("a")
    assert a.conversation is not b.conversation
    assert a.conversation.gpt is b.conversation.gpt is app.gpt
    sessions.drop("a")
    assert len(sessions) == 1


def test_only_installed_modalities_are_offered(served):
    app, _ = served
    assert set(app.modalities) == set(app.gpt.space.modalities)
    config = app.blocks.get_config_file()
    labels = {c["props"].get("label") for c in config["components"]}
    assert "Spoken instruction (record or upload)" in labels
    assert "Image files" in labels
    radio = next(c for c in config["components"] if c["props"].get("label") == "Answer as")
    assert [choice[0] for choice in radio["props"]["choices"]] == ["text", *app.modalities]


def test_web_help_lists_host_port_and_plugin_options(capsys):
    code, out, _ = run_cli(["web", "--help"], capsys)
    assert code == 0
    for flag in ("--host", "--port", "--model-name-or-path", "--chat-template", "--seed"):
        assert flag in out
    assert "--music-tokenizer-path" in out  # the installed plugins' codec options


def test_web_without_gradio_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed: import fails
    code, _, err = run_cli(["web"], capsys)
    assert code == 5
    assert "pip install 'gradio>=6,<7'" in err
    assert "Traceback" not in err


def test_web_bad_options_fail_before_loading(capsys):
    code, _, err = run_cli(["web", "--chat-template", "nope"], capsys)
    assert code == 3
    assert "--chat-template nope" in err
    code, _, err = run_cli(["web", "--temperature", "-1"], capsys)
    assert code == 6
    code, _, err = run_cli(["web", "--port", "70000"], capsys)
    assert code == 2


def test_web_on_a_taken_port_is_one_error_line(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done: list[tuple[int, str, str]] = []
        worker = threading.Thread(
            target=lambda: done.append(
                run_cli(["web", "--port", str(port), "--output-dir", str(tmp_path)], capsys)
            )
        )
        worker.start()
        worker.join(timeout=120)
    assert done, "anygpt web did not stop on a taken port"
    code, _, err = done[0]
    assert code == 3
    assert f"127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_anygpt_web_serves_until_interrupted(tmp_path):
    """The real command in its own process: it prints its URL, serves the page, stops on Ctrl-C."""
    import signal
    import subprocess
    import urllib.request

    port = free_port()
    command = [str(Path(sys.executable).parent / "anygpt"), "web", "--port", str(port)]
    command += ["--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    environment = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in process.stderr:  # the demo notice, then the URL once the page is served
            lines.append(line)
            if "anygpt web:" in line:
                break
        assert f"http://127.0.0.1:{port}" in "".join(lines), "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200
            assert "<html" in response.read().decode().lower()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written beside it
    assert (tmp_path / "out" / ".gradio").is_dir()  # Gradio's uploads and cache are in it
