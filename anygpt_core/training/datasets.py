"""Training examples: pretraining pairs and conversations, checked up front, tokenized on access.

Pretraining (REFERENCE.md §2, §8): each `{"text": …, "<modality>": "<so…>…<eo…>"}` line becomes
`[Human]: {instruction} {span}<eoh> [MMGPT]: {text}<eos>` (modality -> text) or
`[Human]: {instruction} This is input: {text}<eoh> [MMGPT]: {span}<eos>` (text -> modality), the
direction and phrasing drawn per example from an RNG seeded by (seed, index); the loss covers every
token. SFT: `{"conversation": [{"role": "user", "message": …}, …]}` rendered with a chat
template; the loss covers only the assistant replies and their end tokens, found from the
tokenizer's character offsets of the rendered text.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anygpt_core.errors import InputError
from anygpt_core.prompts import ChatTemplate, Direction, from_text_prompt, to_text_prompt
from anygpt_core.spec import ModalitySpec

__all__ = [
    "IGNORE",
    "ChatDataset",
    "PretrainDataset",
    "assistant_ranges",
    "collate",
    "collate_packed",
    "read_examples",
]

logger = logging.getLogger(__name__)

#: Label of tokens without loss.
IGNORE = -100


@dataclass(frozen=True)
class _Line:
    path: Path
    offset: int
    number: int


def read_examples(
    paths: Sequence[Path], kind: str, modalities: Mapping[str, ModalitySpec]
) -> tuple[list[_Line], set[str]]:
    """Check every line of the training files and index them by byte offset.

    Args:
        paths: JSONL files.
        kind: `pretrain` (text + one modality span) or `sft` (conversations).
        modalities: the installed modalities.

    Returns:
        The line index and the modalities the data uses.

    Raises:
        InputError: a missing file or a bad line, named by file and line number.
    """
    lines: list[_Line] = []
    used: set[str] = set()
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such training file")
        with Path(path).open("rb") as handle:
            offset = 0
            for number, raw in enumerate(handle, 1):
                if raw.strip():
                    where = f"{path} line {number}"
                    used |= _check(_parse(raw, where), kind, modalities, where)
                    lines.append(_Line(Path(path), offset, number))
                offset += len(raw)
    if not lines:
        raise InputError(f"{', '.join(map(str, paths))}: no training examples")
    return lines, used


def _parse(raw: bytes, where: str) -> dict[str, Any]:
    try:
        item = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{where}: not JSON ({err})") from err
    if not isinstance(item, dict):
        raise InputError(f"{where}: not a JSON object")
    return item


def _turns(item: dict[str, Any]) -> Any:  # noqa: ANN401 - raw JSON
    turns = item.get("conversation")
    if isinstance(turns, list) and len(turns) == 1 and isinstance(turns[0], list):
        return turns[0]  # the reference's sample file nests the turns one level deeper
    return turns


def _check(
    item: dict[str, Any], kind: str, modalities: Mapping[str, ModalitySpec], where: str
) -> set[str]:
    if kind == "sft":
        turns = _turns(item)
        if not isinstance(turns, list) or len(turns) < 2:
            raise InputError(f"{where}: expected a 'conversation' with user and assistant messages")
        for i, turn in enumerate(turns):
            role = "user" if i % 2 == 0 else "assistant"
            if not isinstance(turn, dict) or turn.get("role") != role or not turn.get("message"):
                raise InputError(f"{where}: message {i + 1} must be a non-empty {role} message")
        return {n for n, s in modalities.items() if any(s.start in t["message"] for t in turns)}
    if "conversation" in item:
        raise InputError(
            f"{where}: a conversation; pretraining needs text + modality pairs (use sft)"
        )
    keys = [k for k in item if k not in {"text", "id"}]
    if not isinstance(item.get("text"), str) or len(keys) != 1:
        raise InputError(f"{where}: expected 'text' and exactly one modality key")
    name = keys[0]
    if name not in modalities:
        known = ", ".join(modalities) or "none"
        raise InputError(f"{where}: unknown modality {name!r} (installed: {known})")
    span, spec = item[name], modalities[name]
    if not isinstance(span, str) or not (span.startswith(spec.start) and span.endswith(spec.end)):
        raise InputError(
            f"{where}: {name} must be a span {spec.start}…{spec.end} (run anygpt data prepare)"
        )
    return {name}


def _read(line: _Line) -> dict[str, Any]:
    with line.path.open("rb") as handle:
        handle.seek(line.offset)
        item: dict[str, Any] = json.loads(handle.readline())
    return item


class PretrainDataset:
    """Modality <-> text pairs rendered with the reference's pretraining templates.

    Args:
        lines: from `read_examples(..., "pretrain", ...)`.
        tokenizer: the model's tokenizer (adds `<s>`).
        phrasings: `(modality, "to_text" | "from_text")` -> instruction sentences.
        max_length: tokens per example (`</s>` is appended when there is room).
        seed: with the index, seeds the direction and the phrasing of each example.
        x2t_probability: chance of the modality -> text direction.
    """

    def __init__(
        self,
        lines: list[_Line],
        tokenizer: Any,  # noqa: ANN401 - a transformers tokenizer
        phrasings: Mapping[tuple[str, Direction], Sequence[str]],
        *,
        max_length: int,
        seed: int,
        x2t_probability: float = 0.5,
    ) -> None:
        self.lines = lines
        self.tokenizer = tokenizer
        self.phrasings = phrasings
        self.max_length = max_length
        self.seed = seed
        self.x2t_probability = x2t_probability

    def __len__(self) -> int:
        return len(self.lines)

    def render(self, index: int) -> str:
        """The training text of example `index` (deterministic for a given seed)."""
        item = _read(self.lines[index])
        name = next(k for k in item if k not in {"text", "id"})
        rng = random.Random(f"{self.seed}:{index}")
        if rng.random() < self.x2t_probability:
            instruction = rng.choice(self.phrasings[(name, "to_text")])
            return f"{to_text_prompt(instruction, item[name])} {item['text']}<eos>"
        instruction = rng.choice(self.phrasings[(name, "from_text")])
        return f"{from_text_prompt(instruction, item['text'])} {item[name]}<eos>"

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        ids = self.tokenizer(
            self.render(index), truncation=True, max_length=self.max_length
        ).input_ids
        eos = self.tokenizer.eos_token_id
        if eos is not None and len(ids) < self.max_length:
            ids = [*ids, eos]
        return {"input_ids": ids, "labels": list(ids)}


def assistant_ranges(
    template: ChatTemplate, messages: Sequence[str]
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the character range of each assistant reply.

    A range covers ` {reply}{bot_end}` after `{bot}:`: the loss learns the reply and where it ends.
    """
    pairs = [("", m) for m in messages]
    text = template.render(pairs)
    ranges = []
    for i in range(1, len(messages), 2):
        end = len(template.render(pairs[: i + 1]))
        piece = f" {messages[i]}{template.bot_end}"
        if (
            not text.startswith(template.render(pairs[: i + 1]))
            or text[end - len(piece) : end] != piece
        ):
            raise InputError(
                f"chat template {template.bot!r}: reply {i // 2 + 1} is not where expected"
            )
        ranges.append((end - len(piece), end))
    return text, ranges


class ChatDataset:
    """Conversations with labels only on the assistant replies.

    Args:
        lines: from `read_examples(..., "sft", ...)`.
        tokenizer: the model's tokenizer; must give character offsets (a fast tokenizer).
        template: the chat template.
        max_length: tokens per example (longer ones are cut at the end).
    """

    def __init__(
        self,
        lines: list[_Line],
        tokenizer: Any,  # noqa: ANN401 - a transformers tokenizer
        template: ChatTemplate,
        *,
        max_length: int,
    ) -> None:
        self.lines = lines
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        turns = _turns(_read(self.lines[index]))
        text, ranges = assistant_ranges(self.template, [t["message"] for t in turns])
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        ids = list(encoded.input_ids)
        labels = []
        for token, (start, end) in zip(ids, encoded.offset_mapping, strict=True):
            inside = end > start and any(a <= start and end <= b for a, b in ranges)
            labels.append(token if inside else IGNORE)
        window = _window(labels, self.max_length)
        if window.start:
            line = self.lines[index]
            logger.warning(
                "%s line %d: the first reply ends after %d tokens; training on tokens %d-%d",
                line.path,
                line.number,
                self.max_length,
                window.start,
                window.stop,
            )
        return {"input_ids": ids[window], "labels": labels[window]}


def _window(labels: list[int], max_length: int) -> slice:
    """The tokens an example keeps: the first `max_length`, or those ending with the first reply.

    The second case is for a first user turn longer than `max_length`: keeping the head would
    leave no label, and a batch without labels has a NaN loss.
    """
    if len(labels) <= max_length or any(x != IGNORE for x in labels[:max_length]):
        return slice(0, max_length)
    first = next(i for i, x in enumerate(labels) if x != IGNORE)
    end = next((i for i in range(first, len(labels)) if labels[i] == IGNORE), len(labels))
    return slice(max(0, end - max_length), end)


def collate(features: list[dict[str, list[int]]], *, pad_id: int) -> dict[str, Any]:
    """Right-pad a batch: input_ids, attention_mask and labels int64 [B, longest]."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        ids[row, :n] = torch.tensor(feature["input_ids"])
        labels[row, :n] = torch.tensor(feature["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_packed(features: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Join a batch into one row without padding: int64 [1, total] input_ids, labels, position_ids.

    Position ids restart at 0 for each example; from them transformers builds a block-diagonal
    causal mask (with no attention_mask and no cache), so no example attends to another: the loss
    equals that of the padded batch (tested). The first label of each example is ignored, as the
    last token of the one before must not learn to predict it.
    """
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for feature in features:
        n = len(feature["input_ids"])
        ids += feature["input_ids"]
        labels += [IGNORE, *feature["labels"][1:]] if n else []
        positions += range(n)
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "use_cache": False,  # a cache would switch the packed mask off
    }
