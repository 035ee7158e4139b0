"""Fault suite, training (issue #16, defect 2): checkpoints cut short, and a disk full while saving."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_training_pipeline as pipeline
import yaml
from cli_runner import run_cli
from faults import fill, mounted_tmpfs

sequence_env = pipeline.sequence_env
plugins = pipeline.plugins
demo_options = pipeline.demo_options
text_only_demo = pipeline.text_only_demo
extended = pipeline.extended
pretrain_data = pipeline.pretrain_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, extended, pretrain_data, plugins):
    """A finished run with checkpoint-4 and checkpoint-8."""
    pytest.importorskip("accelerate")
    from anygpt_core.training import train

    out = tmp_path_factory.mktemp("runs") / "run"
    config = pipeline.pretrain_config(extended, pretrain_data, out, max_steps=8, save_steps=4)
    train("pretrain", config, plugins)
    return out


def _config_file(run: Path, data: Path, directory: Path, **overrides: object) -> Path:
    config = pipeline.pretrain_config(run, data, run, save_steps=4, **overrides)
    path = directory / "resume.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    return path


def test_checkpoints_are_marked_complete(trained):
    from anygpt_core.training.train import COMPLETE_MARKER

    for step in (4, 8):
        marker = trained / f"checkpoint-{step}" / COMPLETE_MARKER
        assert json.loads(marker.read_text()) == {"step": step}


@pytest.mark.parametrize("cut", ["trainer_state.json", "model.safetensors"])
def test_resume_skips_a_checkpoint_cut_short(trained, pretrain_data, tmp_path, capsys, cut):
    from anygpt_core.training.train import COMPLETE_MARKER

    run = shutil.copytree(trained, tmp_path / "run")
    broken = run / "checkpoint-8"
    (broken / COMPLETE_MARKER).unlink()  # what a kill or a full disk while saving leaves
    target = broken / cut
    target.write_bytes(target.read_bytes()[:100])
    (broken / ".tmpX1y2Z3").write_bytes(bytes(4096))  # safetensors' temporary, cut short too
    code, out, err = run_cli(
        ["train", "pretrain", str(_config_file(run, pretrain_data, tmp_path, max_steps=10))], capsys
    )
    assert code == 0, err
    said = "".join(err.split())  # the log's lines are wrapped at the terminal's width
    assert f"{broken}isincomplete(cutshortbyakillorafulldisk);skipped" in said
    assert f"resumingfrom{run / 'checkpoint-4'}" in said
    assert "after 10 steps" in out
    assert (broken / COMPLETE_MARKER).is_file()  # written again, whole, on the way to step 10
    assert sorted(p.name for p in broken.iterdir() if p.name.startswith(".")) == []


#: `anygpt train` whose Nth weights save (`ANYGPT_TEST_BLOCK_SAVE`) stops half way: safetensors'
#: model-sized temporary written beside the file, a signal file touched, then it waits for its kill.
_SAVE_THEN_HANG = """
import os, sys, time
from pathlib import Path

import transformers.modeling_utils as modeling

real, calls = modeling.safe_save_file, []

def save_file(tensors, filename, *args, **kwargs):
    calls.append(filename)
    if len(calls) == int(os.environ["ANYGPT_TEST_BLOCK_SAVE"]):
        Path(filename).with_name(".tmpAb12Cd").write_bytes(bytes(1 << 20))
        Path(os.environ["ANYGPT_TEST_SAVING"]).touch()
        time.sleep(600)
    return real(tensors, filename, *args, **kwargs)

modeling.safe_save_file = save_file
from anygpt_cli.app import main

sys.argv = ["anygpt", *sys.argv[1:]]
main()
"""


def _killed_while_saving(config: Path, call: int, tmp_path: Path) -> None:
    """Run `anygpt train pretrain CONFIG` in a process SIGKILLed in its `call`-th weights save."""
    saving, log = tmp_path / "saving", tmp_path / "train.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ANYGPT_TEST_BLOCK_SAVE": str(call),
        "ANYGPT_TEST_SAVING": str(saving),
    }
    command = [sys.executable, "-c", _SAVE_THEN_HANG, "train", "pretrain", str(config)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not saving.exists():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("cut", "call"), [("checkpoint", 1), ("final model", 2)])
def test_a_save_killed_half_way_leaves_the_last_ones_whole(
    trained, pretrain_data, tmp_path, capsys, cut, call
):
    """kill -9 while checkpoint-12 (save 1) or the final model (save 2) is written, then resume."""
    from anygpt_core.training.train import COMPLETE_MARKER, last_complete_checkpoint

    run = shutil.copytree(trained, tmp_path / "run")
    config = _config_file(run, pretrain_data, tmp_path, max_steps=12)
    model_files = {"config.json", "model.safetensors"}
    before = {name: (run / name).read_bytes() for name in model_files}
    checkpoints = {step: _files(run / f"checkpoint-{step}") for step in (4, 8)}

    _killed_while_saving(config, call, tmp_path)
    # the earlier checkpoints and the model saved last are as they were, and nothing half-written
    # (a checkpoint, the temporary) is where a checkpoint or the model is read
    assert {step: _files(run / f"checkpoint-{step}") for step in (4, 8)} == checkpoints
    assert {name: (run / name).read_bytes() for name in model_files} == before
    leftovers = [p for p in run.rglob(".tmp*") if ".saving" not in p.relative_to(run).parts]
    assert leftovers == []
    newest = run / "checkpoint-8" if cut == "checkpoint" else run / "checkpoint-12"
    assert last_complete_checkpoint(run) == (newest, [])
    assert (newest / COMPLETE_MARKER).is_file()

    # the next save clears what the killed one left; the run resumes and saves all, whole
    code, out, err = run_cli(["train", "pretrain", str(config)], capsys)
    assert code == 0, err
    assert "after 12 steps" in out
    assert list(run.rglob(".*")) == []  # no `.saving`, no temporary
    assert (run / "checkpoint-12" / COMPLETE_MARKER).is_file()
    assert (run / "model.safetensors").read_bytes() != before["model.safetensors"]


def test_checkpoints_of_older_runs_count_when_their_state_is_readable(trained, tmp_path):
    from anygpt_core.training.train import COMPLETE_MARKER, last_complete_checkpoint

    run = shutil.copytree(trained, tmp_path / "run")
    for step in (4, 8):
        (run / f"checkpoint-{step}" / COMPLETE_MARKER).unlink()  # written before markers existed
    assert last_complete_checkpoint(run) == (run / "checkpoint-8", [])
    (run / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')
    assert last_complete_checkpoint(run) == (run / "checkpoint-4", [run / "checkpoint-8"])


def test_a_full_disk_while_saving_is_one_line(
    extended, pretrain_data, plugins, tmp_path, monkeypatch
):
    pytest.importorskip("accelerate")
    from transformers import Trainer

    from anygpt_core.errors import OutputError
    from anygpt_core.training import train

    out = tmp_path / "disk" / "run"
    config = pipeline.pretrain_config(extended, pretrain_data, out, max_steps=4, save_steps=2)
    with mounted_tmpfs(tmp_path / "disk", "size=4m") as real:
        if not real:  # no tmpfs here: the save itself reports what the kernel would
            import errno
            import os

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(Trainer, "_save_checkpoint", full)

        def ready(examples, resumed):
            if real:
                fill(tmp_path / "disk")  # the tokenizer is written; the checkpoint will not fit

        with pytest.raises(OutputError) as caught:
            train("pretrain", config, plugins, on_ready=ready)
    assert (
        str(caught.value) == f"{out / 'checkpoint-2'}: cannot write (no space left on the device)"
    )


def test_a_read_only_output_directory_is_one_line_before_loading(
    extended, pretrain_data, plugins, tmp_path
):
    pytest.importorskip("accelerate")
    from faults import read_only_dir

    from anygpt_core.errors import OutputError
    from anygpt_core.training import train

    with read_only_dir(tmp_path / "ro") as directory:
        config = pipeline.pretrain_config(extended, pretrain_data, directory / "run", max_steps=2)
        with pytest.raises(OutputError) as caught:
            train("pretrain", config, plugins)
    assert str(caught.value).startswith(f"{directory / 'run'}: cannot be created")


def test_a_pickle_in_a_checkpoint_to_resume_is_refused_in_one_line(
    trained, pretrain_data, tmp_path, capsys
):
    import torch

    run = shutil.copytree(trained, tmp_path / "run")
    for name in ("rng_state.pth", "optimizer.pt", "scheduler.pt"):
        torch.save({"state": Path("anything")}, run / "checkpoint-8" / name)  # a PosixPath
    config = _config_file(run, pretrain_data, tmp_path, max_steps=10)
    code, _, err = run_cli(["train", "pretrain", str(config)], capsys)
    lines = [line for line in err.splitlines() if line.startswith(("Error", "internal"))]
    assert code == 4, err
    assert lines == [
        f"Error: {run / 'checkpoint-8'}: not a checkpoint to resume from (it holds pickled "
        "objects that a weights-only load refuses: Unsupported global: GLOBAL "
        "pathlib.PosixPath was not an allowed global by default)"
    ], err
    assert "weights_only=False" not in err
