"""Prompt templates (byte for byte as the reference's) and seeded instruction phrasings."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from anygpt_core.errors import ConfigError, InputError
from anygpt_core.spec import ModalitySpec

__all__ = [
    "ANYGPT_CHAT",
    "MMGPT_CHAT",
    "ChatTemplate",
    "InstructionBank",
    "custom_prompt",
    "from_text_prompt",
    "to_text_prompt",
]

USER, BOT, USER_END, BOT_END = "[Human]", "[MMGPT]", "<eoh>", "<eos>"


def to_text_prompt(instruction: str, modality_string: str) -> str:
    """Base-model prompt for modality -> text: `[Human]: {instruction} {span}<eoh> [MMGPT]:`."""
    return f"{USER}: {instruction} {modality_string}{USER_END} {BOT}:"


def from_text_prompt(instruction: str, text: str) -> str:
    """Base-model prompt for text -> modality: `… This is input: {text}<eoh> [MMGPT]:`."""
    return f"{USER}: {instruction} This is input: {text}{USER_END} {BOT}:"


def custom_prompt(text: str) -> str:
    """The reference's customised-instruction prompt, used for text -> text: `[Human]: {s}<eoh>[MMGPT]: `."""
    return f"{USER}: {text}{USER_END}{BOT}: "


@dataclass(frozen=True)
class ChatTemplate:
    """A FastChat-style two-role template (REFERENCE.md §7)."""

    system: str
    user: str
    bot: str
    user_end: str
    bot_end: str

    def render(self, messages: Sequence[tuple[str, str]], *, keep_empty: bool = False) -> str:
        """Render `(role, message)` pairs (roles alternate, user first); ends with `bot:` after a user turn.

        An empty message leaves its role open (`[MMGPT]:`), FastChat's rule, which training
        follows; with `keep_empty` it is closed like any other (`[MMGPT]: <eos>`), as a chat's
        history holds an empty answer.
        """
        out = self.system + "\n"
        for i, (_, message) in enumerate(messages):
            role = self.user if i % 2 == 0 else self.bot
            if not message and not keep_empty:
                out += role + ":"
            elif i % 2 == 0:
                out += f"{role}: {message}{self.user_end}\n"
            else:
                out += f"{role}: {message}{self.bot_end}"
                if i != len(messages) - 1:
                    out += "\n"
        if messages and len(messages) % 2 == 1:
            out += self.bot + ":"
        return out


MMGPT_CHAT = ChatTemplate(
    system=(
        "You are an AI assistant named MMGPT who can understand and generate multimodal content, "
        "including text, speech, images and audio."
    ),
    user=USER,
    bot=BOT,
    user_end=USER_END,
    bot_end=BOT_END,
)

ANYGPT_CHAT = ChatTemplate(
    system=(
        "You are an AI assistant named AnyGPT who can understand and generate multimodal content, "
        "including text, speech, images and audio."
    ),
    user=USER,
    bot="[AnyGPT]",
    user_end=USER_END,
    bot_end="<eom>",
)

Direction = Literal["to_text", "from_text"]
_FILE_KEYS: dict[str, Direction] = {"other2text": "to_text", "text2other": "from_text"}


@dataclass
class InstructionBank:
    """Instruction phrasings per modality and direction, chosen with a seeded RNG.

    By default each modality's own phrasings (`ModalitySpec.instructions`); a user file in the
    reference's layout `{"other2text": {"speech": [...]}, "text2other": {...}}` replaces the lists it
    names, so a published model can be prompted with the sentences it was trained on.
    """

    lists: dict[tuple[str, Direction], list[str]] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_specs(
        cls, specs: Mapping[str, ModalitySpec], *, seed: int | None = None, path: Path | None = None
    ) -> InstructionBank:
        """Build from the modalities' phrasings, optionally overridden by a user JSON file."""
        lists: dict[tuple[str, Direction], list[str]] = {}
        for name, spec in specs.items():
            lists[(name, "to_text")] = list(spec.instructions.to_text)
            lists[(name, "from_text")] = list(spec.instructions.from_text)
        if path is not None:
            lists.update(_read_instruction_file(Path(path)))
        return cls(lists, random.Random(seed))

    def choose(self, modality: str, direction: Direction) -> str:
        """One phrasing for `modality` in `direction`, drawn from the bank's RNG."""
        options = self.lists.get((modality, direction))
        if not options:
            raise ConfigError(f"no instruction phrasings for {modality} ({direction})")
        return self.rng.choice(options)


def _read_instruction_file(path: Path) -> dict[tuple[str, Direction], list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such instructions file") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON file ({err})") from err
    except RecursionError as err:
        raise InputError(f"{path}: JSON nested too deeply") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object with 'other2text' and/or 'text2other'")
    unknown = sorted(set(data) - set(_FILE_KEYS) - {"source"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; expected 'other2text', 'text2other'"
        )
    lists: dict[tuple[str, Direction], list[str]] = {}
    for key, direction in _FILE_KEYS.items():
        section = data.get(key, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: {key} must map modality names to lists of sentences")
        for modality, sentences in section.items():
            if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
                raise ConfigError(f"{path}: {key}.{modality} must be a list of strings")
            if sentences:
                lists[(modality, direction)] = sentences
    return lists
