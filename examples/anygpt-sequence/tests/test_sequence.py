"""Run with the package installed: `pip install -e . && pytest tests`."""

from __future__ import annotations

import io
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
from anygpt_sequence.codec import SequenceCodec, fit_codebooks, read_series, save_checkpoint
from anygpt_sequence.demo import synthetic_series, write_demo_codec
from anygpt_sequence.plugin import SEQUENCE

from anygpt_core.protocol import codes_to_string, string_to_codes
from anygpt_core.testing import check_codec_contract


@pytest.fixture
def codec_path(tmp_path):
    return write_demo_codec(tmp_path)


@pytest.fixture
def series_csv(tmp_path):
    path = tmp_path / "series.csv"
    np.savetxt(path, synthetic_series(1, 50, seed=3)[0], header="value", comments="")
    return path


def test_entry_point_is_discovered():
    from anygpt_core.plugins import discover

    assert "sequence" in {ep.name for ep in entry_points(group="anygpt")}
    assert "sequence" in discover(load_only=["sequence"]).modalities


def test_codec_contract(codec_path, series_csv, tmp_path):
    codes = check_codec_contract(
        SEQUENCE, {"sequence_codec_path": str(codec_path)}, series_csv, tmp_path
    )
    assert codes.shape == (2, 13)  # 50 values -> 13 frames of 4 (the last one padded)


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_decoded_series_saves_in_memory_as_on_disk(codec_path, series_csv, tmp_path, suffix):
    codec = SequenceCodec(sequence_codec_path=codec_path)
    values = codec.decode(codec.encode(series_csv))
    buffer = io.BytesIO()
    codec.save(values, buffer, suffix=suffix)
    path = tmp_path / f"out{suffix}"
    codec.save(values, path)
    assert buffer.getvalue() == path.read_bytes()
    reread = read_series(path)
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(io.BytesIO(buffer.getvalue())), values)
    np.testing.assert_allclose(reread, values, rtol=1e-5)


def test_save_to_a_file_object_needs_a_suffix(codec_path):
    from anygpt_core import InputError

    with pytest.raises(InputError, match="needs a suffix"):
        SequenceCodec(sequence_codec_path=codec_path).save(np.zeros(4, np.float32), io.BytesIO())


def test_round_trip_error_is_small(codec_path, series_csv):
    codec = SequenceCodec(sequence_codec_path=codec_path)
    values = read_series(series_csv)
    decoded = codec.decode(codec.encode(series_csv))[: len(values)]
    assert np.abs(decoded - values).mean() < 0.1


def test_span_is_frame_major_with_layer_offsets(codec_path, series_csv):
    codes = SequenceCodec(sequence_codec_path=codec_path).encode(series_csv)
    span = codes_to_string(SEQUENCE, codes)
    assert span.startswith(f"<sosq><📈{int(codes[0, 0])}><📈{64 + int(codes[1, 0])}>")
    assert torch.equal(string_to_codes(SEQUENCE, span), codes)


def test_fit_codebooks_is_seeded(tmp_path):
    data = synthetic_series(8, 64)
    first, second = fit_codebooks(data, seed=1), fit_codebooks(data, seed=1)
    assert torch.equal(first["codebooks"], second["codebooks"])
    assert first["codebooks"].shape == (2, 64, 4)
    save_checkpoint(first, tmp_path / "c.safetensors")
    assert SequenceCodec(sequence_codec_path=tmp_path / "c.safetensors").frame_size == 4


def test_bad_inputs_are_one_line_errors(codec_path, tmp_path):
    from anygpt_core import CheckpointError, InputError

    bad = tmp_path / "bad.csv"
    bad.write_text("1\nnan\n")
    with pytest.raises(InputError, match="NaN"):
        SequenceCodec(sequence_codec_path=codec_path).encode(bad)
    with pytest.raises(CheckpointError, match="pass --sequence-codec-path"):
        SequenceCodec().encode(bad)


def test_bad_codes_fail_as_the_core_fails_them(codec_path):
    import torch

    from anygpt_core import GenerationError

    with pytest.raises(GenerationError, match="sequence: code 64 out of range"):
        SequenceCodec(sequence_codec_path=codec_path).decode(torch.full((2, 3), 64))


def test_sequence_trend_eval_task_through_anygpt_eval(tmp_path, capsys):
    """The plugin's own eval task runs through the core's `anygpt eval` on the demo model."""
    import json

    from anygpt_core.evaluation.metrics import require
    from anygpt_core.testing import run_cli

    require("jiwer")  # the eval extra is installed with the tests
    data = tmp_path / "trends"
    data.mkdir()
    rows = ["file,label"]
    for i, (label, slope) in enumerate([("rising", 1.0), ("falling", -1.0), ("flat", 0.0)]):
        np.savetxt(data / f"s{i}.csv", slope * np.linspace(0, 4, 32), header="value", comments="")
        rows.append(f"s{i}.csv,{label}")
    (data / "trends.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run_cli(
        [
            "eval",
            "sequence-trend",
            "--data",
            f"sequence-trend={data}",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--decode",
            "model",
            "--max-new-tokens",
            "8",
        ],
        capsys,
    )
    assert code == 0, err
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["tasks"]["sequence-trend"]
    assert (entry["metric"], entry["n"], entry["skipped"]) == ("accuracy", 3, 0)
    assert 0 <= entry["value"] <= 100
    assert "sequence-trend accuracy:" in out
    (data / "trends.csv").write_text("file,label\ns0.csv,sideways\n")
    code, _, err = run_cli(
        [
            "eval",
            "sequence-trend",
            "--data",
            f"sequence-trend={data}",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 3 and "trends.csv:2: expected a file and a label" in err
