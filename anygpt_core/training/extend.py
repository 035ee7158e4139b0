"""Extend a LLaMA-family model with AnyGPT's role and modality tokens (REFERENCE.md §1, §8).

Tokens are appended in the canonical order: the role tokens, then per modality (by the `rank`
its spec declares, then by name) its codes, start and end token; tokens already in the vocabulary are
skipped, so extending an extended model keeps every existing id. New embedding rows start at the
mean of the old ones. A base with a SentencePiece `tokenizer.model` keeps the published slow layout
(`tokenizer.model`, `added_tokens.json`, `tokenizer_config.json`), so the result loads like
`fnlp/AnyGPT-base`; a base without one is saved with the tokenizer's own `save_pretrained`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anygpt_core.errors import CheckpointError, InputError
from anygpt_core.plugins import modality_order
from anygpt_core.spec import ModalitySpec
from anygpt_core.tokens import ROLE_TOKENS

__all__ = [
    "CHAT_TOKENS",
    "LLAMA_FAMILY",
    "ExtendResult",
    "check_base",
    "extend_model",
    "resize_embeddings",
    "tokens_for",
    "write_tokenizer",
]

logger = logging.getLogger(__name__)

#: Model types whose architecture and tokenizer the core's loader and loop support.
LLAMA_FAMILY = ("llama", "mistral")

#: Chat separators SFT adds after the modalities (REFERENCE.md §1.3).
CHAT_TOKENS = ("<-Res->", "<-Ins->")

_TOKENIZER_FILES = ("tokenizer.model", "special_tokens_map.json")


@dataclass(frozen=True)
class ExtendResult:
    """What `extend_model` did.

    Attributes:
        directory: the extended model's directory.
        added: the new tokens in the order they were numbered.
        present: how many of the requested tokens the base already had.
        vocab_size: the tokenizer's size afterwards (= embedding rows).
    """

    directory: Path
    added: list[str] = field(default_factory=list)
    present: int = 0
    vocab_size: int = 0


def tokens_for(specs: Iterable[ModalitySpec]) -> list[str]:
    """Role tokens, then each modality's codes, start and end, modalities in canonical order."""
    tokens = list(ROLE_TOKENS)
    for spec in modality_order({s.name: s for s in specs}.values()):
        tokens += spec.token_strings()
    return tokens


def check_base(name_or_path: str | Path) -> Path:
    """Resolve a base model directory and check it is a LLaMA-family causal LM, loading nothing.

    Raises:
        CheckpointError: no such model, an unreadable config.json, or another architecture.
    """
    from anygpt_core.loading import resolve_model_dir

    directory = resolve_model_dir(name_or_path)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{directory / 'config.json'}: not a readable JSON file ({err})"
        ) from err
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in LLAMA_FAMILY:
        raise CheckpointError(
            f"{directory}: model_type {model_type!r} is not LLaMA-family; AnyGPT extends "
            f"{', '.join(LLAMA_FAMILY)} models"
        )
    return directory


def _load_tokenizer(directory: Path) -> Any:  # noqa: ANN401 - a transformers tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"{directory}: cannot load its tokenizer ({first})") from err


def write_tokenizer(source: Path, target: Path, tokens: Sequence[str]) -> tuple[Any, list[str]]:
    """Write `source`'s tokenizer into `target` with the missing `tokens` appended, in order.

    Returns:
        The tokenizer loaded back from `target` and the tokens that were new.

    Raises:
        CheckpointError: the tokenizer cannot be loaded, or reloading it gives other ids.
    """
    tokenizer = _load_tokenizer(source)
    vocab: dict[str, int] = tokenizer.get_vocab()
    new = [t for t in dict.fromkeys(tokens) if t not in vocab]
    next_id = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    wanted = {**vocab, **{t: next_id + i for i, t in enumerate(new)}}
    target.mkdir(parents=True, exist_ok=True)
    if (source / "tokenizer.model").is_file():
        _write_slow_layout(source, target, tokenizer, wanted)
    else:
        for token in new:
            tokenizer.add_tokens(token)
        tokenizer.save_pretrained(target)
    reloaded = _load_tokenizer(target)
    got = reloaded.get_vocab()
    wrong = [t for t, i in wanted.items() if got.get(t) != i]
    if wrong:
        raise CheckpointError(
            f"{target}: tokenizer ids changed on reload ({wrong[0]!r}: {got.get(wrong[0])} != "
            f"{wanted[wrong[0]]})"
        )
    return reloaded, new


def _write_slow_layout(source: Path, target: Path, tokenizer: Any, wanted: dict[str, int]) -> None:  # noqa: ANN401
    import sentencepiece as spm

    pieces = spm.SentencePieceProcessor(model_file=str(source / "tokenizer.model")).get_piece_size()
    added = {t: i for t, i in sorted(wanted.items(), key=lambda kv: kv[1]) if i >= pieces}
    for name in _TOKENIZER_FILES:
        if (source / name).is_file() and source.resolve() != target.resolve():
            shutil.copyfile(source / name, target / name)
    (target / "tokenizer.json").unlink(missing_ok=True)  # it would shadow the new added tokens
    (target / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), "utf-8")
    config_path = source / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
    else:
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "unk_token": tokenizer.unk_token,
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": True,
        }
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):  # newer layouts list added tokens here too: keep both in step
        for token, index in added.items():
            decoder.setdefault(
                str(index),
                {
                    "content": token,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": False,
                },
            )
    (target / "tokenizer_config.json").write_text(
        json.dumps(config, indent=1, ensure_ascii=False), "utf-8"
    )


def resize_embeddings(model: Any, size: int, first_new: int) -> None:  # noqa: ANN401
    """Grow the embeddings to `size` rows; rows from `first_new` on get the mean of those before."""
    import torch

    rows = model.get_input_embeddings().weight.shape[0]
    if size > rows:
        model.resize_token_embeddings(size, mean_resizing=False)
    if first_new >= size:
        return
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    with torch.no_grad():
        for layer in {id(x): x for x in layers if x is not None}.values():
            weight = layer.weight
            weight[first_new:size] = weight[:first_new].float().mean(0).to(weight.dtype)


def extend_model(
    base: str | Path, out: Path, specs: Sequence[ModalitySpec], *, extra_tokens: Sequence[str] = ()
) -> ExtendResult:
    """Add role and modality tokens to a base model and save it in `out` (safetensors).

    Args:
        base: a LLaMA-family model directory or hub id (cached locally).
        out: a new or empty directory.
        specs: the modalities to add (their order does not matter: canonical order is applied).
        extra_tokens: further tokens appended last (e.g. `CHAT_TOKENS`).

    Raises:
        CheckpointError: the base is missing, unreadable or not LLaMA-family.
        InputError: `out` is a non-empty directory or a file.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty directory; choose a new one")
    directory = check_base(base)
    created = not out.exists()
    try:
        return _extend(directory, out, [*tokens_for(specs), *extra_tokens])
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _extend(directory: Path, out: Path, tokens: list[str]) -> ExtendResult:
    from anygpt_core.loading import load_causal_lm

    model = load_causal_lm(directory, dtype="auto")  # a bad base fails before anything is written
    tokenizer, new = write_tokenizer(directory, out, tokens)
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    first_new = min((vocab[t] for t in new), default=size)
    resize_embeddings(model, max(size, model.get_input_embeddings().weight.shape[0]), first_new)
    model.save_pretrained(out)
    logger.info("added %d tokens to %s (vocabulary %d)", len(new), directory, size)
    return ExtendResult(out, new, len(dict.fromkeys(tokens)) - len(new), size)
