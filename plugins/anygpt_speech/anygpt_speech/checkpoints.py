"""The published speech modules' layout, and their JSON configs.

Finding, reading and checking the checkpoints themselves is in `anygpt_core.checkpoints`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anygpt_core.errors import ConfigError, first_line

__all__ = [
    "HUB_REPO",
    "SOUNDSTORM_FILE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "load_json",
]

#: The published speech modules and their layout inside the repository.
HUB_REPO = "fnlp/AnyGPT-speech-modules"
TOKENIZER_FILE = "speechtokenizer/ckpt.dev"
TOKENIZER_CONFIG_FILE = "speechtokenizer/config.json"
SOUNDSTORM_FILE = "soundstorm/speechtokenizer_soundstorm_mls.pt"


def load_json(path: Path, *, flag: str) -> dict[str, Any]:
    """Read a JSON object.

    Raises:
        ConfigError: missing, unreadable, not JSON or not an object.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{flag} {path}: no such file") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        reason = first_line(err)
        raise ConfigError(f"{flag} {path}: not a readable JSON file ({reason})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{flag} {path}: expected a JSON object")
    return data
