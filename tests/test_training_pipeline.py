"""Extend the text-only demo with the example `sequence` plugin, prepare data, pretrain, reload, run.

The example package (`examples/anygpt-sequence`) is registered through a real entry point: a
dist-info on sys.path, as conftest.py does for the toy plugin.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli

EXAMPLE = Path(__file__).parents[1] / "examples" / "anygpt-sequence"
TOY_DIR = Path(__file__).parent / "toy"
CAPTIONS = {
    "a rising line": lambda t: t / 32 - 1,
    "a falling line": lambda t: 1 - t / 32,
    "a slow wave": lambda t: np.sin(t / 6),
    "a fast wave": lambda t: np.sin(t * 1.3),
}


@pytest.fixture(scope="module")
def sequence_env(tmp_path_factory):
    """The example plugin on the path through its entry point; only it loads."""
    site = tmp_path_factory.mktemp("sequence_site")
    info = site / "anygpt_sequence-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: anygpt-sequence\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[anygpt]\nsequence = anygpt_sequence.plugin\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLE))
        mp.syspath_prepend(str(site))
        importlib.invalidate_caches()
        mp.setenv("ANYGPT_LOAD_PLUGINS", "sequence")
        mp.delenv("ANYGPT_BLOCK_PLUGINS", raising=False)
        mp.setenv(
            "PYTHONPATH",
            os.pathsep.join([str(site), str(EXAMPLE), os.environ.get("PYTHONPATH", "")]),
        )
        yield site


@pytest.fixture(scope="module")
def plugins(sequence_env):
    from anygpt_core.plugins import discover

    found = discover()
    assert list(found.modalities) == ["sequence"]
    return found


@pytest.fixture(scope="module")
def demo_options(plugins):
    from anygpt_core.demo import ensure_demo

    return ensure_demo(plugins).options


@pytest.fixture(scope="module")
def text_only_demo(sequence_env):
    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    return ensure_demo(discover(load_only=[])).model_dir


@pytest.fixture(scope="module")
def extended(tmp_path_factory, text_only_demo, plugins):
    from anygpt_core.training import extend_model

    out = tmp_path_factory.mktemp("models") / "extended"
    extend_model(text_only_demo, out, [plugins.modality("sequence")])
    return out


def write_series(directory: Path, count: int, *, length: int = 64) -> list[dict[str, str]]:
    """Noisy lines and waves as CSV files; returns manifest rows with paths relative to `directory`."""
    (directory / "media").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        caption, shape = list(CAPTIONS.items())[i % len(CAPTIONS)]
        t = np.arange(length, dtype=np.float32)
        values = shape(t) + 0.01 * np.random.RandomState(i).randn(length)
        np.savetxt(directory / "media" / f"{i}.csv", values, fmt="%.5f")
        rows.append({"text": caption, "sequence": f"media/{i}.csv"})
    return rows


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pretrain_data(tmp_path_factory, plugins, demo_options):
    from anygpt_core.training import prepare_dataset

    root = tmp_path_factory.mktemp("data")
    manifest = write_jsonl(root / "manifest.jsonl", write_series(root, 16))
    summary = prepare_dataset(
        manifest, root / "pretrain.jsonl", plugins=plugins, options=demo_options
    )
    assert summary.written == 16 and not summary.skipped
    return root / "pretrain.jsonl"


def pretrain_config(model: Path, data: Path, out: Path, **overrides):
    from anygpt_core.training import TrainConfig

    fields = {
        "model": str(model),
        "data": [data],
        "output_dir": out,
        "max_length": 128,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "max_steps": 24,
        "per_device_train_batch_size": 4,
        "logging_steps": 4,
        "save_steps": 12,
        "trainer": {"disable_tqdm": True, "use_cpu": True},
    }
    return TrainConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, extended, pretrain_data, plugins):
    pytest.importorskip("accelerate")  # the Trainer needs it: pip install accelerate
    from anygpt_core.training import train

    out = tmp_path_factory.mktemp("runs") / "pretrain"
    return train("pretrain", pretrain_config(extended, pretrain_data, out), plugins)


def test_extend_adds_tokens_in_canonical_order(extended, text_only_demo):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(extended)
    ids = tokenizer.convert_tokens_to_ids(
        ["[Human]", "<eos>", "<📈0>", "<📈127>", "<sosq>", "<eosq>"]
    )
    assert ids == [512, 515, 516, 643, 644, 645]
    assert len(tokenizer) == 646
    files = {p.name for p in extended.iterdir()}
    assert {
        "tokenizer.model",
        "added_tokens.json",
        "tokenizer_config.json",
        "model.safetensors",
    } <= files
    assert "tokenizer.json" not in files  # the published slow layout
    added = json.loads((extended / "added_tokens.json").read_text(encoding="utf-8"))
    assert added["<eosq>"] == 645 and added["[Human]"] == 512
    old = load_file(text_only_demo / "model.safetensors")
    new = load_file(extended / "model.safetensors")
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert new[key].shape == (646, 64)
        assert np.allclose(new[key][:516], old[key])
        assert np.allclose(new[key][516:], old[key].mean(0), atol=1e-6)


def test_extend_again_adds_only_what_is_missing(extended, tmp_path, monkeypatch, plugins):
    from transformers import AutoTokenizer

    from anygpt_core.training import CHAT_TOKENS, extend_model

    monkeypatch.syspath_prepend(str(TOY_DIR))
    toy = importlib.import_module("anygpt_toy").TOY
    result = extend_model(
        extended, tmp_path / "again", [toy, plugins.modality("sequence")], extra_tokens=CHAT_TOKENS
    )
    assert result.added == toy.token_strings() + list(CHAT_TOKENS)
    assert result.present == 4 + 130
    before = AutoTokenizer.from_pretrained(extended).get_vocab()
    after = AutoTokenizer.from_pretrained(tmp_path / "again").get_vocab()
    assert all(after[token] == index for token, index in before.items())
    assert after["<soty>"] == 646 + 32 and after["<-Ins->"] == 646 + 35 and len(after) == 682


def test_cli_extend_rejects_a_model_that_is_not_llama(sequence_env, tmp_path, capsys):
    base = tmp_path / "gpt2"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "gpt2"}')
    code, _, err = run_cli(
        ["model", "extend", str(base), str(tmp_path / "out"), "-m", "sequence"], capsys
    )
    assert code == 4
    assert err == (
        f"Error: {base}: model_type 'gpt2' is not LLaMA-family; AnyGPT extends llama, mistral models\n"
    )
    assert not (tmp_path / "out").exists()


def test_cli_extend_refuses_weights_that_do_not_fill_the_model(
    sequence_env, text_only_demo, tmp_path, capsys
):
    import shutil

    from safetensors.torch import load_file, save_file

    base = shutil.copytree(text_only_demo, tmp_path / "base")
    weights = load_file(base / "model.safetensors")
    weights.pop("model.norm.weight")
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    code, _, err = run_cli(["model", "extend", str(base), str(out), "-m", "sequence"], capsys)
    assert code == 4
    assert err == (
        f"Error: {base}: does not match the model its config.json describes: 1 missing key "
        "(model.norm.weight)\n"
    )
    assert not out.exists()


def test_cli_extend_rejects_an_unknown_modality(sequence_env, text_only_demo, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["model", "extend", str(text_only_demo), str(out), "-m", "smell"], capsys
    )
    assert code == 5
    assert err.startswith("Error: unknown modality 'smell'; installed: text, sequence")
    assert not out.exists()


def test_cli_extend_refuses_a_non_empty_output(sequence_env, text_only_demo, extended, capsys):
    code, _, err = run_cli(["model", "extend", str(text_only_demo), str(extended)], capsys)
    assert code == 3 and "already exists and is not an empty directory" in err


def test_pretraining_loss_falls_and_the_model_writes_sequences(
    pretrained, plugins, demo_options, tmp_path
):
    from anygpt_core.api import AnyGPT

    losses = [loss for _, loss in pretrained.losses]
    assert pretrained.steps == 24 and len(losses) == 6
    assert losses[-1] < 0.6 * losses[0], losses
    checkpoint = pretrained.output_dir / "checkpoint-12"
    assert (checkpoint / "tokenizer.model").is_file() and (
        checkpoint / "added_tokens.json"
    ).is_file()

    gpt = AnyGPT.load(
        pretrained.output_dir,
        device="cpu",
        plugins=plugins,
        codec_options=demo_options,
        output_dir=tmp_path,
    )
    result = gpt.run("text|sequence|a rising line", seed=0)
    assert result.prompt.endswith("This is input: a rising line<eoh> [MMGPT]: <sosq>")
    assert len(result.spans) == 1 and result.spans[0].codes.shape[0] == 2
    values = [float(v) for v in result.files[0].read_text().split()]
    assert len(values) == 4 * result.spans[0].codes.shape[1]


def test_packed_batch_has_the_padded_batch_loss(extended):
    """Examples joined in one row attend only within themselves: the same loss as padding them."""
    import torch
    from transformers import AutoModelForCausalLM

    from anygpt_core.training.datasets import IGNORE, collate, collate_packed

    model = AutoModelForCausalLM.from_pretrained(extended, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    features = []
    for n in (7, 12, 3):
        ids = torch.randint(3, 600, (n,), generator=generator).tolist()
        features.append({"input_ids": ids, "labels": [ids[0], IGNORE, *ids[2:]]})
    packed = collate_packed(features)
    assert packed["position_ids"].tolist() == [[*range(7), *range(12), *range(3)]]
    assert packed["labels"][0, [0, 7, 19]].tolist() == [IGNORE] * 3
    assert packed["labels"][0, 1].item() == IGNORE and packed["input_ids"].shape == (1, 22)
    with torch.no_grad():
        padded_loss = model(**collate(features, pad_id=0)).loss
        packed_loss = model(**packed).loss
        leaky = {k: v for k, v in packed.items() if k != "position_ids"}
        leaky_loss = model(**leaky).loss  # without restarting positions, examples see each other
    torch.testing.assert_close(packed_loss, padded_loss, rtol=0, atol=1e-5)
    assert abs(leaky_loss.item() - padded_loss.item()) > 1e-3


def test_packed_pretraining_learns(extended, pretrain_data, plugins, tmp_path):
    pytest.importorskip("accelerate")
    from anygpt_core.training import train

    config = pretrain_config(extended, pretrain_data, tmp_path / "packed", packing=True)
    result = train("pretrain", config, plugins)
    losses = [loss for _, loss in result.losses]
    assert result.steps == 24 and losses[-1] < 0.6 * losses[0], losses


def test_cli_pretrain_resumes_from_the_last_checkpoint(pretrained, pretrain_data, tmp_path, capsys):
    import shutil

    import yaml

    run = shutil.copytree(pretrained.output_dir, tmp_path / "run")  # other tests load the original
    config = pretrain_config(Path("unused"), pretrain_data, run, max_steps=28)
    fields = json.loads(config.model_dump_json())
    fields["model"] = str(run)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(fields))
    code, out, err = run_cli(["train", "pretrain", str(path)], capsys)
    assert code == 0, err
    assert f"resuming from {run / 'checkpoint-24'}" in " ".join(err.split())
    assert "after 28 steps" in out
    assert (run / "checkpoint-28" / "added_tokens.json").is_file()


def test_cli_train_config_errors_name_the_file_and_fields(sequence_env, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model: m\ndata: d.jsonl\noutput_dir: o\nlearning_rat: 1\nmax_length: 2\n"
        "trainer: {fsdp_confg: {}}\n"
    )
    code, _, err = run_cli(["train", "sft", str(path)], capsys)
    assert code == 6
    assert err.count("\n") == 1
    assert err.startswith(f"Error: {path}: max_length: ")
    assert "learning_rat: unknown field" in err
    assert "not TrainingArguments fields: fsdp_confg" in err


def test_cli_train_rejects_bad_data_before_loading(extended, pretrain_data, tmp_path, capsys):
    pytest.importorskip("accelerate")
    good = pretrain_data.read_text().splitlines()[0]
    data = write_jsonl(tmp_path / "train.jsonl", [good, {"text": "x", "smell": "<so><eo>"}])
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps({"model": str(extended), "data": str(data), "output_dir": str(tmp_path / "o")})
    )
    code, _, err = run_cli(["train", "pretrain", str(config)], capsys)
    assert code == 3
    assert err == f"Error: {data} line 2: unknown modality 'smell' (installed: sequence)\n"
    assert not (tmp_path / "o").exists()


def test_train_refuses_a_model_without_the_modality(
    text_only_demo, pretrain_data, tmp_path, capsys
):
    pytest.importorskip("accelerate")
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps(
            {
                "model": str(text_only_demo),
                "data": str(pretrain_data),
                "output_dir": str(tmp_path / "o"),
            }
        )
    )
    code, _, err = run_cli(["train", "pretrain", str(config)], capsys)
    assert code == 5
    assert "lacks 130 of the 130 sequence tokens" in err


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory, plugins, demo_options):
    from anygpt_core.training import prepare_dataset

    root = tmp_path_factory.mktemp("chat")
    rows = []
    for i, row in enumerate(write_series(root, 8)):
        rows.append(
            {
                "id": f"c{i}",
                "conversation": [
                    {
                        "role": "user",
                        "message": "{sequence} What is this?",
                        "sequence": row["sequence"],
                    },
                    {"role": "assistant", "message": f"It is {row['text']}."},
                    {"role": "user", "message": f"Draw {row['text']}."},
                    {"role": "assistant", "message": "Here it is:", "sequence": row["sequence"]},
                ],
            }
        )
    manifest = write_jsonl(root / "manifest.jsonl", rows)
    summary = prepare_dataset(manifest, root / "chat.jsonl", plugins=plugins, options=demo_options)
    assert summary.written == 8
    return root / "chat.jsonl"


def test_sft_labels_cover_only_the_assistant_replies(extended, chat_data):
    from transformers import AutoTokenizer

    from anygpt_core.prompts import MMGPT_CHAT
    from anygpt_core.training.datasets import IGNORE, ChatDataset, read_examples

    tokenizer = AutoTokenizer.from_pretrained(extended)
    lines, _ = read_examples([chat_data], "sft", {})
    example = ChatDataset(lines, tokenizer, MMGPT_CHAT, max_length=512)[0]
    tokens = tokenizer.convert_ids_to_tokens(example["input_ids"])
    learned = [t for t, label in zip(tokens, example["labels"], strict=True) if label != IGNORE]
    assert [label for label in example["labels"] if label != IGNORE] == [
        i
        for i, label in zip(example["input_ids"], example["labels"], strict=True)
        if label != IGNORE
    ]
    turns = json.loads(chat_data.read_text().splitlines()[0])["conversation"]
    expected = "".join(t["message"] + "<eos>" for t in turns[1::2])
    assert "".join(learned).replace("▁", "").replace(" ", "") == expected.replace(" ", "")
    assert learned.count("<eos>") == 2 and "<eoh>" not in learned and "[MMGPT]" not in learned
    # everything up to the first reply (system line, user turn with its span, `[MMGPT]:`) is masked
    first = example["labels"].index(next(x for x in example["labels"] if x != IGNORE))
    assert tokens[first - 1] == ":" and "[MMGPT]" in tokens[first - 3 : first]
    assert tokens.index("<sosq>") < first


def test_assistant_ranges_follow_the_template():
    from anygpt_core.prompts import ANYGPT_CHAT
    from anygpt_core.training.datasets import assistant_ranges

    text, ranges = assistant_ranges(ANYGPT_CHAT, ["hi", "hello", "bye", "see you"])
    assert [text[a:b] for a, b in ranges] == [" hello<eom>", " see you<eom>"]
    assert text.endswith("[AnyGPT]: see you<eom>")


def test_new_chat_tokens_start_from_the_mean_even_in_padded_rows(extended, tmp_path):
    """A base whose embedding matrix has spare rows (padded to a multiple): the rows SFT's new
    tokens take are set to the mean of the known ones, not left as they were."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from anygpt_core.training.extend import CHAT_TOKENS, write_tokenizer
    from anygpt_core.training.train import _load_model

    base = shutil.copytree(extended, tmp_path / "padded")
    model = AutoModelForCausalLM.from_pretrained(base)
    known = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(known + 8, mean_resizing=False)  # spare rows, arbitrary values
    model.save_pretrained(base)
    tokenizer, added = write_tokenizer(base, tmp_path / "out", CHAT_TOKENS)
    loaded = _load_model(base, tokenizer, first_new=known)
    weight = loaded.get_input_embeddings().weight
    assert added == list(CHAT_TOKENS) and weight.shape[0] == known + 8
    mean = weight[:known].mean(0)
    torch.testing.assert_close(weight[known : known + 2], mean.expand(2, -1))


def test_sft_adds_chat_tokens_and_the_result_loads(
    extended, chat_data, plugins, demo_options, tmp_path
):
    pytest.importorskip("accelerate")
    from anygpt_core.api import AnyGPT
    from anygpt_core.training import train

    config = pretrain_config(
        extended,
        chat_data,
        tmp_path / "sft",
        max_steps=6,
        logging_steps=2,
        per_device_train_batch_size=2,
        save_steps=100,
        max_length=256,
    )
    result = train("sft", config, plugins)
    assert result.added_tokens == ["<-Res->", "<-Ins->"]
    assert all(np.isfinite(loss) for _, loss in result.losses)
    added = json.loads((result.output_dir / "added_tokens.json").read_text(encoding="utf-8"))
    assert added["<-Res->"] == 646 and added["<-Ins->"] == 647
    gpt = AnyGPT.load(
        result.output_dir,
        device="cpu",
        plugins=plugins,
        codec_options=demo_options,
        output_dir=tmp_path / "out",
    )
    assert gpt.model.get_input_embeddings().weight.shape[0] == 648
    assert gpt.run("text|sequence|a slow wave", seed=1).files


def test_sft_keeps_the_first_reply_when_the_user_turn_is_too_long(extended, tmp_path):
    from transformers import AutoTokenizer

    from anygpt_core.prompts import MMGPT_CHAT
    from anygpt_core.training.datasets import IGNORE, ChatDataset, read_examples

    turns = [{"role": "user", "message": "word " * 300}, {"role": "assistant", "message": "short"}]
    data = write_jsonl(tmp_path / "long.jsonl", [{"conversation": turns}])
    lines, _ = read_examples([data], "sft", {})
    tokenizer = AutoTokenizer.from_pretrained(extended)
    example = ChatDataset(lines, tokenizer, MMGPT_CHAT, max_length=64)[0]
    assert len(example["input_ids"]) == 64
    learned = [t for t in example["labels"] if t != IGNORE]
    assert (
        tokenizer.convert_ids_to_tokens(learned)[-1] == "<eos>" and example["labels"][-1] != IGNORE
    )
