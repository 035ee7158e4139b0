"""The fault suite: what a careless or hostile user does, and the one line each case gets.

Each test reproduces a defect of issue #16 (its number in the test's comment). Disk-full cases
run on a real tiny tmpfs where this machine allows mounting one, else on a stub raising ENOSPC.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli
from faults import age, children, full_disk, gone, read_only_dir


def _one_error(err: str) -> str:
    lines = [x for x in err.splitlines() if not x.startswith("Using the")]
    assert len(lines) == 1, err
    return lines[0]


def _bytes_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


# 1. data prepare with the manifest as its output


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_prepare_refuses_to_write_over_its_manifest(text_only_env, tmp_path, capsys, link):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"text": "a", "sequence": "x.csv"}\n')
    out = manifest
    if link == "symlink":
        out = tmp_path / "out.jsonl"
        out.symlink_to(manifest)
    elif link == "hardlink":
        out = tmp_path / "out.jsonl"
        os.link(manifest, out)
    code, _, err = run_cli(["data", "prepare", str(manifest), str(out), "--overwrite"], capsys)
    assert code == 3
    assert (
        _one_error(err) == f"Error: {out}: the output is the input {manifest}; choose another file"
    )
    assert manifest.read_text() == '{"text": "a", "sequence": "x.csv"}\n'
    assert not Path(f"{out}.state.json").exists()


# 3. bytes that are not UTF-8


def test_a_non_utf8_argument_is_one_line(text_only_env, capsys):
    line = b"text|text|caf\xff!".decode("utf-8", "surrogateescape")  # as Python keeps argv
    code, out, err = run_cli(["run", line], capsys)
    assert code == 3 and out == ""
    assert _one_error(err).startswith("Error: byte 0xff at character 14 is not UTF-8")


def test_a_non_utf8_stdin_line_fails_alone(text_only_env, capsys, monkeypatch):
    _bytes_stdin(monkeypatch, b"text|text|one\ntext|text|\xfe\xff\ntext|text|two\n")
    code, out, err = run_cli(
        ["run", "--json", "--max-new-tokens", "2", "--seed", "0"], capsys, None, monkeypatch
    )
    assert code == 1
    assert [json.loads(x)["instruction"] for x in out.splitlines()] == [
        "text|text|one",
        "text|text|two",
    ]
    assert "byte 0xfe at character 11 is not UTF-8" in _one_error(err)


def test_a_non_utf8_task_file_line_fails_alone(text_only_env, capsys, tmp_path):
    tasks = tmp_path / "tasks.txt"
    tasks.write_bytes(b"text|text|one\ntext|text|\xc3(\ntext|text|two\n")
    code, out, err = run_cli(
        ["run", "--input-file", str(tasks), "--json", "--max-new-tokens", "2", "--seed", "0"],
        capsys,
    )
    assert code == 1 and len(out.splitlines()) == 2
    assert "byte 0xc3 at character 11 is not UTF-8" in _one_error(err)


def test_a_non_utf8_chat_line_fails_alone(text_only_env, capsys, monkeypatch):
    _bytes_stdin(monkeypatch, b"hello\nbad \xff line\n/to \xff\nagain\n")
    code, out, err = run_cli(
        ["chat", "--json", "--max-new-tokens", "2", "--seed", "0"], capsys, None, monkeypatch
    )
    assert code == 1
    assert [json.loads(x)["input"] for x in out.splitlines()] == ["hello", "again"]
    errors = [x for x in err.splitlines() if x.startswith("Error:")]
    assert len(errors) == 2 and all("is not UTF-8" in x for x in errors)


# 4. run within the model's context


def test_run_refuses_a_prompt_longer_than_the_context(text_only_env, capsys, tmp_path):
    code, _, err = run_cli(["run", "text|text|" + "word " * 20_000], capsys)
    assert code == 3
    line = _one_error(err)
    assert line.startswith("Error: input too long: the prompt is ")
    assert line.endswith("tokens and the model holds 4096 positions; shorten the input")


def test_run_caps_the_budget_at_the_context_with_a_notice(text_only_env, capsys, monkeypatch):
    from anygpt_core.api import AnyGPT

    monkeypatch.setattr(AnyGPT, "context_length", property(lambda self: 40))
    code, out, err = run_cli(
        ["run", "text|text|Hello there", "--max-new-tokens", "10000000", "--json", "--seed", "0"],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    prompt_tokens = 40 - int(result["notices"][0].split(" capped at ")[1].split(":")[0])
    assert result["new_tokens"] <= 40 - prompt_tokens
    assert result["notices"] == [
        f"max_new_tokens 10000000 capped at {40 - prompt_tokens}: the prompt takes "
        f"{prompt_tokens} of the model's 40 positions"
    ]
    assert result["notices"][0] in " ".join(err.split())


# 5. prepare's workers die with their parent


@pytest.mark.slow
def test_prepare_workers_die_when_the_parent_is_killed(tmp_path):
    import test_training_pipeline as pipeline

    site = tmp_path / "site"
    info = site / "anygpt_sequence-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: anygpt-sequence\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[anygpt]\nsequence = anygpt_sequence.plugin\n")
    rows = pipeline.write_series(tmp_path, 4)
    manifest = pipeline.write_jsonl(tmp_path / "m.jsonl", rows * 3000)
    out = tmp_path / "out.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(pipeline.EXAMPLE)]),
        "ANYGPT_LOAD_PLUGINS": "sequence",
    }
    cli = Path(sys.executable).parent / "anygpt"
    parent = subprocess.Popen(
        [cli, "data", "prepare", str(manifest), str(out), "-j", "2", "--demo"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out.is_file() and out.stat().st_size > 0):  # the workers are encoding
            assert parent.poll() is None, parent.stderr.read() if parent.stderr else ""
            assert time.monotonic() < deadline, "prepare wrote nothing in 120 s"
            time.sleep(0.1)
        workers = [
            p
            for p in children(parent.pid)
            if "multiprocessing" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        ]
        assert len(workers) >= 2, workers
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = [p for p in workers if not gone(p)]
    for pid in alive:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert alive == []


# 6. the output location, checked before the model loads


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails loudly: an error that comes first proves the order."""
    from anygpt_core.api import AnyGPT

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(AnyGPT, "load", load)


def test_an_output_dir_that_is_a_file(toy_env, capsys, tmp_path, no_model):
    blocker = tmp_path / "out"
    blocker.write_text("mine")
    for command in (["run", "text|toy|a wave"], ["chat"]):
        code, _, err = run_cli([*command, "--output-dir", str(blocker)], capsys)
        assert code == 3
        assert _one_error(err) == (
            f"Error: {blocker}: not a directory (choose another --output-dir)"
        )
    code, _, err = run_cli(["run", "text|toy|a", "--output-dir", str(blocker / "sub")], capsys)
    assert code == 3
    assert (
        _one_error(err)
        == f"Error: {blocker / 'sub'}: cannot be created, {blocker} is not a directory"
    )
    assert blocker.read_text() == "mine"


def test_a_read_only_output_dir(toy_env, capsys, tmp_path, no_model):
    with read_only_dir(tmp_path / "ro") as directory:
        code, _, err = run_cli(["run", "text|toy|a", "--output-dir", str(directory)], capsys)
        assert code == 3
        assert _one_error(err).startswith(f"Error: {directory}: cannot write (")
        code, _, err = run_cli(
            ["run", "text|toy|a", "--output-dir", str(directory / "new")], capsys
        )
        assert code == 3
        assert _one_error(err).startswith(f"Error: {directory / 'new'}: cannot be created in")


def test_a_full_disk_is_found_before_the_model_loads(
    toy_env, capsys, tmp_path, monkeypatch, no_model
):
    with full_disk(tmp_path / "full", monkeypatch) as directory:
        code, _, err = run_cli(["run", "text|toy|a", "--output-dir", str(directory)], capsys)
    assert code == 3
    assert _one_error(err) == f"Error: {directory}: cannot write (no space left on the device)"


def test_a_full_disk_while_writing_fails_each_task_alone(toy_gpt, tmp_path, monkeypatch):
    from anygpt_core.errors import OutputError

    with full_disk(tmp_path / "full", monkeypatch) as directory:
        toy_gpt.output_dir = directory
        results = toy_gpt.run_many(["text|toy|one", "text|text|hi", "text|toy|two"], seed=0)
        left = sorted(p.name for p in directory.iterdir())
    assert isinstance(results[0], OutputError) and isinstance(results[2], OutputError)
    assert str(results[0]).startswith(f"{directory}/one_")
    assert str(results[0]).endswith(": cannot write (no space left on the device)")
    assert not isinstance(results[1], Exception) and results[1].files == []
    assert [n for n in left if n.startswith(".tmp-")] == []  # no temporary file left behind


def test_decode_onto_a_full_disk_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "speech")  # soundfile writes the wav
    span = "<sosp>" + "".join(f"<🗣️{i}>" for i in range(25)) + "<eosp>"
    with full_disk(tmp_path / "full", monkeypatch) as directory:
        out = directory / "x.wav"
        code, _, err = run_cli(["decode", "speech", span, "--demo", "-o", str(out)], capsys)
        left = sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))
    assert code == 3
    assert _one_error(err) == f"Error: {out}: cannot write (no space left on the device)"
    assert left == []


# 7. a voice prompt that does not exist


def test_a_misspelt_voice_prompt_is_an_error(toy_env, capsys, tmp_path):
    code, _, err = run_cli(["run", "text|toy|Hello|voic.wav", "--dry-run"], capsys)
    assert code == 3
    assert _one_error(err) == (
        "Error: voic.wav: no such file (the voice prompt of 'text|toy|Hello|voic.wav')"
    )
    code, out, err = run_cli(["run", "text|toy|Hello|world", "--dry-run"], capsys)
    assert code == 0, err
    assert "This is input: Hello|world<eoh>" in out  # words, not a path: still text


# 8. values that pass a type check and then break


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "inf"], "temperature: Input should be a finite number"),
        (["--temperature", "1e308"], "temperature: Input should be less than or equal to 100"),
        (["--top-p", "nan"], "top_p: Input should be a finite number"),
        (["--num-beams", "1000"], "num_beams: Input should be less than or equal to 64"),
        (["--max-new-tokens", str(2**40)], "max_new_tokens: Input should be less than or equal"),
        (["--seed", str(2**64)], f"seed {2**64}: expected a whole number from 0 to 4294967295"),
        (["--seed", "-1"], "seed -1: expected a whole number from 0 to 4294967295"),
        (["--seed", str(2**32)], f"seed {2**32}: expected a whole number from 0 to 4294967295"),
    ],
)
def test_absurd_values_are_refused_before_loading(toy_env, capsys, no_model, flags, message):
    code, _, err = run_cli(["run", "text|text|hi", *flags], capsys)
    assert code == 6
    assert message in _one_error(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"temperature": 1e400}', "temperature: Input should be a finite number"),
        ('{"max_new_tokens": 1e300}', "c.json: max_new_tokens: "),
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply to be a decoding config"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "JSON nested too deeply to be a decoding config"),
    ],
)
def test_config_values_out_of_range(toy_env, capsys, tmp_path, no_model, text, message):
    path = tmp_path / "c.json"
    path.write_text(text)
    code, _, err = run_cli(["run", "text|text|hi", "--config", str(path)], capsys)
    assert code == 6
    assert message in _one_error(err)


def test_the_widest_seed_is_its_own(text_only_env, capsys):
    runs = {}
    for seed in (0, 1, 2**32 - 1):
        args = ["run", "text|text|Hello", "--seed", str(seed), "--max-new-tokens", "8", "--json"]
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        runs[seed] = json.loads(out)["text"]
    assert len(set(runs.values())) == 3, runs


# 9. temporary files: an interrupt at their creation, and what killed runs left


def test_an_interrupt_as_the_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    from anygpt_core import tasks

    real_open = os.open

    def interrupted(path, flags, *args):
        fd = real_open(path, flags, *args)
        os.close(fd)
        raise KeyboardInterrupt  # SIGINT right after the file came to be

    monkeypatch.setattr(tasks.os, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tasks.atomic_output(tmp_path, "x.txt", lambda tmp: tmp.write_text("x"))
    with pytest.raises(KeyboardInterrupt):
        tasks.atomic_write(tmp_path / "y.txt", lambda tmp: tmp.write_text("y"))
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_ours_are_removed_and_nothing_else(
    toy_env, capsys, tmp_path, no_model
):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".tmp-0123456789abcdef.txt"
    fresh = out / ".tmp-fedcba9876543210.txt"  # a run in progress may be writing it
    theirs = [out / ".tmp-notours.txt", out / "notes.tmp", out / ".tmp-0123456789abcdef.txt~"]
    for path in [stale, fresh, *theirs]:
        path.write_text("")
        age(path, 3600)
    age(fresh, 1)
    _, _, err = run_cli(["run", "text|toy|a", "--output-dir", str(out)], capsys)
    assert "the model was loaded" in err  # the check came first, and passed
    assert sorted(out.iterdir()) == sorted([fresh, *theirs])


@pytest.mark.slow
def test_a_killed_demo_build_leaves_nothing_behind(tmp_path):
    home = tmp_path / "home"
    script = (
        "import sys\nfrom pathlib import Path\nfrom anygpt_core.demo import ensure_demo\n"
        "from anygpt_core.plugins import discover\n"
        "ensure_demo(discover(load_only=[]), home=Path(sys.argv[1]))\n"
    )
    build = subprocess.Popen([sys.executable, "-c", script, str(home)])
    deadline = time.monotonic() + 60
    while not list((home / "demo").glob(".*-*/llm")) and time.monotonic() < deadline:
        time.sleep(0.02)
    build.send_signal(signal.SIGKILL)
    build.wait()
    (staging,) = (home / "demo").glob(".*-*")  # what the kill left
    age(staging, 3600)
    fresh = home / "demo" / ".0123456789abcdef-abcd1234"  # another process's build in progress
    fresh.mkdir()
    mine = home / "demo" / "mine"
    mine.mkdir()
    age(mine, 3600)
    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    built = ensure_demo(discover(load_only=[]), home=home)
    assert built.model_dir.is_dir()
    assert not staging.exists() and fresh.is_dir() and mine.is_dir()


# 10. messages that say what is wrong


def test_a_directory_or_fifo_given_as_a_file(toy_env, capsys, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, problem in [
        (tmp_path, "is a directory, not a file"),
        (fifo, "is a FIFO, not a file"),
    ]:
        code, _, err = run_cli(["run", f"toy|text|{path}", "--dry-run"], capsys)
        assert code == 3
        assert _one_error(err) == f"Error: {path}: {problem}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_a_permission_problem(toy_env, capsys, tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("0.1 0.2")
    path.chmod(0)
    code, _, err = run_cli(["run", f"toy|text|{path}", "--dry-run"], capsys)
    assert code == 3 and _one_error(err) == f"Error: {path}: permission denied"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["run", "--bogus"], "Error: No such option: --bogus (see anygpt run --help)"),
        (["run", "text|text|x", "--seed", "abc"], "Error: Invalid value for '--seed': "),
        (["frobnicate"], "Error: No such command 'frobnicate'."),
    ],
)
def test_usage_errors_are_one_line(text_only_env, capsys, args, line):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith(line) and err.endswith(" --help)\n") and err.count("\n") == 1, err


def test_a_pickle_refused_by_a_weights_only_load_is_named_without_advice(tmp_path):
    import torch

    from anygpt_core.errors import first_line

    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "config": Path("x")}, path)
    with pytest.raises(Exception, match="Weights only load failed") as caught:
        torch.load(path, weights_only=True)
    line = first_line(caught.value)
    assert line.startswith("it holds pickled objects that a weights-only load refuses: ")
    assert "Unsupported global" in line and "trust" not in line and "weights_only" not in line


def test_library_warnings_stay_out_of_the_error_line(tmp_path):
    script = (
        "import warnings\n"
        "from anygpt_core.api import AnyGPT\n"
        "from anygpt_core.errors import CheckpointError\n"
        "def load(*a, **k):\n"
        "    warnings.warn('You are using torch.load with weights_only=False', FutureWarning)\n"
        "    raise CheckpointError('m: broken')\n"
        "AnyGPT.load = load\n"
        "from anygpt_cli.app import main\n"
        "main(['run', 'text|text|hi', '--output-dir', 'out'])\n"
    )
    env = {**os.environ, "ANYGPT_LOAD_PLUGINS": "__none__", "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 4
    assert done.stderr.splitlines()[-1] == "Error: m: broken"
    assert "weights_only" not in done.stderr


def test_weights_holding_nan_are_a_checkpoint_error(text_only_env, capsys, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    model = shutil.copytree(ensure_demo(discover()).model_dir, tmp_path / "model")
    (weights,) = model.glob("*.safetensors")
    state = load_file(weights)
    state["model.layers.0.mlp.up_proj.weight"][0, 0] = torch.nan
    save_file(state, weights, metadata={"format": "pt"})
    code, _, err = run_cli(["run", "text|text|hi", "--model-name-or-path", str(model)], capsys)
    assert code == 4
    assert _one_error(err) == (
        f"Error: {model}: tensor model.layers.0.mlp.up_proj.weight holds NaN or infinite values; "
        "the checkpoint is damaged or was saved after training diverged"
    )


def test_a_full_disk_while_preparing_data_is_one_line(text_only_env, capsys, tmp_path, monkeypatch):
    import errno

    from faults import fill, mounted_tmpfs

    import anygpt_core.training.data as data

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"text": "a", "smell": "x.csv"}\n')
    with mounted_tmpfs(tmp_path / "full", "size=64k") as real:
        out = tmp_path / "full" / "out.jsonl"
        if real:
            fill(tmp_path / "full")
        else:  # the state file, where lines are synced, is the first write

            def full(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))

            monkeypatch.setattr(data, "_save_state", full)
        code, _, err = run_cli(["data", "prepare", str(manifest), str(out)], capsys)
    assert code == 3
    line = _one_error(err)
    assert line.startswith(f"Error: {out}") and line.endswith(
        ": cannot write (no space left on the device)"
    )
