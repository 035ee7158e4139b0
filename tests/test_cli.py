from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli

from anygpt_cli.catalogue import install_target


def test_version(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == "anygpt 0.1.0"


def test_help_and_plugins_do_not_import_torch(toy_env):
    script = (
        "import sys\n"
        "from anygpt_cli.app import main\n"
        "for args in (['--help'], ['plugins', '--json'], ['run', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=toy_env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert '"name": "toy"' in proc.stdout
    assert "--toy-codec-path" in proc.stdout  # run --help lists the plugin's option


def test_plugins_json_reports_states(toy_env, monkeypatch, capsys):
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "toy,broken")
    code, out, _ = run_cli(["plugins", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert rows["toy"]["modalities"][0]["tokens"] == "<🧪0>…<🧪31>"
    assert rows["toy"]["modalities"][0]["codebooks"] == 2
    assert rows["toy"]["modalities"][0]["input_extensions"] == [".txt"]
    assert rows["broken"]["state"] == "broken"


def test_block_plugin_flag_hides_its_options(toy_env, capsys):
    code, _, _ = run_cli(
        ["--block-plugin", "toy", "run", "text|text|hi", "--toy-codec-path", "x"], capsys
    )
    assert code == 2  # unknown option: the blocked plugin's flag is gone
    code, out, _ = run_cli(["--block-plugin", "toy", "plugins", "--json"], capsys)
    assert {r["name"]: r["state"] for r in json.loads(out)}["toy"] == "blocked"


def test_plugin_options_reach_the_command_as_given(monkeypatch):
    import typer
    from typer.testing import CliRunner

    from anygpt_cli.options import with_codec_options
    from anygpt_core.spec import CodecOption

    options = [
        CodecOption(name="fast", help="Go fast.", type="bool", default=False),
        CodecOption(name="cache", help="Keep a cache.", type="bool", default=True),
        CodecOption(name="weights_path", help="Weights.", type="path"),
        CodecOption(name="steps", help="Steps.", type="int", default=20),
    ]
    seen = []
    app = typer.Typer()

    @app.command()
    @with_codec_options(options, {"fast": "acme-fast options"})
    def go(*, codec_options: dict) -> None:
        seen.append(codec_options)

    runner = CliRunner()
    for args, expected in [
        ([], {}),  # absent flags leave the codec's defaults alone
        (["--fast", "--no-cache"], {"fast": True, "cache": False}),
        (["--weights-path", "w.pt", "--steps", "5"], {"weights_path": "w.pt", "steps": 5}),
    ]:
        assert runner.invoke(app, args).exit_code == 0
        assert seen.pop() == expected
    assert runner.invoke(app, ["--no-fast"]).exit_code == 2  # one flag each: no --x/--no-x pair
    assert runner.invoke(app, ["--cache"]).exit_code == 2
    monkeypatch.setenv("COLUMNS", "80")
    page = runner.invoke(app, ["--help"]).output
    assert "acme-fast options" in page and "Plugin options" in page


@pytest.mark.parametrize("command", [["run"], ["chat"], ["data", "prepare"]])
def test_help_shows_whole_flag_names_at_80_columns(toy_env, capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli([*command, "--help"], capsys)
    assert code == 0
    assert "…" not in out and "--toy-codec-path" in out
    assert "anygpt-toy options" in out  # each plugin's options under its distribution's name


@pytest.mark.parametrize("command", [[], ["run"], ["chat"], ["serve"], ["data", "prepare"]])
def test_help_shows_no_metavar_for_flags_and_reflows_paragraphs(toy_env, command):
    anygpt = str(Path(sys.executable).parent / "anygpt")
    env = {**toy_env, "COLUMNS": "200"}
    page = subprocess.run([anygpt, *command, "--help"], env=env, capture_output=True, text=True)
    assert page.returncode == 0
    assert "<bool>" not in page.stdout
    if command == ["run"]:  # the docstring's hard-wrapped lines make one paragraph
        assert "'speech|text|question.wav', 'text|speech|Hello there|voice.wav'" in page.stdout


def test_no_force_span_leaves_the_span_to_the_model(toy_env, capsys):
    forced = run_cli(["run", "text|toy|a wave", "--dry-run", "--seed", "1"], capsys)[1]
    free = run_cli(
        ["run", "text|toy|a wave", "--dry-run", "--seed", "1", "--no-force-span"], capsys
    )
    assert forced.rstrip("\n").endswith("[MMGPT]: <soty>")
    assert free[0] == 0 and free[1] == forced.replace(" <soty>", "")


def test_flag_of_absent_plugin_names_the_package(text_only_env, capsys):
    code, _, err = run_cli(["run", "text|text|hi", "--music-seconds", "3"], capsys)
    assert code == 5
    music = install_target("anygpt-music")
    assert (
        err == f"Error: --music-seconds belongs to the plugin anygpt-music: pip install {music}\n"
    )


def test_run_text_json_is_reproducible(text_only_env, capsys, tmp_path):
    args = [
        "run",
        "text|text|Hello there",
        "--seed",
        "4",
        "--max-new-tokens",
        "12",
        "--json",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["prompt"] == "[Human]: Hello there<eoh>[MMGPT]: "
    assert first["new_tokens"] == 12 and first["seed"] == 4 and first["files"] == []
    assert "demo model" in err
    _, again, _ = run_cli(args, capsys)
    assert json.loads(again)["text"] == first["text"]
    assert not (tmp_path / "out").exists()  # text answers write nothing


def test_beam_search_from_the_seed_chat_config(toy_env, capsys, tmp_path):
    """The seed chat's generate_config.json (5 sampled beams) drives text answers; media answers
    take the rest of the file but decode one beam, as with --num-beams. (Its `vc_steps` is left
    out: only the speech plugin reads it, and this environment has the toy alone.)"""
    seed_chat = tmp_path / "generate_config.json"
    seed_chat.write_text(
        json.dumps(
            {
                "temperature": 1.0,
                "top_p": 1.0,
                "do_sample": True,
                "max_new_tokens": 500,
                "min_new_tokens": 10,
                "repetition_penalty": 1.0,
                "num_beams": 5,
            }
        )
    )
    out_dir = str(tmp_path / "out")
    text = ["run", "text|text|Hello", "--config", str(seed_chat), "--max-new-tokens", "24"]
    runs = [run_cli([*text, "--seed", "3", "--json"], capsys) for _ in range(2)]
    assert runs[0][0] == 0, runs[0][2]
    answer, again = (json.loads(out) for _, out, _ in runs)
    assert answer["new_tokens"] >= 10 and answer["text"]
    assert answer == {**again, "seconds": answer["seconds"]}  # seeded beam sampling repeats
    toy = ["run", "text|toy|a wave", "--num-beams", "4", "--seed", "1", "--json"]
    code, out, err = run_cli([*toy, "--output-dir", out_dir], capsys)
    assert code == 0, err
    assert len(json.loads(out)["files"]) == 1
    media = ["run", "text|toy|a wave", "--config", str(seed_chat), "--seed", "1", "--json"]
    code, out, err = run_cli([*media, "--output-dir", out_dir], capsys)
    assert code == 0, err  # the file's sampling serves media; its beams only text
    assert len(json.loads(out)["files"]) == 1


def test_dry_run_prints_the_exact_prompt(toy_env, capsys):
    code, out, _ = run_cli(["run", "text|toy|a wave", "--dry-run", "--seed", "1"], capsys)
    assert code == 0
    assert out.startswith("[Human]: ")
    assert out.rstrip("\n").endswith(" This is input: a wave<eoh> [MMGPT]: <soty>")


def test_run_text_to_toy_writes_a_decodable_file(toy_env, capsys, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        [
            "run",
            "text|toy|a rising ../../wave",
            "--seed",
            "2",
            "--json",
            "--output-dir",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    (path,) = map(Path, result["files"])
    assert path.parent == out_dir and path.name.startswith("wave_") and path.suffix == ".txt"
    values = [float(v) for v in path.read_text().split()]
    assert len(values) == result["spans"][0]["shape"][1] >= 1
    assert all(-1.6 <= v <= 1.6 for v in values)
    assert result["finish_reason"] == "span"
    assert result["text"] == ""  # the answer is the span alone; its tokens are not text
    assert [p.name for p in out_dir.iterdir()] == [path.name]  # no temporary files left


def test_run_toy_to_text_uses_the_codec(toy_env, capsys, tmp_path):
    series = tmp_path / "series.txt"
    series.write_text("0.1 0.5 -0.3 0.9")
    code, out, err = run_cli(
        ["run", f"toy|text|{series}", "--dry-run", "--json", "--seed", "0"], capsys
    )
    assert code == 0, err
    prompt = json.loads(out)["prompt"]
    assert prompt.endswith(
        "<soty><🧪8><🧪28><🧪11><🧪28><🧪5><🧪28><🧪14><🧪28><eoty><eoh> [MMGPT]:"
    )


def test_instructions_file_and_seeded_choice(toy_env, capsys, tmp_path):
    phrasings = tmp_path / "ins.json"
    phrasings.write_text(json.dumps({"text2other": {"toy": ["One.", "Two.", "Three.", "Four."]}}))
    prompts = set()
    for seed in (1, 1, 2, 3, 4, 5):
        _, out, _ = run_cli(
            [
                "run",
                "text|toy|x",
                "--dry-run",
                "--json",
                "--seed",
                str(seed),
                "--instructions",
                str(phrasings),
            ],
            capsys,
        )
        prompts.add((seed, json.loads(out)["prompt"]))
    assert len({p for s, p in prompts if s == 1}) == 1
    assert all(
        p.split(": ", 1)[1].split(" This")[0] in {"One.", "Two.", "Three.", "Four."}
        for _, p in prompts
    )
    assert len({p for _, p in prompts}) > 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "nonsense"], 3, "Error: cannot parse 'nonsense': expected source|target|input"),
        (["run", "text|smell|x"], 5, "Error: unknown modality 'smell'; installed: text, toy"),
        (
            ["run", "text|speech|x"],
            5,
            f"Error: modality 'speech' needs a plugin: pip install {install_target('anygpt-speech')}",
        ),
        (["run", "toy|text|/no/such.txt"], 3, "Error: /no/such.txt: no such file"),
        (
            ["run", "text|text|x", "--model-name-or-path", "/no/model"],
            4,
            "Error: /no/model: no such file or folder",
        ),
        (
            ["run", "text|text|x", "--model-name-or-path", "someone/missing-model"],
            4,
            "Error: someone/missing-model: not in the local Hugging Face cache (offline); run "
            "`hf download someone/missing-model` where there is network, or pass a local path",
        ),
        (["run", "toy|toy|x"], 3, "Error: task toy|toy: the base model maps a modality to text"),
        (["encode", "toy", "/no/file.txt", "--demo"], 3, "Error: /no/file.txt: no such file"),
    ],
)
def test_bad_input_gives_one_line(toy_env, capsys, tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    got, _, err = run_cli(args, capsys)
    assert got == code
    lines = [line for line in err.splitlines() if not line.startswith("Using the")]
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("command", [["run", "text|text|x"], ["chat"]])
def test_bad_decoding_flags_fail_before_the_model_loads(toy_env, capsys, command):
    code, _, err = run_cli([*command, "--num-beams", "0", "--top-p", "1.5"], capsys)
    assert code == 6
    assert err == (
        "Error: decoding options: top_p: Input should be less than or equal to 1; "
        "num_beams: Input should be greater than or equal to 1\n"
    )  # one line, and no demo notice: nothing was loaded


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"),
            "Error: out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB); try "
            "--image-low-memory, another --device or a smaller --max-new-tokens",
        ),
        (
            RuntimeError("something broke\ndetails"),
            "internal error: RuntimeError: something broke (set ANYGPT_DEBUG=1 for a traceback)",
        ),
    ],
)
def test_unexpected_errors_are_one_line(toy_env, capsys, monkeypatch, error, line):
    from anygpt_core.api import AnyGPT

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(AnyGPT, "run", fail)
    code, out, err = run_cli(["run", "text|text|hi"], capsys)
    assert code == 1 and out == ""
    assert [x for x in err.splitlines() if not x.startswith("Using the")] == [line]


def test_config_with_unknown_field(toy_env, capsys, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"top_p": 2, "beams": 3}))
    code, _, err = run_cli(["run", "text|toy|x", "--config", str(config)], capsys)
    assert code == 6
    assert (
        err.strip()
        == f"Error: {config}: top_p: Input should be less than or equal to 1; beams: unknown field"
    )


def test_model_without_modality_tokens(toy_env, capsys, monkeypatch, tmp_path):
    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "__none__")
    text_only = ensure_demo(discover()).model_dir  # built without the toy's tokens
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "toy")
    code, _, err = run_cli(["run", "text|toy|x", "--model-name-or-path", str(text_only)], capsys)
    assert code == 5
    assert "lacks 34 of the 34 toy tokens (e.g. <🧪0>), so it cannot read or write toy" in err


def test_encode_and_decode_default_to_the_demo_codecs_as_run_does(toy_env, capsys, tmp_path):
    """No codec option given: the demo's codecs (as `run` with no model), said on stderr."""
    series = tmp_path / "s.txt"
    series.write_text("0.0 0.25 -0.75")
    code, span, err = run_cli(["encode", "toy", str(series)], capsys)
    assert code == 0, err
    assert err.startswith("Using the demo codecs for options not given")
    assert "--no-demo" in err
    assert run_cli(["encode", "toy", str(series), "--demo"], capsys)[1] == span
    code, printed, err = run_cli(
        ["decode", "toy", span.strip(), "-o", str(tmp_path / "b.txt")], capsys
    )
    assert code == 0, err
    assert printed.strip() == str(tmp_path / "b.txt")
    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    given = ensure_demo(discover()).options["toy_codec_path"]
    code, again, err = run_cli(["encode", "toy", str(series), "--toy-codec-path", given], capsys)
    assert (code, again, err) == (0, span, "")  # nothing of the demo's was used: no notice
    # --no-demo: the codec's own defaults (the published checkpoints; the toy has none)
    code, _, err = run_cli(["encode", "toy", str(series), "--no-demo"], capsys)
    assert (code, err) == (3, "Error: toy codec: pass --toy-codec-path\n")


def test_encode_decode_round_trip(toy_env, capsys, tmp_path):
    series = tmp_path / "s.txt"
    series.write_text("0.0 0.25 -0.75")
    code, span, err = run_cli(["encode", "toy", str(series), "--demo"], capsys)
    assert code == 0, err
    assert span.strip().startswith("<soty><🧪") and span.strip().endswith("<eoty>")
    code, codes, _ = run_cli(["encode", "toy", str(series), "--demo", "--json"], capsys)
    assert json.loads(codes)["shape"] == [2, 3]
    out = tmp_path / "back.txt"
    code, printed, err = run_cli(["decode", "toy", span.strip(), "-o", str(out), "--demo"], capsys)
    assert code == 0, err and printed.strip() == str(out)
    back = torch.tensor([float(v) for v in out.read_text().split()])
    assert torch.allclose(back, torch.tensor([0.0, 0.25, -0.75]), atol=0.01)
    code, _, err = run_cli(["decode", "toy", span.strip(), "-o", str(out), "--demo"], capsys)
    assert code == 3 and "already exists; use --force" in err
    code, _, err = run_cli(
        ["decode", "toy", "<soty><🧪1><eoty>", "-o", str(tmp_path / "x.txt"), "--demo"], capsys
    )
    assert (
        code == 7
        and err.splitlines()[-1]
        == "Error: span <soty> at 0: ends inside a frame (1 of 2 codebooks)"
    )
    assert not (tmp_path / "x.txt").exists()


def test_stdin_mode_keeps_going_after_a_bad_line(text_only_env, capsys, monkeypatch):
    lines = (
        "# tasks for tonight\ntext|text|one\n\nbroken line\n  # indented comment\ntext|text|two\n"
    )
    code, out, err = run_cli(
        ["run", "--json", "--max-new-tokens", "3", "--seed", "1"], capsys, lines, monkeypatch
    )
    assert code == 1
    assert [json.loads(line)["instruction"] for line in out.splitlines()] == [
        "text|text|one",
        "text|text|two",
    ]
    assert "Error: cannot parse 'broken line'" in err
    assert "#" not in err  # comments and blank lines are skipped, not errors


def test_input_file_skips_comments(text_only_env, capsys, tmp_path):
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("# header\ntext|text|one\n\n# text|text|skipped\ntext|text|two\n")
    args = ["run", "--input-file", str(tasks), "--json", "--max-new-tokens", "3", "--seed", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert [json.loads(x)["instruction"] for x in out.splitlines()] == [
        "text|text|one",
        "text|text|two",
    ]


def test_console_script_installed():
    proc = subprocess.run(
        [Path(sys.executable).parent / "anygpt", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "anygpt 0.1.0"


def test_atomic_output_never_overwrites_and_works_without_hard_links(tmp_path, monkeypatch):
    import os

    from anygpt_core.tasks import atomic_output

    first = atomic_output(tmp_path, "a.txt", lambda p: p.write_text("1"))
    second = atomic_output(tmp_path, "a.txt", lambda p: p.write_text("2"))
    assert (first.name, second.name) == ("a.txt", "a-1.txt")

    def no_links(*args):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    third = atomic_output(tmp_path, "a.txt", lambda p: p.write_text("3"))
    assert third.name == "a-2.txt" and third.read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.txt", "a-2.txt", "a.txt"]


def test_written_files_get_a_new_files_usual_mode(tmp_path):
    """Outputs come from temporary files; they must not keep mkstemp's owner-only 0600."""
    import os

    from anygpt_core.tasks import atomic_output, atomic_write

    umask = os.umask(0o022)
    try:
        made = atomic_output(tmp_path, "a.txt", lambda p: p.write_text("1"))
        exact = atomic_write(tmp_path / "b.txt", lambda p: p.write_text("2"))
    finally:
        os.umask(umask)
    assert {made.stat().st_mode & 0o777, exact.stat().st_mode & 0o777} == {0o644}


def test_batch_size_gives_the_same_outputs_in_input_order(toy_env, capsys, tmp_path):
    """Top-k 1 makes every draw the argmax: the batched run must match the one-by-one run."""
    tasks = ["text|toy|a wave", "text|text|Tell me a story", "text|toy|noise", "text|text|hi"]
    outputs = {}
    for size in ("1", "3"):
        out_dir = tmp_path / f"out{size}"
        args = ["run", *tasks, "--seed", "2", "--top-k", "1", "--json", "--batch-size", size]
        code, out, err = run_cli([*args, "--output-dir", str(out_dir)], capsys)
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["instruction"] for r in rows] == tasks
        outputs[size] = [(r["text"], r["new_tokens"], r["spans"]) for r in rows]
        files = [Path(f) for r in rows for f in r["files"]]
        assert len(files) == 2 and all(f.parent == out_dir for f in files)
        outputs[size + "files"] = [f.read_text() for f in files]
    assert outputs["1"] == outputs["3"] and outputs["1files"] == outputs["3files"]


@pytest.mark.parametrize(("typed", "groups"), [(False, [3]), (True, [2, 1])])
def test_batched_stdin_goes_to_the_engine_at_once_unless_typed(
    text_only_env, capsys, monkeypatch, typed, groups
):
    """A piped file fills the engine's rows with every task; typed lines run N at a time."""
    import io

    from anygpt_core.api import AnyGPT

    calls = []
    run_many = AnyGPT.run_many

    def counted(self, tasks, **options):
        calls.append(len(tasks))
        return run_many(self, tasks, **options)

    monkeypatch.setattr(AnyGPT, "run_many", counted)
    stdin = io.StringIO("text|text|one\ntext|text|two\ntext|text|three\n")
    stdin.isatty = lambda: typed
    monkeypatch.setattr(sys, "stdin", stdin)
    args = ["run", "--json", "--max-new-tokens", "3", "--seed", "1", "--batch-size", "2"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert calls == groups
    rows = [json.loads(line)["instruction"] for line in out.splitlines()]
    assert rows == ["text|text|one", "text|text|two", "text|text|three"]


def test_a_bad_task_in_a_batch_fails_alone(toy_env, capsys, tmp_path):
    args = ["run", "text|toy|a wave", "toy|text|nope.txt", "text|text|hi", "--seed", "0"]
    args += ["--json", "--batch-size", "4", "--output-dir", str(tmp_path)]
    code, out, err = run_cli(args, capsys)
    assert code == 1
    assert "Error: " in err and "nope.txt" in err and "Traceback" not in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["instruction"] for r in rows] == ["text|toy|a wave", "text|text|hi"]
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("size", ["1", "2"])
def test_a_task_whose_budget_cannot_hold_its_span_fails_alone(toy_env, capsys, tmp_path, size):
    """One max_new_tokens for all: the text task answers in it, the toy span cannot fit."""
    args = ["run", "text|toy|a wave", "text|text|hi", "--max-new-tokens", "1", "--seed", "0"]
    args += ["--json", "--batch-size", size, "--output-dir", str(tmp_path)]
    code, out, err = run_cli(args, capsys)
    assert code == 1, err  # as any other failing task among several, batched or not
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert errors == ["Error: max_new_tokens leaves no room for a toy span"]
    assert [json.loads(line)["instruction"] for line in out.splitlines()] == ["text|text|hi"]


def test_output_files_follow_the_umask_without_changing_it(tmp_path, monkeypatch):
    from anygpt_core.tasks import atomic_output

    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or 0o022)
    made = atomic_output(tmp_path, "a.txt", lambda p: p.write_text("x"))
    assert calls == []  # nothing process-wide is read or flipped
    assert made.read_text() == "x"


def test_an_unknown_modality_among_several_tasks_fails_alone(toy_env, capsys, tmp_path):
    args = ["run", "text|text|hi", "text|smell|roses", "huh", "--seed", "0", "--json"]
    code, out, err = run_cli([*args, "--batch-size", "2", "--output-dir", str(tmp_path)], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert any("smell" in line for line in lines) and any("'huh'" in line for line in lines)
    assert [json.loads(line)["instruction"] for line in out.splitlines()] == ["text|text|hi"]


def _unprivileged() -> list[str] | None:
    """A command prefix under which file modes apply (root reads any file): None if none is."""
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["run", "text|text|hi", "--dry-run", "--config", "{file}"], 6),
        (["run", "--input-file", "{file}", "--dry-run"], 3),
        (["encode", "toy", "{file}", "--demo"], 3),
        (["data", "prepare", "{file}", "{dir}/out.jsonl"], 3),
        (["train", "sft", "{file}"], 6),
    ],
    ids=["config", "input-file", "encode", "prepare", "train"],
)
def test_an_unreadable_file_is_one_line_in_its_family(toy_env, tmp_path, args, code):
    prefix = _unprivileged()
    if prefix is None:
        pytest.skip("root, and no setpriv to drop its right to read any file")
    unreadable = tmp_path / "secret.txt"
    unreadable.write_text("text|text|hi\n")
    unreadable.chmod(0)
    tmp_path.chmod(0o777)  # the out file of prepare can be written without privileges
    argv = [a.format(file=unreadable, dir=tmp_path) for a in args]
    proc = subprocess.run(
        [*prefix, str(Path(sys.executable).parent / "anygpt"), *argv],
        env=toy_env,
        capture_output=True,
        text=True,
    )
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("Using the")]
    assert (proc.returncode, errors) == (code, [f"Error: {unreadable}: permission denied"])


@pytest.mark.parametrize(("where", "columns"), [("pipe", 80), ("terminal", 80), ("terminal", 50)])
def test_plugins_table_piped_or_narrow_keeps_every_token_range(toy_env, where, columns):
    import re

    pexpect = pytest.importorskip("pexpect")
    anygpt = str(Path(sys.executable).parent / "anygpt")
    env = {k: v for k, v in toy_env.items() if k not in {"COLUMNS", "LINES"}}
    env["ANYGPT_LOAD_PLUGINS"] = "toy,broken"  # a long error in the state column too
    listed = json.loads(
        subprocess.run(
            [anygpt, "plugins", "--json"], env=env, capture_output=True, text=True
        ).stdout
    )
    if where == "pipe":
        env["COLUMNS"] = str(columns)
        shown = subprocess.run([anygpt, "plugins"], env=env, capture_output=True, text=True).stdout
    else:  # a real terminal of that width
        child = pexpect.spawn(
            anygpt, ["plugins"], env=env, dimensions=(50, columns), encoding="utf-8"
        )
        shown = re.sub(r"\x1b\[[0-9;]*m", "", child.read())
        rows = [line.rstrip("\r") for line in shown.splitlines() if line[:1] in "┏┃┡│└"]
        assert all(len(row) <= columns for row in rows)  # a table fits (else: a line each)
    ranges = [m for row in listed for m in row["modalities"]]
    assert ranges
    for modality in ranges:  # each in full, on one line: nothing cut to "…"
        assert modality["tokens"] in shown
        assert f"{modality['start']} {modality['end']}" in shown
