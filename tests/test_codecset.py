from __future__ import annotations

import io

import pytest
import torch

from anygpt_core.errors import GenerationError, InputError


@pytest.fixture
def codecs(toy_env, tmp_path):
    from anygpt_core.api import CodecSet
    from anygpt_core.plugins import discover

    plugins = discover()
    return CodecSet(plugins, plugins.demo_assets(tmp_path / "assets"))


CODES = torch.tensor([[1, 8, 15], [8, 8, 9]])


def test_codecset_decode_returns_media(codecs):
    media = codecs.decode("toy", CODES)
    assert media.shape == (3,)


def test_codecset_decode_checks_codes(codecs):
    with pytest.raises(GenerationError):
        codecs.decode("toy", torch.tensor([[1, 99], [0, 0]]))


def test_codecset_to_bytes_equals_the_saved_file(codecs, tmp_path):
    media = codecs.decode("toy", CODES)
    data = codecs.to_bytes("toy", media)
    written = codecs.save("toy", media, tmp_path / "out", "a.txt")
    assert written == tmp_path / "out" / "a.txt"
    assert data == written.read_bytes() != b""
    assert codecs.save("toy", media, tmp_path / "out", "a.txt").name == "a-1.txt"
    assert codecs.to_bytes("toy", media, suffix=".txt") == data


def test_codec_save_to_a_file_object_needs_a_suffix(codecs):
    with pytest.raises(InputError, match="needs a suffix"):
        codecs.codec("toy").save(codecs.decode("toy", CODES), io.BytesIO())


def test_codecset_refuses_a_file_of_another_format(codecs, tmp_path):
    """The spec's `input_extensions`: one line before the codec sees the file."""
    wrong = tmp_path / "series.csv"
    wrong.write_text("0.1 0.2")
    with pytest.raises(InputError) as err:
        codecs.encode("toy", wrong)
    assert str(err.value) == f"{wrong}: unsupported format; toy reads .txt"
    bare = tmp_path / "series"
    bare.write_text("0.1 0.2")
    assert codecs.encode("toy", bare).shape[0] == 2  # no suffix: the codec reads it


def test_draw_seed():
    from anygpt_core.config import MAX_SEED, draw_seed
    from anygpt_core.errors import ConfigError

    assert draw_seed(7) == 7
    assert 0 <= draw_seed(None) < 2**31
    with pytest.raises(ConfigError):
        draw_seed(MAX_SEED + 1)


def test_a_condition_is_refused_where_the_spec_declares_none(codecs, tmp_path, toy_gpt):
    """No codec has to check: the core refuses it, before generating for a task."""
    voice = tmp_path / "voice.wav"
    voice.write_bytes(b"RIFF")
    with pytest.raises(InputError) as err:
        codecs.decode("toy", CODES, condition=voice)
    assert str(err.value) == f"{voice}: toy decoding takes no condition file"
    with pytest.raises(InputError, match="toy decoding takes no condition file"):
        toy_gpt.prepare(f"text|toy|a wave|{voice}")
