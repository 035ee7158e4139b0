"""Find EnCodec checkpoints (folder, file or hub id) and read their config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anygpt_core.checkpoints import resolve_checkpoint
from anygpt_core.errors import CheckpointError

__all__ = [
    "HUB_FILES",
    "read_config",
    "resolve_encodec",
]

#: Files of a transformers-layout EnCodec repository that loading needs (weights in either format).
HUB_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def resolve_encodec(value: str | Path, *, flag: str, default_revision: str | None) -> Path:
    """A local EnCodec file or folder from an option value or a hub id `owner/name[@revision]`.

    A snapshot fetches `config.json` and `model.safetensors`, and `pytorch_model.bin` only for a
    repository without the former.

    Raises:
        CheckpointError: see `anygpt_core.checkpoints.resolve_checkpoint`.
    """
    path = resolve_checkpoint(
        value, flag=flag, revision=default_revision, allow_patterns=HUB_FILES[:2]
    )
    if path.is_dir() and not (path / HUB_FILES[1]).is_file():  # pickled weights only
        path = resolve_checkpoint(
            value, flag=flag, revision=default_revision, allow_patterns=HUB_FILES
        )
    return path


def read_config(folder: Path) -> dict[str, Any]:
    """Read `config.json` of a transformers-layout EnCodec folder.

    Raises:
        CheckpointError: the file is missing, unreadable or not an EnCodec config.
    """
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(
            f"{folder}: no config.json (expected a transformers EnCodec folder)"
        ) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict) or data.get("model_type") != "encodec":
        raise CheckpointError(f"{path}: not an EnCodec config (model_type must be 'encodec')")
    return data
