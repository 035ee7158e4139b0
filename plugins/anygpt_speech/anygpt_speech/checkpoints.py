"""Finding checkpoint files (local path or hub id) and loading state dicts without pickled code."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.errors import CheckpointError, ConfigError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "HUB_REPO",
    "SOUNDSTORM_FILE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "load_json",
    "load_state_dict",
    "load_strict",
    "resolve_file",
]

logger = logging.getLogger(__name__)

#: The published speech modules and their layout inside the repository.
HUB_REPO = "fnlp/AnyGPT-speech-modules"
TOKENIZER_FILE = "speechtokenizer/ckpt.dev"
TOKENIZER_CONFIG_FILE = "speechtokenizer/config.json"
SOUNDSTORM_FILE = "soundstorm/speechtokenizer_soundstorm_mls.pt"

_SHOWN = 3  # mismatching keys named in one error line


def resolve_file(value: str | Path, filename: str, *, flag: str) -> Path:
    """A local file from a file path, a directory in the published layout, or a hub id.

    Args:
        value: a file; a directory holding `filename` (or its last component); or `owner/name`.
        filename: the file's path inside the published repository, e.g. `speechtokenizer/ckpt.dev`.
        flag: the command-line flag that gave `value`, named in errors.

    Raises:
        CheckpointError: nothing found, or a hub id absent from the local cache (and, when online,
            not downloadable).
    """
    text = str(value)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / filename, path / Path(filename).name):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{flag} {path}: no {filename} or {Path(filename).name} in it")
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise CheckpointError(f"{flag} {text}: no such file")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(text, filename, local_files_only=True))
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        if offline:
            raise CheckpointError(
                f"{flag} {text}: {filename} is not in the local Hugging Face cache (offline); "
                f"run `hf download {text}` or pass the file's path"
            ) from err
    try:
        return Path(hf_hub_download(text, filename))
    except Exception as err:
        raise CheckpointError(
            f"{flag} {text}: cannot get {filename} ({type(err).__name__}); pass the file's path"
        ) from err


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


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a flat state dict from `.safetensors` or a torch file, never running pickled code.

    Raises:
        CheckpointError: unreadable, needs pickled code, or not a flat mapping of names to tensors.
    """
    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = first_line(err)
        raise CheckpointError(
            f"{path}: not a loadable weights-only checkpoint ({reason[:160]})"
        ) from err
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: expected a flat state dict of named tensors")
    return dict(state)


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    path: Path,
    hint: str,
    assign: bool = False,
) -> None:
    """Copy `state` into `module`, requiring the same keys and shapes.

    Args:
        module: the freshly built model.
        state: the checkpoint's tensors.
        path: the checkpoint file, named in errors.
        hint: what to check when the keys differ (e.g. which config describes the model).
        assign: take the checkpoint's tensors as parameters (for a model built on the meta device).

    Raises:
        CheckpointError: one line naming the first missing, unexpected or mis-shaped keys.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if not problems:
        shapes = [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if tuple(state[k].shape) != tuple(v.shape)
        ]
        if shapes:
            problems.append(f"{len(shapes)} shape mismatches (file vs model: {_first(shapes)})")
    if problems:
        raise CheckpointError(f"{path}: does not match the model: {'; '.join(problems)}; {hint}")
    module.load_state_dict(state, strict=True, assign=assign)


def _first(items: list[str]) -> str:
    more = f", … {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more
