"""Training on two processes (gloo, CPU) through torchrun and accelerate launch, on the demo scale.

Each launch starts the real `anygpt` console script in two processes; their loss curves must
equal a one-process run with the same global batch (4 = 2 processes x 2, or 1 x 4). The learning
rate is modest: at 3e-3 Adam turns the rounding differences of a gradient all-reduce into 1e-3
loss differences within 16 steps, at 1e-3 they stay below 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_training_pipeline as pipeline
import yaml
from cli_runner import run_cli
from test_training_pipeline import pretrain_config, write_jsonl

pytest.importorskip("accelerate")

sequence_env = pipeline.sequence_env
plugins = pipeline.plugins
demo_options = pipeline.demo_options
text_only_demo = pipeline.text_only_demo
extended = pipeline.extended
pretrain_data = pipeline.pretrain_data
chat_data = pipeline.chat_data

BIN = Path(sys.executable).parent
TOLERANCE = 1e-4
STEPS = 24


def config_fields(model: Path, data: Path, out: Path, **overrides) -> dict:
    fields = {"learning_rate": 1e-3, "logging_steps": 1, "max_steps": STEPS, **overrides}
    return json.loads(pretrain_config(model, data, out, **fields).model_dump_json())


def write_config(path: Path, fields: dict) -> Path:
    path.write_text(yaml.safe_dump(fields))
    return path


def launch(command: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", *args]


def logged_losses(output_dir: Path) -> list[tuple[int, float]]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def assert_same_curve(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    assert [step for step, _ in got] == [step for step, _ in want]
    worst = max(abs(a - b) for (_, a), (_, b) in zip(got, want, strict=True))
    assert worst < TOLERANCE, (worst, got, want)


def assert_same_weights(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=0, atol=TOLERANCE)


def our_stderr_lines(stderr: str) -> list[str]:
    """stderr without torchrun's own banner (its OMP_NUM_THREADS notice)."""
    return [line for line in stderr.splitlines() if "torch/distributed/run.py" not in line]


def assert_rank_zero_reports(
    result: subprocess.CompletedProcess[str], kind: str, steps: int = STEPS
) -> None:
    """One summary, one loss line per step, nothing from rank 1, no warnings."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("saved ") == 1, result.stdout
    assert result.stdout.count("{'loss'") == steps, result.stdout
    lines = our_stderr_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{kind}: "), result.stderr


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, extended, pretrain_data, plugins):
    """The reference: one process, 4 examples per step."""
    from anygpt_core.training import TrainConfig, train

    out = tmp_path_factory.mktemp("one") / "run"
    fields = config_fields(extended, pretrain_data, out, per_device_train_batch_size=4)
    return train("pretrain", TrainConfig(**fields), plugins)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, extended, pretrain_data, sequence_env):
    """torchrun: two processes, 2 examples each per step."""
    root = tmp_path_factory.mktemp("two")
    fields = config_fields(extended, pretrain_data, root / "run", per_device_train_batch_size=2)
    config = write_config(root / "pretrain.yaml", fields)
    result = launch(torchrun(str(BIN / "anygpt"), "train", "pretrain", str(config)))
    return result, root / "run"


def test_torchrun_two_processes_train_like_one(one_process, two_processes):
    result, out = two_processes
    assert_rank_zero_reports(result, "pretrain")
    assert f"saved {out} after {STEPS} steps" in " ".join(result.stdout.split())
    assert_same_curve(logged_losses(out), one_process.losses)
    assert_same_weights(out, one_process.output_dir)
    # one final model beside the checkpoints, each checkpoint with both ranks' RNG states
    assert sorted(p.name for p in out.glob("**/*.safetensors")) == ["model.safetensors"] * 3
    assert sorted(p.name for p in (out / "checkpoint-12").glob("rng_state_*")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]


def test_torchrun_resumes_a_two_process_run(one_process, two_processes, tmp_path):
    _, first = two_processes
    run = tmp_path / "run"
    shutil.copytree(first / "checkpoint-12", run / "checkpoint-12")  # as if stopped after step 12
    fields = yaml.safe_load((first.parent / "pretrain.yaml").read_text())
    config = write_config(tmp_path / "resume.yaml", {**fields, "output_dir": str(run)})
    result = launch(torchrun(str(BIN / "anygpt"), "train", "pretrain", str(config)))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = our_stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"resuming from {run / 'checkpoint-12'}" in lines[0]
    assert result.stdout.count("{'loss'") == STEPS - 12
    assert_same_curve(logged_losses(run), one_process.losses)
    assert_same_weights(run, first)


def test_torchrun_sft_trains_like_one_process(extended, chat_data, plugins, tmp_path):
    from anygpt_core.training import TrainConfig, train

    def fields(out: Path, batch: int) -> dict:
        return config_fields(
            extended,
            chat_data,
            out,
            per_device_train_batch_size=batch,
            max_steps=8,
            save_steps=100,
            max_length=256,
        )

    one = train("sft", TrainConfig(**fields(tmp_path / "one", 2)), plugins)
    config = write_config(tmp_path / "sft.yaml", fields(tmp_path / "two", 1))
    result = launch(torchrun(str(BIN / "anygpt"), "train", "sft", str(config)))
    assert_rank_zero_reports(result, "sft", steps=8)
    assert_same_curve(logged_losses(tmp_path / "two"), one.losses)
    added = json.loads((tmp_path / "two" / "added_tokens.json").read_text(encoding="utf-8"))
    assert added["<-Res->"] == 646 and added["<-Ins->"] == 647


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_accelerate_launch_trains_like_one_process(
    one_process, extended, pretrain_data, sequence_env, tmp_path
):
    # accelerate's MULTI_CPU launcher needs mpirun; its MULTI_GPU one is torch's elastic launch,
    # and `use_cpu` in the training config keeps each process on the CPU (gloo)
    accelerate_config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_machines": 1,
        "num_processes": 2,
        "machine_rank": 0,
        "main_process_ip": "127.0.0.1",
        "main_process_port": free_port(),
        "mixed_precision": "no",
    }
    accelerate = write_config(tmp_path / "accelerate.yaml", accelerate_config)
    fields = config_fields(extended, pretrain_data, tmp_path / "run", per_device_train_batch_size=2)
    config = write_config(tmp_path / "pretrain.yaml", fields)
    command = [str(BIN / "accelerate"), "launch", "--config_file", str(accelerate)]
    result = launch([*command, str(BIN / "anygpt"), "train", "pretrain", str(config)])
    assert_rank_zero_reports(result, "pretrain")
    assert_same_curve(logged_losses(tmp_path / "run"), one_process.losses)


def test_a_failing_rank_stops_the_run_with_its_error(
    extended, pretrain_data, sequence_env, tmp_path
):
    """Rank 1 reads a copy of the data with a bad line (as a node with a stale copy would)."""
    good = config_fields(extended, pretrain_data, tmp_path / "run")
    lines = pretrain_data.read_text().splitlines()[:3]
    bad_data = write_jsonl(tmp_path / "stale.jsonl", [*lines, {"text": "no span"}])
    write_config(tmp_path / "rank0.yaml", good)
    write_config(tmp_path / "rank1.yaml", {**good, "data": [str(bad_data)]})
    script = f'exec anygpt train pretrain "{tmp_path}/rank$RANK.yaml"'
    started = time.monotonic()
    result = launch(torchrun("--no-python", "sh", "-c", script), timeout=240)
    assert result.returncode != 0
    assert time.monotonic() - started < 200  # rank 0 does not wait for a peer that is gone
    ours = [line for line in our_stderr_lines(result.stderr) if line.startswith("Error")]
    assert (
        f"Error: rank 1: {bad_data} line 4: expected 'text' and exactly one modality key" in ours
    ), result.stderr
    assert all("rank 1" in line or "another process of this run stopped" in line for line in ours)
    assert "internal error" not in result.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_fsdp_on_the_cpu_is_refused_not_ignored(
    extended, pretrain_data, tmp_path, capsys, monkeypatch
):
    """accelerate shards only on accelerators; on the CPU it would quietly run plain DDP.

    transformers warns that a string `fsdp` is deprecated; that warning stays out of the error,
    also where its logger propagates to ours (as it does with CI=1).
    """
    import logging

    monkeypatch.setattr(logging.getLogger("transformers"), "propagate", True)
    fields = config_fields(extended, pretrain_data, tmp_path / "run")
    fields["trainer"] = {**fields["trainer"], "fsdp": "full_shard"}
    config = write_config(tmp_path / "fsdp.yaml", fields)
    code, _, err = run_cli(["train", "pretrain", str(config)], capsys)
    assert (code, err) == (
        6,
        f"Error: {config}: trainer.fsdp: FSDP needs GPUs (accelerate runs it only on "
        "accelerators); remove fsdp to train on the CPU\n",
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("ci", ["", "1"])
def test_fsdp_refusal_is_one_line_from_the_console_script(extended, pretrain_data, tmp_path, ci):
    """The real command imports transformers after it set up logging: its deprecation warning
    (own handler, or ours with CI=1) must still stay out of stderr."""
    fields = config_fields(extended, pretrain_data, tmp_path / "run")
    fields["trainer"] = {**fields["trainer"], "fsdp": "full_shard"}
    config = write_config(tmp_path / "fsdp.yaml", fields)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY") and k != "CI"}
    result = subprocess.run(
        [str(BIN / "anygpt"), "train", "pretrain", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "CI": ci},
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        6,
        f"Error: {config}: trainer.fsdp: FSDP needs GPUs (accelerate runs it only on "
        "accelerators); remove fsdp to train on the CPU\n",
    )


@pytest.mark.parametrize("name", ["pretrain-7b.yaml", "sft-7b.yaml"])
def test_the_7b_configs_are_accepted_by_transformers(name):
    """The 7B configs of docs/training.md: every field valid; on the CPU, only FSDP itself is refused."""
    from anygpt_core.errors import ConfigError
    from anygpt_core.training.config import load_train_config, training_arguments

    path = Path(__file__).parents[1] / "examples" / "train" / name
    config = load_train_config(path)
    assert config.trainer["fsdp"] is True and config.bf16
    on_cpu = config.model_copy(update={"bf16": False})  # bf16 needs a GPU as well
    with pytest.raises(ConfigError, match=r"trainer\.fsdp: FSDP needs GPUs"):
        training_arguments(on_cpu, source=path)
