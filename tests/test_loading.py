"""Checkpoints as users have them: the layouts the published models use, and wrong ones."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file, save_file


@pytest.fixture
def demo_dir(text_only_env):
    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    return ensure_demo(discover()).model_dir


def _copy_with(demo_dir, target, edit):
    shutil.copytree(demo_dir, target)
    weights = load_file(target / "model.safetensors")
    edit(weights)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_sharded_bin_checkpoint_as_transformers_4_34_saved_it(demo_dir, tmp_path, capsys):
    """fnlp/AnyGPT-* were saved by transformers 4.34: pickled-tensor shards and an index."""
    target = tmp_path / "bin-model"
    shutil.copytree(demo_dir, target)
    weights = load_file(target / "model.safetensors")
    (target / "model.safetensors").unlink()
    keys = sorted(weights)
    weight_map = {}
    for number, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :]), 1):
        name = f"pytorch_model-0000{number}-of-00002.bin"
        torch.save({k: weights[k] for k in part}, target / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (target / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    answers = []
    for model in (demo_dir, target):
        args = ["run", "text|text|Hello", "--seed", "1", "--max-new-tokens", "16", "--json"]
        code, out, err = run_cli([*args, "--model-name-or-path", str(model)], capsys)
        assert code == 0, err
        answers.append(json.loads(out)["text"])
    assert answers[0] == answers[1] != ""


def _rename(weights):
    weights["model.layers.0.mlp.upp.weight"] = weights.pop("model.layers.0.mlp.up_proj.weight")


def _reshape(weights):
    weights["model.norm.weight"] = torch.ones(7)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            _rename,
            "does not match the model its config.json describes: 1 missing key (model.layers.0.mlp.up_proj.weight); "
            "1 unexpected key (model.layers.0.mlp.upp.weight)",
        ),
        (_reshape, "cannot load the model (tensor shapes differ from its config.json)"),
    ],
)
def test_weights_that_do_not_fit_are_refused_in_one_line(demo_dir, tmp_path, capsys, edit, problem):
    """transformers would fill the gaps with random values and only warn; we refuse."""
    bad = _copy_with(demo_dir, tmp_path / "bad", edit)
    code, out, err = run_cli(["run", "text|text|x", "--model-name-or-path", str(bad)], capsys)
    assert code == 4
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"Error: {bad}: {problem}"]
    assert out == ""


def test_auto_dtype_on_the_cpu_fits_the_model_in_memory(demo_dir, caplog):
    from anygpt_core.errors import CheckpointError
    from anygpt_core.loading import checkpoint_bytes, cpu_dtype

    size, itemsize = checkpoint_bytes(demo_dir)
    assert size > 0 and itemsize == 4  # the demo is stored in float32
    assert cpu_dtype(demo_dir, available=10 * size) == "float32"
    assert caplog.records == []
    assert cpu_dtype(demo_dir, available=int(0.9 * size)) == "bfloat16"
    assert "loading in bfloat16: float32 needs" in caplog.text
    with pytest.raises(CheckpointError, match=r"needs .* GiB even in bfloat16"):
        cpu_dtype(demo_dir, available=size // 4)


def test_a_model_too_large_for_memory_is_refused_before_loading(demo_dir, capsys, monkeypatch):
    """Instead of the kernel's silent kill: one line, exit 4."""
    from anygpt_core import loading

    monkeypatch.setattr(loading, "available_memory", lambda: 1024)
    args = ["run", "text|text|x", "--model-name-or-path", str(demo_dir), "--device", "cpu"]
    code, _, err = run_cli(args, capsys)
    assert code == 4
    assert err.startswith(f"Error: {demo_dir}: the model needs ") and err.count("\n") == 1
    code, _, err = run_cli([*args, "--dtype", "float32", "--max-new-tokens", "4"], capsys)
    assert code == 0, err  # an explicit --dtype is the user's call


def test_hub_id_loads_from_the_local_cache(demo_dir, tmp_path, capsys, monkeypatch):
    """`--model-name-or-path fnlp/AnyGPT-base` after `hf download`: found in the cache, offline."""
    revision = "1" * 40
    repo = tmp_path / "hub" / "models--fnlp--AnyGPT-base"
    shutil.copytree(demo_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    args = ["run", "text|text|Hello", "--seed", "1", "--max-new-tokens", "8", "--json"]
    code, out, err = run_cli([*args, "--model-name-or-path", "fnlp/AnyGPT-base"], capsys)
    assert code == 0, err
    assert "demo model" not in err
    _, local, _ = run_cli([*args, "--model-name-or-path", str(demo_dir)], capsys)
    assert json.loads(out)["text"] == json.loads(local)["text"]
