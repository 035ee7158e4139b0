from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anygpt_core import DecodingConfig, GenerationError, Instructions, ModalitySpec
from anygpt_core.protocol import (
    SpanSegment,
    TextSegment,
    codes_to_string,
    flatten_codes,
    parse_response,
    string_to_codes,
    unflatten_codes,
)


def make_spec(name="music", prefix="🎶", start="<somu>", end="<eomu>", size=2048, k=4, fixed=None):
    return ModalitySpec(
        name=name,
        prefix=prefix,
        start=start,
        end=end,
        codebook_size=size,
        num_codebooks=k,
        fixed_frames=fixed,
        decoding=DecodingConfig(),
        output_extension=".wav",
        instructions=Instructions(to_text=("x",), from_text=("y",)),
        codec_factory=lambda options: None,
    )


MUSIC = make_spec()
IMAGE = make_spec("image", "👀", "<soim>", "<eoim>", 8192, 1, fixed=32)
SPEECH = make_spec("speech", "🗣️", "<sosp>", "<eosp>", 1024, 1)


def test_codes_to_string_music_is_frame_major_with_layer_offsets():
    # First frame of the reference's music-1m.jsonl sample: <🎶166><🎶3979><🎶6115><🎶7914>.
    codes = torch.tensor([[166, 1], [3979 - 2048, 2], [6115 - 4096, 3], [7914 - 6144, 4]])
    text = codes_to_string(MUSIC, codes)
    assert text == ("<somu><🎶166><🎶3979><🎶6115><🎶7914><🎶1><🎶2050><🎶4099><🎶6148><eomu>")


def test_speech_prefix_is_two_code_points():
    assert SPEECH.code_token(5) == "<\U0001f5e3\ufe0f5>"
    assert codes_to_string(SPEECH, torch.tensor([[7, 9]])) == "<sosp><🗣️7><🗣️9><eosp>"


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 4),
    size=st.integers(2, 64),
    frames=st.integers(1, 20),
    data=st.data(),
)
def test_flatten_string_round_trip(k, size, frames, data):
    spec = make_spec("toy", "🧪", "<so>", "<eo>", size, k)
    values = data.draw(st.lists(st.integers(0, size - 1), min_size=k * frames, max_size=k * frames))
    codes = torch.tensor(values).view(k, frames)
    flat = flatten_codes(spec, codes)
    assert torch.equal(flat[:k] // size, torch.arange(k))  # first frame visits every layer in order
    assert torch.equal(unflatten_codes(spec, flat), codes)
    assert torch.equal(string_to_codes(spec, codes_to_string(spec, codes)), codes)


def test_flatten_rejects_wrong_shape_and_range():
    with pytest.raises(GenerationError, match=r"shape \[4, T\]"):
        flatten_codes(MUSIC, torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(
        GenerationError, match=r"code 2048 out of range: each codebook holds 0\.\.2047"
    ):
        flatten_codes(MUSIC, torch.full((4, 2), 2048))
    with pytest.raises(GenerationError, match="codes must be integers"):
        flatten_codes(MUSIC, torch.zeros(4, 2))
    assert flatten_codes(MUSIC, torch.zeros(4, 0, dtype=torch.long)).numel() == 0


def test_parse_response_splits_text_and_spans_with_spaces_between_tokens():
    text = "Here: <sosp> <🗣️3> <🗣️4> <eosp> done <soim>" + "<👀1>" * 32 + "<eoim>"
    segments = parse_response(text, {"speech": SPEECH, "image": IMAGE})
    assert [type(s) for s in segments] == [TextSegment, SpanSegment, TextSegment, SpanSegment]
    assert segments[0].text == "Here: "
    assert torch.equal(segments[1].codes, torch.tensor([[3, 4]]))
    assert segments[1].position == 6
    assert segments[3].codes.shape == (1, 32)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ab <sosp><🗣️3>", "span <sosp> at 3: not closed by <eosp>"),
        ("<sosp><🗣️3>oops<eosp>", "unexpected 'oops<eosp>' at 11"),
        ("x<eosp>", "end token <eosp> at 1 without a start"),
        ("<sosp><🗣️1024><eosp>", "code 1024 at 6 is out of range"),
    ],
)
def test_parse_strict_errors_name_the_position(text, message):
    with pytest.raises(GenerationError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_response(text, {"speech": SPEECH})


def test_parse_strict_rvq_layer_order_and_whole_frames():
    wrong_layer = "<somu><🎶1><🎶2><eomu>"  # second code should be in codebook 1
    with pytest.raises(GenerationError, match="belongs to codebook 0, expected 1"):
        parse_response(wrong_layer, {"music": MUSIC})
    partial = "<somu><🎶1><🎶2049><eomu>"
    with pytest.raises(GenerationError, match="ends inside a frame"):
        parse_response(partial, {"music": MUSIC})


def test_parse_lenient_repairs_and_warns(caplog):
    caplog.set_level(logging.WARNING)
    # A broken frame (layer 0 code where layer 2 is due) is dropped; the partial last frame too.
    text = "<somu><🎶1><🎶2049><🎶5><🎶2053><🎶4101><🎶6149><🎶9><eomu>"
    (span,) = parse_response(text, {"music": MUSIC}, strict=False)
    assert torch.equal(span.codes, torch.tensor([[5], [5], [5], [5]]))
    assert len(span.repairs) == 2
    assert "expected 2" in caplog.text
    (image,) = parse_response("<soim>" + "<👀7>" * 40, {"image": IMAGE}, strict=False)
    assert image.codes.shape == (1, 32)  # truncated to 32 and closed


def test_image_span_needs_exactly_32_codes():
    with pytest.raises(GenerationError, match="has 31 codes, image needs exactly 32"):
        string_to_codes(IMAGE, "<soim>" + "<👀1>" * 31 + "<eoim>")


def test_string_to_codes_rejects_extra_text():
    with pytest.raises(GenerationError, match="expected one <sosp>…<eosp> span"):
        string_to_codes(SPEECH, "hello <sosp><🗣️1><eosp>")
