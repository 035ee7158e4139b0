from __future__ import annotations

import json

import pytest

from anygpt_core.tokenization import ReferencePromptEncoder

# Golden pieces: transformers 4.34.1's slow LlamaTokenizer (the reference's pin) loaded from the
# text-only demo model directory, once with "legacy": true (4.34's default) and once with false.
# Made with `LlamaTokenizer.from_pretrained(dir)(prompt)` in a venv holding transformers==4.34.1.
PROMPTS = [
    "[Human]: Tell me a story.<eoh> [MMGPT]:",
    "[Human]: hi<eoh>[MMGPT]: ",
    "You are an assistant.\n[Human]: Hi<eoh>\n[MMGPT]: Hello<eos>\n[Human]:  two  spaces<eoh>\n[MMGPT]:",
]
# Each entry is the token strings joined by single spaces (no piece holds a space).
GOLDEN = {
    "t_true": [
        "<s> [Human] ▁ : ▁T ell ▁me ▁a ▁s t or y . <eoh> ▁ ▁ [MMGPT] ▁ :",
        "<s> [Human] ▁ : ▁ hi <eoh> [MMGPT] ▁ : ▁",
        "<s> ▁ <0x59> ou ▁are ▁an ▁as s is t an t . <0x0A> [Human] ▁ : ▁H i <eoh> ▁ <0x0A> [MMGPT] ▁ : ▁H ell o <eos> ▁ <0x0A> [Human] ▁ : ▁ ▁t w o ▁ ▁s p ac es <eoh> ▁ <0x0A> [MMGPT] ▁ :",
    ],
    "t_false": [
        "<s> ▁ [Human] : ▁T ell ▁me ▁a ▁s t or y . <eoh> ▁ [MMGPT] :",
        "<s> ▁ [Human] : ▁ hi <eoh> [MMGPT] : ▁",
        "<s> ▁ <0x59> ou ▁are ▁an ▁as s is t an t . <0x0A> [Human] : ▁H i <eoh> <0x0A> [MMGPT] : ▁H ell o <eos> <0x0A> [Human] : ▁ ▁t w o ▁ ▁s p ac es <eoh> <0x0A> [MMGPT] :",
    ],
}


@pytest.fixture
def demo_dir(text_only_env):
    from anygpt_core.demo import ensure_demo
    from anygpt_core.plugins import discover

    return ensure_demo(discover()).model_dir


def with_legacy(demo_dir, tmp_path, legacy):
    """A copy of the demo's tokenizer files whose tokenizer_config.json says `legacy`."""
    import shutil

    directory = tmp_path / "tok"
    shutil.copytree(demo_dir, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}))
    return directory


def golden(legacy, index):
    return GOLDEN["t_true" if legacy else "t_false"][index].split(" ")


@pytest.mark.parametrize("legacy", [True, False])
def test_prompts_tokenize_as_transformers_4_34(demo_dir, tmp_path, legacy):
    from transformers import AutoTokenizer

    directory = with_legacy(demo_dir, tmp_path, legacy)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    encoder = ReferencePromptEncoder.from_directory(directory, tokenizer)
    for index, prompt in enumerate(PROMPTS):
        ids = encoder.encode(prompt)[0].tolist()
        assert tokenizer.convert_ids_to_tokens(ids) == golden(legacy, index)


def test_transformers_5_alone_differs_which_is_why_this_exists(demo_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_dir)  # the demo says "legacy": true
    ids = tokenizer(PROMPTS[0]).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) != golden(True, 0)


def test_the_api_uses_the_reference_encoding(text_only_env):
    from anygpt_core.api import AnyGPT

    gpt = AnyGPT.load(device="cpu")
    ids = gpt.encode_prompt(PROMPTS[0])[0].tolist()
    assert gpt.tokenizer.convert_ids_to_tokens(ids) == golden(True, 0)


def test_without_a_sentencepiece_model_there_is_no_reference_encoder(tmp_path):
    assert ReferencePromptEncoder.from_directory(tmp_path, tokenizer=None) is None


@pytest.mark.parametrize("legacy", [True, False])
def test_offsets_point_at_the_text_of_each_token(demo_dir, tmp_path, legacy):
    from transformers import AutoTokenizer

    from anygpt_core.tokenization import ReferenceTokenizer

    directory = with_legacy(demo_dir, tmp_path, legacy)
    tokenizer = ReferenceTokenizer.wrap(directory, AutoTokenizer.from_pretrained(directory))
    text = PROMPTS[2]
    encoded = tokenizer(text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert tokens == golden(legacy, 2)
    for token, (start, end) in zip(tokens, encoded.offset_mapping, strict=True):
        if token in {"[Human]", "[MMGPT]", "<eoh>", "<eos>"}:
            assert text[start:end] == token
        elif token.startswith("▁") and len(token) > 1 and end > start:
            assert text[start:end].strip() == token[1:]
    assert tokenizer(text, truncation=True, max_length=5).input_ids == encoded.input_ids[:5]
