"""`anygpt eval`: the six paper tasks on the demo model, tiny data sets in their published layouts,
tiny scorer models; metrics against the libraries; cache, resume, rescore; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli
from eval_data import LIBRI_TEXTS, write_coco, write_librispeech, write_musiccaps, write_vctk

pytest.importorskip("jiwer")
pytest.importorskip("pycocoevalcap")

ANYGPT = Path(sys.executable).with_name("anygpt")


@pytest.fixture(scope="module")
def scorers(tmp_path_factory) -> dict[str, str]:
    from anygpt_core.evaluation.testing import write_tiny_scorers

    return write_tiny_scorers(tmp_path_factory.mktemp("scorers"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    coco = write_coco(root / "coco")
    musiccaps = write_musiccaps(root / "musiccaps")
    return {
        "librispeech-asr": write_librispeech(root / "libri"),
        "vctk-tts": write_vctk(root / "vctk"),
        "coco-caption": coco,
        "coco-t2i": coco,
        "musiccaps-t2m": musiccaps,
        "musiccaps-caption": musiccaps,
    }


def scorer_args(scorers: dict[str, str]) -> list[str]:
    return [arg for kind, path in scorers.items() for arg in ("--scorer", f"{kind}={path}")]


def data_args(data: dict[str, Path], *tasks: str) -> list[str]:
    return [arg for task in tasks for arg in ("--data", f"{task}={data[task]}")]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- the metrics are the libraries' --------------------------------------------------------


def test_wer_is_jiwer_after_whispers_normaliser():
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    from anygpt_core.evaluation.metrics import wer

    refs = ["Mr. Smith bought 25 colours.", "HELLO THERE"]
    hyps = ["mister smith bought twenty five colors", "hello"]
    corpus, each = wer(refs, hyps)
    norm = EnglishTextNormalizer()
    expected = jiwer.wer([norm(r) for r in refs], [norm(h) for h in hyps])
    assert corpus == pytest.approx(100 * expected)
    assert each[1] == pytest.approx(50.0)
    assert wer(refs, refs)[0] == 0.0  # the oracle


def test_cider_is_pycocoevalcaps():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from anygpt_core.evaluation.metrics import cider

    refs = [
        ["a dog runs on the grass.", "A brown dog running."],
        ["Two cats sleep.", "cats asleep"],
    ]
    oracle = [r[0] for r in refs]
    value, each = cider(refs, oracle)
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": c}] for i, c in enumerate(oracle)})
    expected, per = Cider().compute_score(gts, res)
    assert value == pytest.approx(100 * expected)
    assert each == pytest.approx([100 * p for p in per])


def test_limit_is_seeded_and_nested():
    from anygpt_core.evaluation import Sample, select
    from anygpt_core.tasks import Task

    samples = [Sample(str(i), Task("text", "text", str(i)), "") for i in range(50)]
    ten = select(samples, 10, seed=3)
    assert ten == select(samples, 10, seed=3)
    assert ten != select(samples, 10, seed=4)
    assert {s.id for s in ten} <= {s.id for s in select(samples, 20, seed=3)}
    assert [int(s.id) for s in ten] == sorted(int(s.id) for s in ten)  # data order kept


# ---- the six tasks end to end --------------------------------------------------------------


def test_all_six_tasks_on_the_demo(tmp_path, data, scorers, capsys):
    tasks = list(data)
    code, out, err = run_cli(
        [
            "eval",
            *tasks,
            *data_args(data, *tasks),
            *scorer_args(scorers),
            "--limit",
            "2",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["tasks"]) == set(tasks)
    for task in tasks:
        entry = report["tasks"][task]
        assert entry["n"] == 2 and entry["skipped"] == 0, (task, entry)
        assert entry["value"] is not None, task
        assert f"{task} {entry['metric']}:" in out
        samples = lines(tmp_path / task / "samples.jsonl")
        assert len(samples) == 2 and all(s["score"] for s in samples)
    assert report["tasks"]["librispeech-asr"]["paper"] == 8.5
    assert report["tasks"]["librispeech-asr"]["decode"]["num_beams"] == 5
    assert report["tasks"]["vctk-tts"]["metrics"]["SIM"]["paper"] == 0.77
    assert report["tasks"]["musiccaps-t2m"]["decode"]["repetition_penalty"] == 1.15
    assert -1 <= report["tasks"]["coco-t2i"]["value"] <= 1
    for sample in lines(tmp_path / "vctk-tts" / "samples.jsonl"):
        (wav,) = sample["files"]
        assert (tmp_path / "vctk-tts" / wav).is_file()
    assert (tmp_path / "report.md").read_text().count("| ") > 6
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["versions"]["jiwer"]
    # --rescore scores the cache again, generates nothing, same numbers
    before = {t: (tmp_path / t / "generations.jsonl").read_bytes() for t in tasks}
    code, out, err = run_cli(
        [
            "eval",
            *tasks,
            *data_args(data, *tasks),
            *scorer_args(scorers),
            "--limit",
            "2",
            "--out",
            str(tmp_path),
            "--rescore",
        ],
        capsys,
    )
    assert code == 0, err
    again = json.loads((tmp_path / "report.json").read_text())
    for task in tasks:
        assert (tmp_path / task / "generations.jsonl").read_bytes() == before[task]
        assert again["tasks"][task]["value"] == report["tasks"][task]["value"]


def test_asr_harness_equals_jiwer_on_its_own_answers(tmp_path, data, capsys):
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    code, _, err = run_cli(
        [
            "eval",
            "librispeech-asr",
            *data_args(data, "librispeech-asr"),
            "--limit",
            "3",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--seed",
            "5",
        ],
        capsys,
    )
    assert code == 0, err
    samples = lines(tmp_path / "librispeech-asr" / "samples.jsonl")
    norm = EnglishTextNormalizer()
    refs = [norm(s["reference"]) for s in samples]
    hyps = [norm(s["output"]) for s in samples]
    value = json.loads((tmp_path / "report.json").read_text())["tasks"]["librispeech-asr"]["value"]
    assert value == pytest.approx(100 * jiwer.wer(refs, hyps), abs=1e-4)
    assert all(s["prompt"].endswith("<eoh> [MMGPT]:") for s in samples)
    assert {s["id"] for s in samples} <= set(LIBRI_TEXTS)


def test_a_killed_run_resumes_without_generating_twice(tmp_path, data):
    out = tmp_path / "out"
    args = [
        str(ANYGPT),
        "eval",
        "librispeech-asr",
        *data_args(data, "librispeech-asr"),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-size",
        "1",
        "--decode",
        "model",
    ]
    cache = out / "librispeech-asr" / "generations.jsonl"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (cache.is_file() and cache.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = lines(cache)
    assert 2 <= len(first) < len(LIBRI_TEXTS)
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    after = lines(cache)
    ids = [e["id"] for e in after]
    assert sorted(ids) == sorted(LIBRI_TEXTS)  # every sample exactly once
    assert after[: len(first)] == first  # the answers made before the kill were kept
    # another decoding into the same folder is refused rather than mixed in
    mixed = subprocess.run(
        [*args[:-2], "--decode", "paper"], capture_output=True, text=True, timeout=300, check=False
    )
    assert mixed.returncode == 6
    assert "cached answers were made with other settings (decode, decoding)" in mixed.stderr


def test_unreadable_sample_is_skipped_and_reported(tmp_path, capsys):
    root = write_librispeech(tmp_path / "libri", count=3)
    broken = next(root.rglob("1089-134686-0001.flac"))
    broken.write_bytes(b"not audio at all")
    code, _, err = run_cli(
        [
            "eval",
            "librispeech-asr",
            "--data",
            f"librispeech-asr={root}",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--decode",
            "model",
        ],
        capsys,
    )
    assert code == 0, err
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["tasks"]["librispeech-asr"]
    assert (entry["n"], entry["skipped"]) == (2, 1)
    assert "skipped librispeech-asr 1089-134686-0001:" in err and "not a readable audio" in err
    row = [
        s
        for s in lines(tmp_path / "out" / "librispeech-asr" / "samples.jsonl")
        if s["id"] == "1089-134686-0001"
    ]
    assert "not a readable audio file" in row[0]["error"]


# ---- bad input: one line, the family's exit code -------------------------------------------


def test_data_in_the_wrong_layout_exits_3(tmp_path, capsys):
    (tmp_path / "test-clean").mkdir()
    code, _, err = run_cli(
        [
            "eval",
            "librispeech-asr",
            "--data",
            f"librispeech-asr={tmp_path}",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 3
    assert err.strip() == f"Error: {tmp_path}: no *.trans.txt under test-clean"


@pytest.mark.parametrize(
    ("task", "make", "says"),
    [
        ("vctk-tts", lambda p: (p / "txt").mkdir(), "no wav48_silence_trimmed or wav48 folder"),
        ("musiccaps-t2m", lambda p: None, "no musiccaps-public.csv"),
        ("coco-caption", lambda p: None, "no dataset_coco.json"),
    ],
)
def test_other_layouts_name_what_is_missing(tmp_path, capsys, task, make, says, scorers):
    make(tmp_path)
    code, _, err = run_cli(
        [
            "eval",
            task,
            "--data",
            f"{task}={tmp_path}",
            *scorer_args(scorers),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 3, err
    assert says in err and len(err.strip().splitlines()) == 1


def test_scorer_missing_offline_exits_4_naming_the_hub_id(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, _, err = run_cli(
        ["eval", "vctk-tts", *data_args(data, "vctk-tts"), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 4
    assert "openai/whisper-medium" in err and len(err.strip().splitlines()) == 1


def test_task_of_a_missing_plugin_exits_5(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ANYGPT_BLOCK_PLUGINS", "music")
    code, _, err = run_cli(["eval", "musiccaps-t2m", "--data", f"musiccaps-t2m={tmp_path}"], capsys)
    from anygpt_cli.catalogue import install_target

    assert code == 5
    target = install_target("anygpt-music")
    assert err.strip() == f"Error: eval task 'musiccaps-t2m' needs a plugin: pip install {target}"


def test_usage_errors_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["eval", "librispeech-asr"], capsys)
    assert code == 2 and "pass --data librispeech-asr=PATH" in err
    code, _, err = run_cli(["eval", "librispeech-asr", "--data", "nonsense"], capsys)
    assert code == 2 and "expected NAME=VALUE" in err
    code, _, err = run_cli(
        ["eval", "librispeech-asr", "--data", f"librispeech-asr={tmp_path}", "--top-p", "0.5"],
        capsys,
    )
    assert code == 6 and "apply with --decode model" in err


def test_list_names_every_paper_task(capsys):
    code, out, _ = run_cli(["eval", "--list"], capsys)
    assert code == 0
    for task in (
        "coco-caption",
        "coco-t2i",
        "librispeech-asr",
        "vctk-tts",
        "musiccaps-t2m",
        "musiccaps-caption",
    ):
        assert task in out


def test_eval_with_the_low_memory_modes(tmp_path, data, capsys):
    """`--quantize int8 --offload codecs` evaluate too; the cache records the mode."""
    args = [
        "eval",
        "librispeech-asr",
        *data_args(data, "librispeech-asr"),
        "--limit",
        "2",
        "--device",
        "cpu",
        "--decode",
        "model",
        "--max-new-tokens",
        "8",
    ]
    code, _, err = run_cli(
        [*args, "--quantize", "int8", "--offload", "codecs", "--out", str(tmp_path)], capsys
    )
    assert code == 0, err
    entry = json.loads((tmp_path / "report.json").read_text())["tasks"]["librispeech-asr"]
    assert (entry["n"], entry["skipped"]) == (2, 0)
    settings = json.loads((tmp_path / "librispeech-asr" / "run.json").read_text())
    assert settings["quantize"] == "int8"
    code, _, err = run_cli([*args, "--out", str(tmp_path)], capsys)  # another mode, same cache
    assert code == 6 and "(quantize)" in err


def test_instructions_file_sets_the_prompts(tmp_path, data, capsys):
    phrasings = tmp_path / "phrasings.json"
    phrasings.write_text(json.dumps({"other2text": {"speech": ["Write down what is said."]}}))
    code, _, err = run_cli(
        [
            "eval",
            "librispeech-asr",
            *data_args(data, "librispeech-asr"),
            "--limit",
            "2",
            "--device",
            "cpu",
            "--decode",
            "model",
            "--max-new-tokens",
            "4",
            "--instructions",
            str(phrasings),
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 0, err
    samples = lines(tmp_path / "out" / "librispeech-asr" / "samples.jsonl")
    assert all(s["prompt"].startswith("[Human]: Write down what is said. <sosp>") for s in samples)


def test_a_missing_metric_library_fails_before_the_model_loads(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jiwer", None)  # import jiwer raises ImportError
    monkeypatch.setattr("anygpt_cli.eval_cmd.load_model", lambda *a, **k: pytest.fail("loaded"))
    code, _, err = run_cli(
        ["eval", "librispeech-asr", *data_args(data, "librispeech-asr"), "--out", str(tmp_path)],
        capsys,
    )
    assert code == 5
    assert err.strip().endswith(
        "jiwer is not installed: pip install jiwer, or the core's eval extra "
        "(pip install '.[eval]' in the checkout)"
    )


# ---- hub data sets (datasets' cache, offline) ------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty `datasets` cache for this test; HF_HUB_OFFLINE (conftest) keeps it offline."""
    datasets = pytest.importorskip("datasets")
    assert datasets.config.HF_HUB_OFFLINE
    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def flac_bytes(path: Path) -> dict:
    return {"bytes": path.read_bytes(), "path": path.name}


def test_librispeech_from_the_hub_equals_the_tree(tmp_path, hub_cache, capsys):
    from eval_data import write_hub_dataset

    from anygpt_core.evaluation import Evaluation
    from anygpt_core.plugins import discover

    tree = write_librispeech(tmp_path / "libri")
    flacs = sorted(tree.rglob("*.flac"), reverse=True)  # the hub's order is not the tree's
    write_hub_dataset(
        hub_cache,
        "openslr/librispeech_asr",
        {
            "file": [f.name for f in flacs],
            "audio": [flac_bytes(f) for f in flacs],
            "text": [LIBRI_TEXTS[f.stem] for f in flacs],
            "speaker_id": [1089] * len(flacs),
            "chapter_id": [134686] * len(flacs),
            "id": [f.stem for f in flacs],
        },
        config="clean",
        split="test",
        media={"audio": "audio"},
    )
    task = discover().eval_task("librispeech-asr")
    runs = [Evaluation(tmp_path / k, backend=None, scorers=None, limit=4) for k in ("a", "b")]
    local = runs[0].samples(task, str(tree))
    hub = runs[1].samples(task, "openslr/librispeech_asr")
    assert [(s.id, s.reference) for s in hub] == [(s.id, s.reference) for s in local]
    for sample in hub:  # the audio, written out for the model, is the tree's file
        assert (
            Path(sample.task.payload).read_bytes()
            == next(tree.rglob(f"{sample.id}.flac")).read_bytes()
        )

    out = tmp_path / "out"
    capsys.readouterr()
    code, stdout, err = run_cli(
        [
            "eval",
            "librispeech-asr",
            "--data",
            "librispeech-asr=openslr/librispeech_asr",
            "--limit",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    entry = json.loads((out / "report.json").read_text())["tasks"]["librispeech-asr"]
    assert entry["n"] == 2 and entry["skipped"] == 0 and entry["value"] is not None
    assert "librispeech-asr WER:" in stdout


def test_coco_caption_from_the_hub(tmp_path, hub_cache, capsys):
    from eval_data import write_hub_dataset
    from PIL import Image

    from anygpt_core.evaluation import Evaluation
    from anygpt_core.plugins import discover

    coco = write_coco(tmp_path / "coco", test_images=3, val_images=1)
    karpathy = json.loads((coco / "dataset_coco.json").read_text())["images"]
    test = [e for e in karpathy if e["split"] == "test"]
    # yerevann/coco-karpathy: Karpathy's captions, the images named but not held
    write_hub_dataset(
        hub_cache,
        "yerevann/coco-karpathy",
        {
            "filepath": [e["filepath"] for e in test],
            "filename": [e["filename"] for e in test],
            "cocoid": [e["cocoid"] for e in test],
            "sentences": [[s["raw"] for s in e["sentences"]] for e in test],
            "url": [f"http://images.cocodataset.org/val2014/{e['filename']}" for e in test],
        },
        split="test",
    )
    # a set that holds the images, its captions in a `caption` list
    files = [coco / e["filepath"] / e["filename"] for e in test]
    write_hub_dataset(
        hub_cache,
        "someone/coco-5k-test",
        {
            "image": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
            "caption": [[s["raw"] for s in e["sentences"]] for e in test],
            "cocoid": [e["cocoid"] for e in test],
        },
        split="test",
        media={"image": "image"},
    )
    task = discover().eval_task("coco-caption")
    local = Evaluation(tmp_path / "a", backend=None, scorers=None).samples(task, str(coco))
    expected = [(s.id, s.reference, Path(s.task.payload)) for s in local]
    named = Evaluation(tmp_path / "b", backend=None, scorers=None).samples(
        task, f"yerevann/coco-karpathy:{coco}"
    )
    assert [(s.id, s.reference, Path(s.task.payload)) for s in named] == expected
    held = Evaluation(tmp_path / "c", backend=None, scorers=None).samples(
        task, "someone/coco-5k-test"
    )
    assert [(s.id, s.reference) for s in held] == [(i, r) for i, r, _ in expected]
    for sample, (_, _, original) in zip(held, expected, strict=True):
        assert Path(sample.task.payload).read_bytes() == original.read_bytes()
        with Image.open(sample.task.payload) as image:
            assert image.size == (64, 48)

    capsys.readouterr()
    code, _, err = run_cli(  # the images are not in the hub set: one line, exit 3
        [
            "eval",
            "coco-caption",
            "--data",
            "coco-caption=yerevann/coco-karpathy",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert "coco-caption=yerevann/coco-karpathy:FOLDER" in err


def test_musiccaps_from_the_hub_has_captions_but_no_audio(tmp_path, hub_cache, scorers, capsys):
    from eval_data import write_hub_dataset

    from anygpt_core.evaluation import Evaluation
    from anygpt_core.plugins import discover

    folder = write_musiccaps(tmp_path / "mc")
    import csv

    with (folder / "musiccaps-public.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    write_hub_dataset(
        hub_cache,
        "google/MusicCaps",
        {"ytid": [r["ytid"] for r in rows], "caption": [r["caption"] for r in rows]},
        split="train",
    )
    plugins = discover()
    t2m = Evaluation(tmp_path / "a", backend=None, scorers=None).samples(
        plugins.eval_task("musiccaps-t2m"), "google/MusicCaps"
    )
    assert [(s.id, s.task.payload) for s in t2m] == [(r["ytid"], r["caption"]) for r in rows]
    caption = plugins.eval_task("musiccaps-caption")
    clips = Evaluation(tmp_path / "b", backend=None, scorers=None).samples(
        caption, f"google/MusicCaps:{folder / 'clips'}"
    )
    assert [s.id for s in clips] == [r["ytid"] for r in rows]
    assert all(Path(s.task.payload).is_file() for s in clips)

    capsys.readouterr()
    code, _, err = run_cli(
        [
            "eval",
            "musiccaps-caption",
            "--data",
            "musiccaps-caption=google/MusicCaps",
            *scorer_args(scorers),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 3
    assert err.strip() == (
        "Error: google/MusicCaps: the hub data set holds MusicCaps' captions, not its audio; "
        "download the clips as {ytid}.wav and pass --data musiccaps-caption=google/MusicCaps:FOLDER"
    )


def test_hub_data_not_cached_offline_exits_4_naming_the_id(tmp_path, hub_cache, capsys):
    code, _, err = run_cli(
        [
            "eval",
            "librispeech-asr",
            "--data",
            "librispeech-asr=openslr/librispeech_asr",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 4
    assert err.strip() == (
        "Error: openslr/librispeech_asr (config clean, split test): not in the local datasets "
        "cache (offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set); load it once with a "
        "network, or pass a local path"
    )


def test_vctk_from_the_hub_equals_the_trees(tmp_path, hub_cache):
    from eval_data import write_hub_dataset

    from anygpt_core.evaluation import Evaluation
    from anygpt_core.plugins import discover

    root = write_vctk(tmp_path / "vctk", speakers=2, utterances=3)
    rows: dict[str, list] = {"speaker_id": [], "audio": [], "file": [], "text": [], "text_id": []}
    for flac in sorted(root.rglob("*_mic1.flac")):
        speaker, number, _ = flac.stem.split("_")
        for mic in ("mic2", "mic1"):  # both microphones, as the hub set has them: mic1 is read
            rows["speaker_id"].append(speaker)
            rows["audio"].append(flac_bytes(flac) if mic == "mic1" else None)
            rows["file"].append(flac.name.replace("mic1", mic))
            rows["text"].append((root / "txt" / speaker / f"{speaker}_{number}.txt").read_text())
            rows["text_id"].append(number)
    write_hub_dataset(
        hub_cache, "CSTR-Edinburgh/vctk", rows, split="train", media={"audio": "audio"}
    )
    task = discover().eval_task("vctk-tts")
    local = Evaluation(tmp_path / "a", backend=None, scorers=None).samples(task, str(root))
    hub = Evaluation(tmp_path / "b", backend=None, scorers=None).samples(
        task, "CSTR-Edinburgh/vctk"
    )
    assert [(s.id, s.task.payload) for s in hub] == [(s.id, s.task.payload) for s in local]
    for ours, theirs in zip(hub, local, strict=True):  # the same 3 s of the same utterance
        assert Path(ours.extra["prompt"]).read_bytes() == Path(theirs.extra["prompt"]).read_bytes()


def test_hub_data_is_told_from_a_path(tmp_path):
    from anygpt_core.evaluation.hub import HubData, hub_data

    assert hub_data("openslr/librispeech_asr") == HubData("openslr/librispeech_asr")
    assert hub_data(f"google/MusicCaps@v2:{tmp_path}") == HubData(
        "google/MusicCaps", "v2", tmp_path
    )
    (tmp_path / "owner").mkdir()
    assert hub_data(str(tmp_path)) is None  # an existing path
    assert hub_data(f"{tmp_path}/owner/name") is None  # a path that does not exist
    assert hub_data("LibriSpeech") is None and hub_data("a/b/c") is None
