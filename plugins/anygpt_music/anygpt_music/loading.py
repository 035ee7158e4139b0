"""Find EnCodec checkpoints (folder, file or hub id); read them without running pickled code."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.errors import CheckpointError, first_line

if TYPE_CHECKING:
    import torch

__all__ = [
    "HUB_FILES",
    "read_config",
    "read_state_dict",
    "resolve_checkpoint",
    "split_revision",
]

logger = logging.getLogger(__name__)

#: Files of a transformers-layout EnCodec repository that loading needs (weights in either format).
HUB_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def split_revision(value: str, default_revision: str | None) -> tuple[str, str | None]:
    """Split `owner/name@revision` into the repository id and its revision."""
    if "@" in value:
        repo_id, revision = value.rsplit("@", 1)
        return repo_id, revision or default_revision
    return value, default_revision


def resolve_checkpoint(value: str | Path, *, flag: str, default_revision: str | None) -> Path:
    """Turn an option value into a local path: an existing file or folder, else a hub id.

    A hub id (`owner/name`, optionally `@revision`) is looked up in the local Hugging Face cache
    and, unless `HF_HUB_OFFLINE=1`, downloaded.

    Args:
        value: the option value as the user gave it.
        flag: the command-line flag, named in errors.
        default_revision: the revision used when the value names none.

    Raises:
        CheckpointError: the path does not exist and is not an available hub repository.
    """
    path = Path(value).expanduser()
    if path.exists():
        return path
    text = str(value)
    repo_id, revision = split_revision(text, default_revision)
    if text.startswith((".", "/", "~")) or repo_id.count("/") != 1:
        raise CheckpointError(f"{text}: no such file or folder ({flag} takes a folder or a hub id)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES[:2]))
        if not (Path(folder) / HUB_FILES[1]).is_file():  # an older repository: pickled weights only
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(HUB_FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{repo_id}: not in the local Hugging Face cache and not downloadable here; run "
            f"`hf download {repo_id}` where there is network, or pass {flag} DIR with "
            f"{', '.join(HUB_FILES[:2])}"
        ) from err
    return Path(folder)


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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file, a folder holding one, or a plain torch state dict.

    Pickled files are read with `torch.load(weights_only=True)`, so no code in them runs.

    Raises:
        CheckpointError: no weights file, or one that is unreadable or not a flat dict of tensors.
    """
    import torch

    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(
                f"{path}: no model.safetensors or pytorch_model.bin in this folder"
            )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = first_line(err)
        raise CheckpointError(f"{path}: not a readable weights file ({reason})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a flat dict of tensors")
    logger.debug("read %d tensors from %s", len(state), path)
    return dict(state)
