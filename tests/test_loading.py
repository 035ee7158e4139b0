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
            "its weights do not match its config.json: 1 missing (e.g. "
            "model.layers.0.mlp.up_proj.weight), 1 unexpected (e.g. model.layers.0.mlp.upp.weight) "
            "tensors",
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
