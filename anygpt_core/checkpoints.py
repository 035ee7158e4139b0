"""Checkpoints for the core and every plugin: where they are, how they are read, whether they fit.

- `resolve_checkpoint`: a local file or folder, or a hub id `owner/name[@revision]`, looked up in
  the local Hugging Face cache first and downloaded unless `HF_HUB_OFFLINE` is set.
- `read_state_dict`: tensors from safetensors or a weights-only torch pickle (no pickled code runs),
  unwrapping the usual `{"state_dict": ...}` / `{"model": ...}` wrappers.
- `check_state_dict`: the checkpoint's keys and shapes against the model's, one error line.

Every failure is a `CheckpointError` of one line naming the file and what to do.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.errors import CheckpointError, first_line

if TYPE_CHECKING:
    import torch

__all__ = [
    "WEIGHT_FILES",
    "check_state_dict",
    "hub_offline",
    "mismatch_error",
    "read_state_dict",
    "resolve_checkpoint",
    "split_revision",
]

logger = logging.getLogger(__name__)

#: Weight files looked for, in this order, when a folder is given where a file is read.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

#: Wrappers that training scripts put around a state dict, unwrapped in this order.
_WRAPPERS = ("state_dict", "model")

_SHOWN = 3  # keys named per problem in one error line


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` forbids downloads."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def split_revision(value: str) -> tuple[str, str | None]:
    """`owner/name@revision` -> (`owner/name`, `revision`); no `@` -> (value, None)."""
    if "@" in value:
        repo_id, revision = value.rsplit("@", 1)
        return repo_id, revision or None
    return value, None


def _is_hub_id(repo_id: str) -> bool:
    """`owner/name`, unless the owner is a local folder: then it is a path that does not exist."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return False
    return not Path(repo_id).parent.is_dir()


def resolve_checkpoint(
    value: str | Path,
    *,
    flag: str,
    filename: str | None = None,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """A local path from an option value: a file, a folder, or a hub id `owner/name[@revision]`.

    Args:
        value: the option value as the user gave it.
        flag: the option that gave it, named before the value in errors (e.g.
            `--speech-tokenizer-path`); empty where the value comes from more than one place.
        filename: the file wanted, as laid out in the published repository (e.g.
            `speechtokenizer/ckpt.dev`); a folder then must hold it or its last component, and a
            hub id fetches that file alone. None: a folder (or a file) is wanted as given, and a
            hub id fetches a snapshot.
        revision: the hub revision when `value` names none.
        allow_patterns: files a snapshot fetches (default: all).

    Returns:
        An existing file (with `filename`, or a file given as such) or folder.

    Raises:
        CheckpointError: nothing there, a folder without `filename`, or a hub id that is neither
            cached nor downloadable (one message when offline).
    """
    text = str(value)
    named = f"{flag} {text}" if flag else text
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if filename is None:
            return path
        for candidate in (path / filename, path / Path(filename).name):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{named}: no {filename} in this folder")
    repo_id, given_revision = split_revision(text)
    if not _is_hub_id(repo_id):
        raise CheckpointError(f"{named}: no such file or folder")
    command = f"hf download {repo_id}" + (f" --revision {given_revision}" if given_revision else "")
    revision = given_revision or revision
    what = f"{filename} is not" if filename else "not"
    try:
        return _from_hub(repo_id, filename, revision, allow_patterns, local_files_only=True)
    except Exception as err:  # huggingface_hub raises many types for "not cached"
        if hub_offline():
            raise CheckpointError(
                f"{named}: {what} in the local Hugging Face cache (offline); run "
                f"`{command}` where there is network, or pass a local path"
            ) from err
    try:
        return _from_hub(repo_id, filename, revision, allow_patterns, local_files_only=False)
    except Exception as err:  # network, authentication, missing repository or file
        raise CheckpointError(
            f"{named}: {what} in the local Hugging Face cache and the download "
            f"failed ({type(err).__name__}); pass a local path"
        ) from err


def _from_hub(
    repo_id: str,
    filename: str | None,
    revision: str | None,
    allow_patterns: Sequence[str] | None,
    *,
    local_files_only: bool,
) -> Path:
    if filename is not None:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_files_only)
        )
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns) if allow_patterns is not None else None
    folder = snapshot_download(
        repo_id, revision=revision, allow_patterns=patterns, local_files_only=local_files_only
    )
    return Path(folder)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from safetensors, a weights-only torch pickle, or a folder holding one.

    A folder is searched for `WEIGHT_FILES`. Pickles are read with `torch.load(weights_only=True)`
    (memory-mapped when in torch's zip format), so no code in them runs. A state dict wrapped in
    `{"state_dict": ...}` or `{"model": ...}` (Lightning, LAVIS) is unwrapped.

    Raises:
        CheckpointError: no weights file, an empty, unreadable or pickled-code file, or not a
            flat mapping of names to tensors.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise CheckpointError(f"{path}: no {' or '.join(WEIGHT_FILES)} in this folder")
        path = found[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path))
        else:
            mmap = zipfile.is_zipfile(path)  # torch's legacy format cannot be memory-mapped
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # pickle, zip, torch and safetensors each raise their own types
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(err)})") from err
    for wrapper in _WRAPPERS:
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise CheckpointError(f"{path}: expected a flat state dict of named tensors")
    logger.debug("read %d tensors from %s", len(data), path)
    return dict(data)


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    source: str | Path,
    what: str,
    optional: Callable[[str], bool] | None = None,
    ignore_unexpected: bool = False,
    hint: str = "",
) -> None:
    """Require the checkpoint's tensors to be the model's: same keys, same shapes.

    Args:
        state: tensors read from the checkpoint, already renamed to the model's names.
        expected: the model's own state dict (a model on the meta device will do).
        source: the checkpoint as the user named it.
        what: the model, e.g. `the SEED-2 model`, named in the error.
        optional: keys the model may lack from the file (e.g. training-only buffers).
        ignore_unexpected: log keys the model does not know instead of refusing them.
        hint: what to check, appended to the error.

    Raises:
        CheckpointError: see `mismatch_error`.
    """
    missing = [k for k in expected if k not in state and not (optional and optional(k))]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if unexpected and ignore_unexpected:
        logger.info(
            "%s: ignoring %d keys %s does not use (e.g. %s)",
            source,
            len(unexpected),
            what,
            unexpected[0],
        )
        unexpected = []
    if missing or unexpected or shapes:
        raise mismatch_error(
            source, what=what, missing=missing, unexpected=unexpected, shapes=shapes, hint=hint
        )


def mismatch_error(
    source: str | Path,
    *,
    what: str,
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
    shapes: Sequence[str] = (),
    hint: str = "",
) -> CheckpointError:
    """The one error line for weights that do not fit a model.

    `{source}: does not match {what}: 2 missing keys (a, b); 1 unexpected key (c); 1 shape mismatch
    (file vs model: d (3,) vs (4,)); {hint}`, naming at most three keys per problem.
    """
    problems = [
        _count(missing, "missing key"),
        _count(unexpected, "unexpected key"),
        _count(shapes, "shape mismatch", "file vs model: "),
    ]
    found = "; ".join(p for p in problems if p)
    tail = f"; {hint}" if hint else ""
    return CheckpointError(f"{source}: does not match {what}: {found}{tail}")


def _count(items: Sequence[str], noun: str, lead: str = "") -> str:
    if not items:
        return ""
    plural = noun if len(items) == 1 else f"{noun}es" if noun.endswith("ch") else f"{noun}s"
    more = f", … {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    shown = ", ".join(items[:_SHOWN])
    return f"{len(items)} {plural} ({lead}{shown}{more})"
