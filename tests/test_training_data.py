"""`anygpt data prepare`: protocol strings from the example plugin's codec, skips, resume, workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_training_pipeline as pipeline
from cli_runner import run_cli
from test_training_pipeline import write_jsonl, write_series

# the example plugin's fixtures, shared with the pipeline tests
sequence_env = pipeline.sequence_env
plugins = pipeline.plugins
demo_options = pipeline.demo_options


@pytest.fixture
def manifest(tmp_path):
    rows = write_series(tmp_path, 12)
    (tmp_path / "media" / "bad.csv").write_text("time,value\n0,abc\n")
    (tmp_path / "media" / "long.csv").write_text("\n".join(str(i / 500) for i in range(400)))
    lines = [
        rows[0],
        {"text": "gone", "sequence": "media/missing.csv"},
        {"text": "broken", "sequence": "media/bad.csv"},
        {"text": "a smell", "smell": "media/0.csv"},
        "{not json",
        {"text": "long", "sequence": "media/long.csv"},
        {
            "id": "chat",
            "conversation": [
                {"role": "user", "message": "{sequence} What is it?", "sequence": "media/1.csv"},
                {"role": "assistant", "message": "A falling line."},
            ],
        },
        *rows[1:],
    ]
    return write_jsonl(tmp_path / "manifest.jsonl", lines)


def test_prepare_writes_spans_and_reports_bad_lines(manifest, plugins, demo_options, tmp_path):
    from anygpt_core.api import CodecSet
    from anygpt_core.training import prepare_dataset

    out = tmp_path / "train.jsonl"
    summary = prepare_dataset(manifest, out, plugins=plugins, options=demo_options, max_tokens=100)
    assert [(s.line, s.kind) for s in summary.skipped] == [
        (2, "missing file"),
        (3, "corrupt file"),
        (4, "unknown modality"),
        (5, "bad line"),
        (6, "too long"),
    ]
    assert summary.skipped[0].reason == "media/missing.csv: no such file"
    assert "not a numeric series" in summary.skipped[1].reason
    assert summary.skipped[2].reason == "unknown modality 'smell' (installed: sequence)"
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert summary.written == len(rows) == 13
    codecs = CodecSet(plugins, demo_options)
    assert rows[0] == {
        "text": "a rising line",
        "sequence": codecs.to_string("sequence", tmp_path / "media/0.csv"),
    }
    span = codecs.to_string("sequence", tmp_path / "media/1.csv")
    assert rows[1] == {
        "id": "chat",
        "conversation": [
            {"role": "user", "message": f"{span} What is it?"},
            {"role": "assistant", "message": "A falling line."},
        ],
    }
    assert span.startswith("<sosq><📈") and span.endswith("<eosq>") and span.count("<📈") == 32


def test_prepare_resumes_after_an_interruption(manifest, plugins, demo_options, tmp_path):
    from anygpt_core.training import prepare_dataset
    from anygpt_core.training.data import state_path

    reference = tmp_path / "reference.jsonl"
    prepare_dataset(manifest, reference, plugins=plugins, options=demo_options, max_tokens=100)

    def stop_at_line_9(done, total, skipped):
        if done == 9:
            raise KeyboardInterrupt

    out = tmp_path / "train.jsonl"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(
            manifest,
            out,
            plugins=plugins,
            options=demo_options,
            max_tokens=100,
            on_progress=stop_at_line_9,
        )
    state = json.loads(state_path(out).read_text())
    assert state["lines"] == 9 and not state["complete"]
    with out.open("a") as handle:
        handle.write('{"text": "half a li')  # as if killed in the middle of a write
    summary = prepare_dataset(
        manifest, out, plugins=plugins, options=demo_options, max_tokens=100, workers=2
    )
    assert summary.resumed_at == 9
    assert out.read_bytes() == reference.read_bytes()
    assert [s.line for s in summary.skipped] == [2, 3, 4, 5, 6]
    again = prepare_dataset(manifest, out, plugins=plugins, options=demo_options, max_tokens=100)
    assert again.written == 13 and out.read_bytes() == reference.read_bytes()


def test_prepare_refuses_to_resume_with_another_manifest(manifest, plugins, demo_options, tmp_path):
    from anygpt_core.errors import InputError
    from anygpt_core.training import prepare_dataset

    out = tmp_path / "train.jsonl"
    prepare_dataset(manifest, out, plugins=plugins, options=demo_options)
    manifest.write_text(
        manifest.read_text() + json.dumps({"text": "more", "sequence": "media/2.csv"}) + "\n"
    )
    with pytest.raises(InputError, match="prepared with another manifest; use --overwrite"):
        prepare_dataset(manifest, out, plugins=plugins, options=demo_options)
    summary = prepare_dataset(manifest, out, plugins=plugins, options=demo_options, overwrite=True)
    assert summary.written == 15  # the long series fits the default --max-tokens


def test_prepare_refuses_to_resume_with_another_codec(manifest, plugins, demo_options, tmp_path):
    """Codes of another checkpoint must not be appended to a file half written with the first."""
    import shutil

    from anygpt_core.errors import InputError
    from anygpt_core.training import prepare_dataset

    def stop(done, total, skipped):
        if done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "train.jsonl"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(manifest, out, plugins=plugins, options=demo_options, on_progress=stop)
    other = {
        name: str(shutil.copy(value, tmp_path / f"other-{Path(value).name}"))
        for name, value in demo_options.items()
    }
    with pytest.raises(InputError, match="prepared with another codec setup; use --overwrite"):
        prepare_dataset(manifest, out, plugins=plugins, options=other)


def test_cli_prepare_prints_a_summary(manifest, sequence_env, tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    code, stdout, err = run_cli(
        ["data", "prepare", str(manifest), str(out), "--demo", "--max-tokens", "100", "-j", "2"],
        capsys,
    )
    assert code == 0, err
    assert f"wrote {out}: 13 examples from 18 lines, 5 skipped" in " ".join(stdout.split())
    assert "1 missing file" in stdout and "1 too long" in stdout
    assert "unknown modality 'smell'" in stdout


def test_cli_prepare_missing_manifest(sequence_env, tmp_path, capsys):
    code, _, err = run_cli(
        ["data", "prepare", str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl")], capsys
    )
    assert code == 3 and err == f"Error: {tmp_path / 'nope.jsonl'}: no such manifest\n"


def test_cli_prepare_without_codec_weights_stops_with_one_line(
    manifest, sequence_env, tmp_path, capsys
):
    code, _, err = run_cli(["data", "prepare", str(manifest), str(tmp_path / "o.jsonl")], capsys)
    assert (
        code == 4 and err == "Error: sequence codec: pass --sequence-codec-path codec.safetensors\n"
    )


def test_shards_merge_to_the_bytes_of_one_run(manifest, plugins, demo_options, tmp_path):
    """Three machines' shards join into exactly what one run writes."""
    from anygpt_core.training import prepare_dataset
    from anygpt_core.training.data import merge_shards, shard_path, state_path

    reference = tmp_path / "reference.jsonl"
    prepare_dataset(manifest, reference, plugins=plugins, options=demo_options, max_tokens=100)
    out = tmp_path / "train.jsonl"
    parts = []
    for index in (1, 2, 3):
        summary = prepare_dataset(
            manifest,
            out,
            plugins=plugins,
            options=demo_options,
            max_tokens=100,
            shard=(index, 3),
        )
        parts.append(summary)
    assert [(s.first, s.last, s.total) for s in parts] == [(1, 6, 6), (7, 12, 6), (13, 18, 6)]
    assert [s.line for s in parts[0].skipped] == [2, 3, 4, 5, 6]  # manifest line numbers
    assert parts[1].out == shard_path(out, (2, 3)) == tmp_path / "train.00002-of-00003.jsonl"
    assert not out.exists()
    assert b"".join(s.out.read_bytes() for s in parts) == reference.read_bytes()
    merged = merge_shards(out)
    assert out.read_bytes() == reference.read_bytes()
    assert json.loads(state_path(out).read_text()) == json.loads(state_path(reference).read_text())
    assert merged.written == 13 and [s.line for s in merged.skipped] == [2, 3, 4, 5, 6]
    again = prepare_dataset(manifest, out, plugins=plugins, options=demo_options, max_tokens=100)
    assert again.was_complete and out.read_bytes() == reference.read_bytes()


def test_shard_files_listed_in_a_config_give_the_same_examples(plugins, demo_options, tmp_path):
    from anygpt_core.training import prepare_dataset
    from anygpt_core.training.datasets import PretrainDataset, read_examples

    manifest = write_jsonl(tmp_path / "manifest.jsonl", write_series(tmp_path, 10))
    whole = tmp_path / "whole.jsonl"
    prepare_dataset(manifest, whole, plugins=plugins, options=demo_options)
    shards = [
        prepare_dataset(
            manifest, tmp_path / "part.jsonl", plugins=plugins, options=demo_options, shard=(k, 4)
        ).out
        for k in (1, 2, 3, 4)
    ]
    phrasings = {("sequence", "to_text"): ["Say it."], ("sequence", "from_text"): ["Draw it."]}

    def rendered(paths):
        lines, _ = read_examples(paths, "pretrain", plugins.modalities)
        data = PretrainDataset(lines, None, phrasings, max_length=512, seed=3)
        return [data.render(i) for i in range(len(data))]

    assert len(rendered([whole])) == 10
    assert rendered(shards) == rendered([whole])


def test_a_shard_resumes_on_its_own(manifest, plugins, demo_options, tmp_path):
    from anygpt_core.training import prepare_dataset
    from anygpt_core.training.data import state_path

    reference = prepare_dataset(
        manifest, tmp_path / "ref.jsonl", plugins=plugins, options=demo_options, shard=(2, 2)
    )

    def stop(done, total, skipped):
        assert total == 9
        if done == 4:
            raise KeyboardInterrupt

    out = tmp_path / "train.jsonl"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(
            manifest, out, plugins=plugins, options=demo_options, shard=(2, 2), on_progress=stop
        )
    part = tmp_path / "train.00002-of-00002.jsonl"
    assert json.loads(state_path(part).read_text())["lines"] == 13  # manifest lines 10-13 done
    summary = prepare_dataset(manifest, out, plugins=plugins, options=demo_options, shard=(2, 2))
    assert summary.resumed_at == 13 and summary.written == reference.written == 9
    assert part.read_bytes() == reference.out.read_bytes()


def test_cli_prepares_shards_and_merges_them(manifest, sequence_env, tmp_path, capsys):
    reference = tmp_path / "reference.jsonl"
    code, _, err = run_cli(
        ["data", "prepare", str(manifest), str(reference), "--demo", "--max-tokens", "100"],
        capsys,
    )
    assert code == 0, err
    out = tmp_path / "train.jsonl"
    for shard in ("1/2", "2/2"):
        args = ["data", "prepare", str(manifest), str(out), "--demo", "--max-tokens", "100"]
        code, stdout, err = run_cli([*args, "--shard", shard], capsys)
        assert code == 0, err
    part = tmp_path / "train.00002-of-00002.jsonl"
    expected = f"wrote {part}: 9 examples from 9 lines (shard 2/2: manifest lines 10-18), 0 skipped"
    assert expected in " ".join(stdout.split())
    code, stdout, err = run_cli(["data", "merge", str(out)], capsys)
    assert code == 0, err
    assert f"wrote {out}: 13 examples from 18 lines, 5 skipped" in " ".join(stdout.split())
    assert out.read_bytes() == reference.read_bytes()
    code, _, err = run_cli(["data", "merge", str(out)], capsys)
    assert (code, err) == (3, f"Error: {out}: already exists; use --overwrite to merge again\n")


def test_cli_merge_names_a_missing_or_unfinished_shard(manifest, sequence_env, tmp_path, capsys):
    from anygpt_core.training.data import state_path

    out = tmp_path / "train.jsonl"
    code, _, err = run_cli(["data", "merge", str(out)], capsys)
    assert (code, err) == (
        3,
        f"Error: {out}: no shards to merge (e.g. train.00001-of-00002.jsonl)\n",
    )
    for shard in ("1/3", "3/3"):
        args = ["data", "prepare", str(manifest), str(out), "--demo", "--shard", shard]
        assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli(["data", "merge", str(out)], capsys)
    assert (code, err) == (3, f"Error: {out}: shard 2 of 3 missing\n")
    args = ["data", "prepare", str(manifest), str(out), "--demo", "--shard", "2/3"]
    assert run_cli(args, capsys)[0] == 0
    part = tmp_path / "train.00002-of-00003.jsonl"
    state = json.loads(state_path(part).read_text())
    state_path(part).write_text(json.dumps({**state, "complete": False, "lines": 9}))
    code, _, err = run_cli(["data", "merge", str(out)], capsys)
    assert (code, err) == (
        3,
        f"Error: {part}: incomplete (up to manifest line 9); "
        "run prepare with --shard 2/3 to finish it\n",
    )
    assert not out.exists()


@pytest.mark.parametrize("shard", ["3/2", "0/4", "two/4", "1"])
def test_cli_prepare_rejects_a_bad_shard(manifest, sequence_env, tmp_path, capsys, shard):
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(
        ["data", "prepare", str(manifest), str(out), "--demo", "--shard", shard], capsys
    )
    assert (code, err) == (3, f"Error: --shard {shard}: expected K/N with 1 <= K <= N, e.g. 2/8\n")
    assert not list(tmp_path.glob("o*"))
