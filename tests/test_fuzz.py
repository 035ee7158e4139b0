"""Fault suite, fuzzing (issue #16): no input to the parsers and loaders is an internal error.

Each target either returns its value or raises the project's error of its family (one line);
anything else (a KeyError, a RecursionError, a traceback) fails the test with the input that
caused it. Inputs mix arbitrary text (lone surrogates, as Python keeps bytes that are not
UTF-8, included) with pieces of the real formats, so the parsers get past their first check.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Any code point, lone surrogates (undecodable bytes as Python keeps them) included.
anything = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
pieces = st.sampled_from(
    [
        "text",
        "image",
        "speech",
        "music",
        "toy",
        "|",
        "||",
        " ",
        "\n",
        "\t",
        "~",
        "/",
        "..",
        "a.wav",
        "voic.wav",
        "/dev/null",
        "/tmp",
        "interleaved",
        "clear",
        "quit",
        "exit",
        ",",
        "\udcff",
        "é",
        "🗣️",
        "<soty>",
        "<eoty>",
        "<🧪3>",
        "<🧪31>",
        "<🧪99>",
        "<🧪-1>",
        "<🧪>",
        "<sosp>",
        "<eosp>",
        "{",
        "}",
        "0",
        "1e400",
        "nan",
        "#",
    ]
)
formatted = st.lists(st.one_of(pieces, anything), max_size=12).map("".join)
names = st.sampled_from(["text", "toy", "image", "speech", "TEXT", " text ", "smell", "1x", ""])
instructions = st.builds(
    lambda source, target, payload, rest: "|".join([source, target, payload, *rest]),
    names,
    names,
    anything,
    st.lists(st.one_of(pieces, anything), max_size=2),
)
chat_lines = st.builds(
    lambda fields: "interleaved|" + "|".join(fields),
    st.lists(st.one_of(pieces, anything), max_size=8),
)
inputs = st.one_of(anything, formatted, instructions, chat_lines)


def _outcome(call, family):
    """`(value, None)`, or `(None, error)` when `call` raised an error of `family`."""
    try:
        return call(), None
    except family as err:
        return None, err


def _one_line(err: Exception | None) -> bool:
    return err is not None and "\n" not in str(err) and bool(str(err))


def _line_of(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


@FUZZ
@given(inputs)
def test_instruction_parser_never_fails_internally(text):
    from anygpt_core.errors import InputError
    from anygpt_core.tasks import Task, parse_instruction

    task, err = _outcome(lambda: parse_instruction(text), InputError)
    if err is not None:
        assert _one_line(err)
        return
    assert isinstance(task, Task) and task.payload
    task.instruction.encode("utf-8")  # no undecodable byte got through


@FUZZ
@given(inputs)
def test_chat_line_parser_never_fails_internally(tmp_path_factory, text):
    from anygpt_cli.chat_lines import ChatLine, parse_line
    from anygpt_core.errors import InputError

    line, err = _outcome(lambda: parse_line(_line_of(text)), InputError)
    if err is not None:
        assert _one_line(err)
        return
    assert isinstance(line, ChatLine)
    line.text.encode("utf-8")


@pytest.fixture(scope="module")
def specs():
    """Real modality specs of every shape: fixed length (image), RVQ (music), plain (speech)."""
    from anygpt_image.plugin import IMAGE
    from anygpt_music.plugin import MUSIC
    from anygpt_speech.plugin import SPEECH

    return [IMAGE, SPEECH, MUSIC]


def _span_text(spec, draw_codes, extra):
    body = "".join(f"<{spec.prefix}{c}>" for c in draw_codes)
    return f"{spec.start}{body}{extra}{spec.end}"


@FUZZ
@given(
    st.integers(0, 2),
    st.lists(st.integers(-3, 9000), max_size=70),
    inputs,
    st.booleans(),
    st.booleans(),
)
def test_span_parser_never_fails_internally(specs, which, codes, noise, strict, wrap):
    from anygpt_core.errors import GenerationError
    from anygpt_core.protocol import string_to_codes

    spec = specs[which]
    text = _span_text(spec, codes, noise) if wrap else noise
    parsed, err = _outcome(lambda: string_to_codes(spec, text, strict=strict), GenerationError)
    if err is not None:
        assert _one_line(err)
        return
    assert parsed.ndim == 2 and parsed.shape[0] == spec.num_codebooks
    assert int(parsed.min()) >= 0 and int(parsed.max()) < spec.codebook_size


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.integers(-2, 40), max_size=12), inputs, st.booleans())
def test_decode_command_never_fails_internally(toy_env, tmp_path, capsys, codes, noise, lenient):
    from cli_runner import run_cli

    span = tmp_path / "span.txt"
    text = "<soty>" + "".join(f"<🧪{c}>" for c in codes) + noise + "<eoty>"
    span.write_bytes(text.encode("utf-8", "surrogatepass"))
    out = tmp_path / "out.txt"
    args = ["decode", "toy", f"@{span}", "-o", str(out), "--force", "--demo"]
    code, _, err = run_cli([*args, "--lenient"] if lenient else args, capsys)
    errors = [x for x in err.splitlines() if x.startswith("Error:")]  # --lenient also warns
    assert "internal error" not in err, err
    assert (code == 0 and out.is_file()) or (code in {3, 7} and len(errors) == 1), err


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | anything,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(anything, inner, max_size=4),
    max_leaves=12,
)
decoding_fields = st.fixed_dictionaries(
    {},
    optional={
        name: json_values | st.floats() | st.integers(-5, 10**12)
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "repetition_penalty",
            "max_new_tokens",
            "min_new_tokens",
            "num_beams",
            "do_sample",
            "vc_steps",
        )
    },
)


def _config_text(value, raw):
    if raw is not None:
        return raw
    return json.dumps(value, allow_nan=True)


@FUZZ
@given(decoding_fields | json_values, st.none() | anything | st.sampled_from(["[" * 50_000]))
def test_decoding_config_loading_never_fails_internally(tmp_path_factory, value, raw):
    from anygpt_core.config import DecodingConfig, load_decoding_config
    from anygpt_core.errors import ConfigError

    path = tmp_path_factory.mktemp("config") / "c.json"
    path.write_bytes(_config_text(value, raw).encode("utf-8", "surrogatepass"))
    config, err = _outcome(lambda: load_decoding_config(path, base=DecodingConfig()), ConfigError)
    if err is not None:
        assert _one_line(err)
        return
    assert all(
        v is None or isinstance(v, (bool, int)) or 0 < v < float("inf")
        for v in config.model_dump().values()
    )


train_fields = st.fixed_dictionaries(
    {},
    optional={
        name: json_values | st.sampled_from(["x", 1, 1e400, -1, "runs/x"])
        for name in (
            "model",
            "data",
            "output_dir",
            "max_length",
            "learning_rate",
            "max_steps",
            "save_steps",
            "seed",
            "packing",
            "trainer",
            "resume",
        )
    },
)


@FUZZ
@given(train_fields | json_values, st.sampled_from([".yaml", ".json"]), st.none() | anything)
def test_training_config_loading_never_fails_internally(tmp_path_factory, value, suffix, raw):
    from anygpt_core.errors import ConfigError
    from anygpt_core.training.config import TrainConfig, load_train_config

    path = tmp_path_factory.mktemp("train") / f"t{suffix}"
    path.write_bytes(_config_text(value, raw).encode("utf-8", "surrogatepass"))
    config, err = _outcome(lambda: load_train_config(path), ConfigError)
    if err is not None:
        assert _one_line(err)
        return
    assert isinstance(config, TrainConfig)


@FUZZ
@given(st.text(string.printable + "\udcff|é", max_size=40))
def test_manifest_lines_never_fail_internally(text):
    from anygpt_core.training.data import _Skip, convert_line

    class NoCodecs:
        class plugins:  # the CodecSet attribute it stands for
            modalities: ClassVar[dict[str, object]] = {}

    line, skip = _outcome(
        lambda: convert_line(NoCodecs(), text, Path("/nonexistent"), max_tokens=100), _Skip
    )
    assert _one_line(skip) or json.loads(line) is not None
