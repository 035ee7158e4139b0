"""The embedded demo: a tiny seeded LLaMA model in the published AnyGPT layout, built on first use.

The directory has the same files as `fnlp/AnyGPT-base` (SentencePiece `tokenizer.model`,
`added_tokens.json`, `tokenizer_config.json`, `special_tokens_map.json`, `config.json`,
`generation_config.json`, safetensors weights), so the loader that reads the published model reads
this one. Its vocabulary holds the role tokens and every installed modality's tokens in the canonical
order; plugins add tiny codec checkpoints through `anygpt_demo_assets`. Outputs are meaningless.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from anygpt_core.files import remove_stale
from anygpt_core.plugins import PluginSet
from anygpt_core.spec import ModalitySpec
from anygpt_core.tokens import ROLE_TOKENS

__all__ = [
    "DEMO_NOTICE",
    "DemoAssets",
    "anygpt_home",
    "ensure_demo",
    "write_demo_model",
    "write_extended_tokenizer",
]

logger = logging.getLogger(__name__)

DEMO_NOTICE = "Using the embedded demo model: its outputs are structurally valid but meaningless."
_FORMAT = "demo-v1"
#: The names of build folders (`tempfile.mkdtemp(prefix=".KEY-")`), renamed into place when done.
_STAGING = re.compile(r"^\.[0-9a-f]{16}-[A-Za-z0-9_]{8}$")
_SEED = 0


@dataclass(frozen=True)
class DemoAssets:
    """Where the demo lives: the LLM directory and the codec option values its plugins returned."""

    model_dir: Path
    options: dict[str, Any]


def anygpt_home() -> Path:
    """`$ANYGPT_HOME`, default `~/.cache/anygpt`."""
    return Path(os.environ.get("ANYGPT_HOME") or Path.home() / ".cache" / "anygpt").expanduser()


def ensure_demo(plugins: PluginSet, *, home: Path | None = None) -> DemoAssets:
    """Return the demo for the installed plugin set, building it first if needed (seconds)."""
    from anygpt_core import __version__

    root = (home or anygpt_home()) / "demo"
    key = hashlib.sha256(f"{_FORMAT};{__version__};{plugins.key()}".encode()).hexdigest()[:16]
    target = root / key
    manifest = target / "assets.json"
    if manifest.is_file():
        return _read_manifest(target)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(
        root, matches=lambda name: _STAGING.match(name) is not None
    )  # left by a build that was killed
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        options = _build(staging, plugins)
        (staging / "assets.json").write_text(
            json.dumps({"plugins": plugins.key(), "options": _relative(options, staging)}, indent=1)
        )
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: use its copy
            if not manifest.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _read_manifest(target)


def _relative(options: Mapping[str, Any], base: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in options.items():
        if (
            isinstance(value, str)
            and Path(value).is_absolute()
            and Path(value).is_relative_to(base)
        ):
            out[name] = {"relative": str(Path(value).relative_to(base))}
        else:
            out[name] = value
    return out


def _read_manifest(target: Path) -> DemoAssets:
    data = json.loads((target / "assets.json").read_text())
    options = {
        name: str(target / value["relative"]) if isinstance(value, dict) else value
        for name, value in data["options"].items()
    }
    return DemoAssets(target / "llm", options)


def _build(directory: Path, plugins: PluginSet) -> dict[str, Any]:
    import torch

    llm = directory / "llm"
    llm.mkdir()
    tokenizer_size = write_extended_tokenizer(
        _train_sentencepiece(plugins.modalities), llm, plugins.modalities
    )
    _write_model(llm, tokenizer_size, _byte_ids(llm))
    torch.manual_seed(_SEED)
    return plugins.demo_assets(directory / "codecs")


def _train_sentencepiece(specs: Mapping[str, ModalitySpec]) -> bytes:
    """A LLaMA-style SentencePiece BPE model (byte fallback, split digits) trained on a tiny corpus."""
    import sentencepiece as spm

    corpus = files("anygpt_core").joinpath("data/demo_corpus.txt").read_text(encoding="utf-8")
    lines = [line for line in corpus.splitlines() if line.strip()]
    for spec in specs.values():
        lines += list(spec.instructions.to_text) + list(spec.instructions.from_text)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=512,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def write_extended_tokenizer(
    sentencepiece_model: bytes, directory: Path, specs: Mapping[str, ModalitySpec]
) -> int:
    """Write a LLaMA tokenizer in the slow-tokenizer layout, extended in the canonical order.

    Added tokens: the four role tokens, then per modality its codes, start and end token, numbered
    after the SentencePiece vocabulary (REFERENCE.md §1). Returns the tokenizer's length.
    """
    import sentencepiece as spm

    base = spm.SentencePieceProcessor(model_proto=sentencepiece_model).get_piece_size()
    added = list(ROLE_TOKENS)
    for spec in specs.values():
        added += spec.token_strings()
    (directory / "tokenizer.model").write_bytes(sentencepiece_model)
    (directory / "added_tokens.json").write_text(
        json.dumps({tok: base + i for i, tok in enumerate(added)}, ensure_ascii=False), "utf-8"
    )
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    config = {
        "tokenizer_class": "LlamaTokenizer",
        **special,
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": 4096,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return base + len(added)


def _byte_ids(directory: Path) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    return [i for i in range(sp.get_piece_size()) if sp.is_byte(i) or sp.is_unknown(i)]


def write_demo_model(
    source: Path, directory: Path, *, hidden_size: int = 64, num_heads: int = 4
) -> Path:
    """A copy of the demo model directory `source` with another width, seeded like the demo.

    Same tokenizer files (so the same token ids), new weights of `hidden_size` with `num_heads`
    attention heads: vLLM's CPU attention needs head_dim 64 (hidden 128, 2 heads), the demo's is 16.
    Returns `directory` (created; it must not exist).
    """
    directory.mkdir(parents=True)
    for name in (
        "tokenizer.model",
        "added_tokens.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ):
        shutil.copyfile(source / name, directory / name)
    vocab = json.loads((source / "config.json").read_text())["vocab_size"]
    _write_model(
        directory, vocab, _byte_ids(directory), hidden_size=hidden_size, num_heads=num_heads
    )
    return directory


def _write_model(
    directory: Path,
    vocab_size: int,
    quiet_ids: list[int],
    *,
    hidden_size: int = 64,
    num_heads: int = 4,
) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(_SEED)
    model = LlamaForCausalLM(config)
    # A wider output layer than init's 0.02 gives peaked, seed-dependent distributions; zero rows
    # for byte-fallback pieces keep them out of top-k sampling, so demo text stays printable.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
        model.lm_head.weight[quiet_ids] = 0.0
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(directory, safe_serialization=True)
