from __future__ import annotations

import importlib
import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from cli_runner import TOY_DIR, run_cli

from anygpt_cli.catalogue import install_target
from anygpt_cli.chat_lines import ChatLine, parse_line
from anygpt_core.chat import (
    Conversation,
    Reply,
    TextStream,
    Turn,
    user_message,
)
from anygpt_core.engine.events import SpanClosed, SpanOpened, TokenEvent
from anygpt_core.errors import InputError, PluginError
from anygpt_core.prompts import ANYGPT_CHAT, MMGPT_CHAT
from anygpt_core.protocol import codes_to_string

SPEECH_PLUGIN = install_target("anygpt-speech")


@pytest.fixture(scope="module")
def chat_gpt(toy_site, tmp_path_factory):
    """The demo model with the toy modality, loaded once for this module."""
    from anygpt_core.api import AnyGPT

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(TOY_DIR))
        mp.syspath_prepend(str(toy_site))
        mp.setenv("ANYGPT_LOAD_PLUGINS", "toy")
        importlib.invalidate_caches()
        gpt = AnyGPT.load(device="cpu", output_dir=tmp_path_factory.mktemp("chat_out"))
    gpt.codecs.codec("toy")  # the toy module is imported while its path is set
    return gpt


@pytest.fixture
def series(tmp_path) -> Path:
    path = tmp_path / "series.txt"
    path.write_text("0.1 0.5 -0.3 0.9")
    return path


def write_png(path: Path) -> Path:
    """A valid 2x1 RGB PNG written by hand (PIL may not be installed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"\x00" + b"\xff\x00\x00" + b"\x00\xff\x00"
    ihdr = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def write_wav(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 220.0) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


# --- turn building and line parsing -------------------------------------------------------------


#: The reference's Speech-Instruction prompt, as the speech plugin declares it.
SPEECH_INSTRUCTION = "{turn} Please recognize the voice command and give reply and voice"
#: The turn rules the published modalities declare (image, music, the others, speech last).
TURN_SPECS = {
    "image": SimpleNamespace(turn_rank=0, turn_template=None),
    "music": SimpleNamespace(turn_rank=10, turn_template=None),
    "toy": SimpleNamespace(turn_rank=50, turn_template=None),
    "speech": SimpleNamespace(turn_rank=90, turn_template=SPEECH_INSTRUCTION),
}


def test_user_message_follows_the_interleaved_rule():
    spans = {
        "speech": ["<sosp>S</eosp>"],
        "toy": ["<soty>T<eoty>"],
        "image": ["<soim>A", "<soim>B"],
        "music": ["M"],
    }
    message = user_message("draw it", spans, TURN_SPECS)
    assert message == SPEECH_INSTRUCTION.replace(
        "{turn}", "<soim>A <soim>B M <soty>T<eoty> <sosp>S</eosp> draw it"
    )
    assert message.endswith("draw it Please recognize the voice command and give reply and voice")
    assert user_message("  ", {"image": ["<soim>A"]}, TURN_SPECS) == "<soim>A"
    assert user_message(
        "", {"speech": ["<sosp>S</eosp>"]}, TURN_SPECS
    ) == SPEECH_INSTRUCTION.replace("{turn}", "<sosp>S</eosp>")
    assert user_message("hi", {}, TURN_SPECS) == "hi"


def test_a_third_party_modality_can_wrap_and_order_a_turn():
    """What the core did for speech by name, any plugin can declare."""
    specs = {
        **TURN_SPECS,
        "toy": SimpleNamespace(turn_rank=95, turn_template="Listen: {turn}"),
    }
    spans = {"toy": ["<soty>T<eoty>"], "image": ["<soim>A"]}
    assert user_message("go", spans, specs) == "Listen: <soim>A <soty>T<eoty> go"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello there", ChatLine("send", text="hello there")),
        ("yes|no", ChatLine("send", text="yes|no")),
        ("a sentence | with | pipes", ChatLine("send", text="a sentence | with | pipes")),
        ("quit", ChatLine("exit")),
        ("|clear", ChatLine("clear")),
        ("interleaved|clear", ChatLine("clear")),
        ("interleaved|hi", ChatLine("send", text="hi", to="text")),
        ("interleaved|hi|TOY", ChatLine("send", text="hi", to="toy")),
        ("interleaved|hi||||", ChatLine("send", text="hi", to="text")),
    ],
)
def test_parse_line(line, expected):
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("text|text|hi", "task 'text' is not a chat task"),
        ("interleaved|hi|text|||||extra", "8 fields, at most 7"),
        ("interleaved|hi|a b", "'a b' is not a modality name"),
        ("interleaved|hi|text|/no/such.png", "/no/such.png: no such file"),
    ],
)
def test_parse_line_rejects(line, message):
    with pytest.raises(InputError, match=message):
        parse_line(line)


def test_parse_line_accepts_both_field_orders(tmp_path):
    png, png2 = write_png(tmp_path / "a.png"), write_png(tmp_path / "b.png")
    wav, wav2 = write_wav(tmp_path / "v.wav"), write_wav(tmp_path / "w.wav")
    readme = parse_line(f"interleaved|hi|speech|{png},{png2}|{wav}|{wav2}|{wav2}")
    code = parse_line(f"interleaved|hi|speech|{wav}|{png}, {png2}|{wav2}|{wav2}")
    assert readme == code
    assert readme.inputs == {"image": (png, png2), "speech": (wav2,), "music": (wav2,)}
    assert readme.voice_prompt == wav and readme.to == "speech"
    with pytest.raises(InputError, match="2 voice prompts"):
        parse_line(f"interleaved|hi|speech|{wav}|{wav2}")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not media")
    with pytest.raises(InputError, match=r"notes\.txt: neither an image nor an audio file"):
        parse_line(f"interleaved|hi|text|{text_file}")


# --- the incremental text stream ----------------------------------------------------------------


def test_text_stream_keeps_spaces_after_spans_and_stops_on_a_string(chat_gpt):
    tokenizer, space = chat_gpt.tokenizer, chat_gpt.space
    toy = space.require("toy")
    ids = tokenizer("Hi there", add_special_tokens=False).input_ids
    more = tokenizer("more words<eom> after", add_special_tokens=False).input_ids
    stream = TextStream(tokenizer, space, stop="<eom>")
    shown = "".join(stream.feed(TokenEvent(i, None)) for i in ids)
    stream.feed(TokenEvent(toy.start_id, None))
    stream.feed(SpanOpened("toy", 10))
    codes = space.ids_to_codes("toy", toy.code_ids[[3, 16 + 5]])
    stream.feed(TokenEvent(int(toy.code_ids[3]), "toy"))
    stream.feed(SpanClosed("toy", codes, False))
    for i in more:
        shown += stream.feed(TokenEvent(i, None))
        if stream.stopped:
            break
    assert stream.stopped
    assert "<" not in shown and shown.startswith("Hi there") and shown.endswith("more words")
    assert stream.message == f"Hi there{codes_to_string(toy.spec, codes)} more words"
    assert stream.text == "Hi there more words"


def test_reply_splits_the_speech_instruction_convention():
    reply = Reply(
        text="<-Ins-> what time is it\n <-Res-> It is noon.", message="", prompt="", to="text"
    )
    assert reply.transcript == "what time is it" and reply.answer == "It is noon."
    plain = Reply(text="Hello", message="", prompt="", to="text")
    assert plain.transcript is None and plain.answer == "Hello"


# --- conversations on the demo model ------------------------------------------------------------


def test_conversation_keeps_exactly_what_the_model_said(chat_gpt, series, tmp_path):
    chat = Conversation(chat_gpt, output_dir=tmp_path / "out", max_new_tokens=24)
    first = chat.send("Hello there", seed=0)
    assert first.prompt == MMGPT_CHAT.system + "\n[Human]: Hello there<eoh>\n[MMGPT]:"
    assert first.files == [] and first.spans == [] and first.text
    assert not first.message.startswith(":")  # REFERENCE §9.6: no ": " echo of the prompt
    second = chat.send("what is this?", inputs={"toy": series}, seed=1)
    span = chat_gpt.codecs.to_string("toy", series)
    assert second.prompt.startswith(
        first.prompt + f" {first.message}<eos>\n[Human]: {span} what is this?<eoh>"
    )
    third = chat.send("now draw one", to="toy", seed=2)
    assert third.prompt.endswith("[Human]: now draw one<eoh>\n[MMGPT]: <soty>")
    assert [s.modality for s in third.spans][:1] == ["toy"]
    assert third.message.startswith(
        codes_to_string(chat_gpt.space.require("toy").spec, third.spans[0].codes)
    )
    (path, *_) = third.files
    assert path.parent == tmp_path / "out" and path.suffix == ".txt" and path.read_text()
    assert [t.assistant for t in chat.history] == [first.message, second.message, third.message]
    assert chat.render().endswith(f"[MMGPT]: {third.message}<eos>")
    replay = Conversation(chat_gpt, output_dir=tmp_path / "again", max_new_tokens=24)
    assert replay.send("Hello there", seed=0).message == first.message
    pairs = [(r, m) for t in chat.history for r, m in (("u", t.user), ("b", t.assistant))]
    assert chat.render(message="next") == MMGPT_CHAT.render([*pairs, ("u", "next")])
    chat.history.append(Turn("say nothing", ""))  # an empty answer still closes its turn
    assert chat.render(message="next").endswith("[MMGPT]: <eos>\n[Human]: next<eoh>\n[MMGPT]:")
    chat.clear()
    assert chat.history == [] and chat.render() == MMGPT_CHAT.system + "\n"


def test_beams_shape_text_answers_and_leave_spans_alone(chat_gpt):
    beams = Conversation(chat_gpt, num_beams=4, max_new_tokens=16)
    shown: list[str] = []
    reply = beams.send("Hello there", seed=0, on_text=shown.append)
    single = Conversation(chat_gpt, max_new_tokens=16).send("Hello there", seed=0)
    assert reply.text and reply.spans == [] and "".join(shown).strip() == reply.text
    assert reply.message != single.message  # the beams chose another answer
    drawn = beams.send("now draw one", to="toy", seed=2)  # spans decode token by token
    assert [s.modality for s in drawn.spans][:1] == ["toy"]
    assert beams.target_config("toy").num_beams == 1 and beams.target_config("text").num_beams == 4
    default = Conversation(chat_gpt).target_config("text")  # the seed chat's budget, one beam
    assert (default.max_new_tokens, default.num_beams, default.top_k) == (500, 1, 50)


def test_reply_cut_at_max_new_tokens_is_closed(chat_gpt):
    chat = Conversation(chat_gpt, max_new_tokens=5)
    reply = chat.send("tell me everything", seed=3)
    assert reply.finish_reason == "length" and reply.new_tokens == 5
    follow = chat.send("and then?", seed=3)
    assert f"[MMGPT]: {reply.message}<eos>\n[Human]: and then?<eoh>" in follow.prompt


def test_history_is_cut_from_the_oldest_turn(chat_gpt):
    chat = Conversation(chat_gpt, context_length=230, max_new_tokens=20)
    dropped = []
    for i in range(6):
        reply = chat.send(f"turn number {i}", seed=i)
        dropped.append(reply.dropped)
        assert len(chat_gpt.tokenizer(reply.prompt).input_ids) <= 230 - 20
    assert sum(dropped) >= 1 and dropped[0] == 0
    assert chat.history[-1].user == "turn number 5"
    assert chat.history[0].user != "turn number 0"
    before = list(chat.history)
    with pytest.raises(InputError, match="message too long"):
        chat.send("word " * 300, seed=0)
    assert chat.history == before
    with pytest.raises(InputError, match="max_new_tokens 500 leaves no room"):
        Conversation(chat_gpt, context_length=400, max_new_tokens=500).send("hi")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"text": "hi", "inputs": {"toy": "/no/such.txt"}},
            InputError,
            "/no/such.txt: no such file",
        ),
        # the API knows no plugin it has not found (the CLI names ours: test_cli)
        ({"text": "hi", "to": "speech"}, PluginError, "unknown modality 'speech'; installed"),
        ({"text": "hi", "image": "x.png"}, PluginError, "unknown modality 'image'; installed"),
        ({"text": "hi", "to": "smell"}, PluginError, "unknown modality 'smell'"),
        ({"text": "  "}, InputError, "empty message"),
        (
            {"text": "hi", "voice_prompt": "/no/voice.wav"},
            InputError,
            "/no/voice.wav: no such file",
        ),
        ({"text": "hi", "voice_prompt": "/"}, InputError, "/: is a directory, not a file"),
    ],
)
def test_bad_turns_leave_the_history_intact(chat_gpt, kwargs, error, message):
    chat = Conversation(chat_gpt, max_new_tokens=4)
    chat.send("hello", seed=0)
    before = list(chat.history)
    with pytest.raises(error, match=message):
        chat.send(**kwargs, seed=0)
    assert chat.history == before


def test_voice_prompt_is_passed_to_the_decoder(chat_gpt, series, tmp_path, monkeypatch):
    chat = Conversation(chat_gpt, output_dir=tmp_path, max_new_tokens=12)
    spec = chat_gpt.plugins.modalities["toy"]
    # a toy that declares a voice condition; its codec refuses any condition, which shows it got one
    monkeypatch.setitem(
        chat_gpt.plugins.modalities, "toy", spec.model_copy(update={"condition": "voice"})
    )
    with pytest.raises(InputError, match="toy codec takes no condition file"):
        chat.send("say it", to="toy", voice_prompt=series, seed=0)
    assert chat.history == []
    assert chat.send("say it", to="toy", seed=0).files


def test_the_answers_decoding_config_reaches_its_decoder(chat_gpt, tmp_path, monkeypatch):
    """As in `run`: a --config file or override for the answer's modality (speech's vc_steps, say)
    is what its decoder gets, not the modality's default."""
    codec = chat_gpt.codecs.codec("toy")
    seen = []
    decode = codec.decode

    def spy(codes, **kwargs):
        seen.append(kwargs["config"])
        return decode(codes, **kwargs)

    monkeypatch.setattr(codec, "decode", spy)
    chat = Conversation(chat_gpt, output_dir=tmp_path, max_new_tokens=12, temperature=0.5)
    chat.send("draw", to="toy", seed=0)
    assert seen == [chat.target_config("toy")] and seen[0].temperature == 0.5


def test_anygpt_template(chat_gpt):
    chat = Conversation(chat_gpt, template="anygpt", max_new_tokens=8)
    reply = chat.send("hi", seed=0)
    assert reply.prompt == ANYGPT_CHAT.system + "\n[Human]: hi<eoh>\n[AnyGPT]:"
    assert chat.render().endswith(f"[AnyGPT]: {reply.message}<eom>")
    with pytest.raises(InputError, match="chat template 'llama'"):
        Conversation(chat_gpt, template="llama")


def test_real_plugins_in_a_conversation(tmp_path, monkeypatch):
    """Every installed first-party modality as input and output (skipped when none is installed)."""
    from anygpt_core.api import AnyGPT
    from anygpt_core.plugins import discover

    if not any(importlib.util.find_spec(f"anygpt_{m}") for m in ("image", "speech", "music")):
        pytest.skip("no first-party modality plugin installed")
    monkeypatch.delenv("ANYGPT_LOAD_PLUGINS", raising=False)
    plugins = discover()
    installed = [m for m in plugins.modalities if m in {"image", "speech", "music", "audio"}]
    gpt = AnyGPT.load(device="cpu", plugins=plugins, output_dir=tmp_path / "out")
    chat = Conversation(gpt, max_new_tokens=8)
    files = {
        "speech": write_wav(tmp_path / "ask.wav"),
        "music": write_wav(tmp_path / "song.wav", 1.0, 32000),
        "audio": write_wav(tmp_path / "sound.wav", 1.0, 24000),
    }
    if "image" in installed:
        from PIL import Image

        Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "red.png")
        files["image"] = tmp_path / "red.png"
    voice = write_wav(tmp_path / "voice.wav", 1.0, 16000, 330.0)
    for modality in installed:
        chat.send("what is this?", inputs={modality: files[modality]}, seed=0)
        assert chat.history[-1].user.count(gpt.space.require(modality).spec.start) == 1
        if modality == "speech":
            assert chat.history[-1].user.endswith(
                "Please recognize the voice command and give reply and voice"
            )
        spec = gpt.space.require(modality).spec
        budget = (spec.fixed_frames or 10) * spec.num_codebooks + 4
        out = Conversation(gpt, output_dir=tmp_path / "out", max_new_tokens=budget)
        reply = out.send(
            "make one", to=modality, seed=0, voice_prompt=voice if modality == "speech" else None
        )
        assert reply.spans[0].modality == modality
        assert reply.files[0].suffix == spec.output_extension and reply.files[0].stat().st_size > 0


# --- the command line ---------------------------------------------------------------------------


def test_scripted_chat_with_json(toy_env, capsys, monkeypatch, tmp_path, series):
    out_dir = tmp_path / "out"
    script = "\n".join(
        [
            "hello there",
            f"/toy {series}",
            "what is this?",
            "text|text|a bad line",
            "interleaved|draw a wave|toy",
            "/to speech",
            "interleaved|missing|text|/no/such.png",
            "|clear",
            "after the clear",
            "/history",
            "quit",
            "never read",
        ]
    )
    args = ["chat", "--seed", "0", "--max-new-tokens", "16", "--json", "--output-dir", str(out_dir)]
    code, out, err = run_cli(args, capsys, script + "\n", monkeypatch)
    assert code == 1  # some lines failed; the session went on
    *turns, history = [json.loads(line) for line in out.splitlines()]
    assert [t["user"] for t in history["history"]] == ["after the clear"]
    assert [t["input"] for t in turns] == [
        "hello there",
        "what is this?",
        "interleaved|draw a wave|toy",
        "after the clear",
    ]
    assert [t["turn"] for t in turns] == [1, 2, 3, 4]
    span = "<soty><🧪8><🧪28><🧪11><🧪28><🧪5><🧪28><🧪14><🧪28><eoty>"
    assert f"[Human]: {span} what is this?<eoh>" in turns[1]["prompt"]
    assert turns[1]["prompt"].startswith(turns[0]["prompt"] + " " + turns[0]["message"] + "<eos>\n")
    assert turns[2]["to"] == "toy" and turns[2]["spans"][0]["modality"] == "toy"
    (written,) = map(Path, turns[2]["files"])
    assert written.parent == out_dir and written.name.startswith("draw_a_wave_")
    assert turns[3]["prompt"] == MMGPT_CHAT.system + "\n[Human]: after the clear<eoh>\n[MMGPT]:"
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: cannot parse 'text|text|a bad line': task 'text' is not a chat task; chat lines are "
        "plain text or interleaved|TEXT|MODALITY|IMAGE|VOICE_PROMPT|SPEECH|MUSIC",
        f"Error: modality 'speech' needs a plugin: pip install {SPEECH_PLUGIN}",
        "Error: /no/such.png: no such file",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "series.txt"]


def test_scripted_chat_streams_text_and_notices_truncation(toy_env, capsys, monkeypatch, tmp_path):
    import anygpt_core.chat as chat_module

    original = chat_module.Conversation.__init__

    def small_context(self, gpt, **kwargs):
        original(self, gpt, context_length=150, **kwargs)

    monkeypatch.setattr(chat_module.Conversation, "__init__", small_context)
    script = "first question\nsecond question\nthird question\nfourth question\n/history\n"
    code, out, err = run_cli(
        ["chat", "--seed", "1", "--max-new-tokens", "20"], capsys, script, monkeypatch
    )
    assert code == 0, err
    assert "dropped the" in err and "oldest turn" in err
    assert "[Human]: fourth question<eoh>" in out and "[Human]: first question" not in out
    assert out.startswith(out.splitlines()[0]) and len(out.splitlines()) >= 3


def test_chat_help_documents_the_line_format(toy_env, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli(["chat", "--help"], capsys)
    assert code == 0
    assert "interleaved|TEXT|MODALITY|IMAGE|VOICE_PROMPT|SPEECH|MUSIC" in out
    assert "README" in out and "--num-beams 5" in out
    assert "--chat-template" in out and "--toy-codec-path" in out


def test_chat_rejects_an_unknown_template(toy_env, capsys):
    code, _, err = run_cli(["chat", "--chat-template", "llama"], capsys)
    assert code == 3 and err.strip() == "Error: --chat-template llama: choose one of mmgpt, anygpt"
