from __future__ import annotations

import hashlib

from anygpt_core.demo import ensure_demo
from anygpt_core.plugins import discover


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_demo_is_deterministic_and_in_the_published_layout(toy_env, tmp_path):
    plugins = discover()
    first = ensure_demo(plugins, home=tmp_path / "a")
    second = ensure_demo(plugins, home=tmp_path / "b")
    names = {p.name for p in first.model_dir.iterdir()}
    assert {
        "tokenizer.model",
        "added_tokens.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.json",
        "generation_config.json",
        "model.safetensors",
    } <= names
    assert digest(first.model_dir) == digest(second.model_dir)
    assert first.options["toy_codec_path"].startswith(str(tmp_path / "a"))
    assert ensure_demo(plugins, home=tmp_path / "a") == first  # cached


def test_demo_vocabulary_in_canonical_order(toy_env, tmp_path):
    from transformers import AutoTokenizer

    demo = ensure_demo(discover(), home=tmp_path)
    tok = AutoTokenizer.from_pretrained(demo.model_dir)
    vocab = tok.get_vocab()
    roles = [vocab[t] for t in ("[Human]", "[MMGPT]", "<eoh>", "<eos>")]
    base = roles[0]
    assert roles == [base, base + 1, base + 2, base + 3]
    assert vocab["<🧪0>"] == base + 4 and vocab["<🧪31>"] == base + 35
    assert (vocab["<soty>"], vocab["<eoty>"]) == (base + 36, base + 37)
    assert len(tok) == base + 38
    ids = tok("[Human]: hi<eoh> [MMGPT]:").input_ids
    assert ids[0] == 1 and ids[1] == base


def test_demo_keyed_by_plugin_set(toy_env, monkeypatch, tmp_path):
    with_toy = ensure_demo(discover(), home=tmp_path)
    monkeypatch.setenv("ANYGPT_LOAD_PLUGINS", "__none__")
    without = ensure_demo(discover(), home=tmp_path)
    assert with_toy.model_dir != without.model_dir
