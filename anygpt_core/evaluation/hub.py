"""Evaluation data from the Hugging Face hub: `--data TASK=OWNER/NAME[@REVISION][:FOLDER]`.

A `--data` value that is not an existing path and reads as a hub id is loaded with the `datasets`
library (`load_dataset`): from its local cache, downloaded when there is a network. A task maps the
rows to its samples (`EvalTask.load_hub`); this module holds what every task shares: telling a hub id
from a path, loading one split with its media left undecoded (so no audio or image decoder of
`datasets` is needed), and writing a row's media to a file a task can hand to the model.

`:FOLDER` names local media that a hub data set only refers to: the COCO images of
`yerevann/coco-karpathy`'s rows, the MusicCaps clips `google/MusicCaps` lists but does not hold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.errors import CheckpointError, InputError, first_line
from anygpt_core.tasks import atomic_write

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["HubData", "column", "hub_data", "load_split", "media_file"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class HubData:
    """A data set on the hub, as a `--data` value names it.

    Attributes:
        repo_id: `owner/name`.
        revision: a branch, tag or commit (`@REVISION`); None for the default branch.
        folder: local media the rows refer to (`:FOLDER`), None if not given.
    """

    repo_id: str
    revision: str | None = None
    folder: Path | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def hub_data(value: str) -> HubData | None:
    """The hub data set `value` names; None when it is an existing path or not a hub id.

    `value` is `owner/name`, optionally followed by `@revision` and `:folder`. An owner that is a
    local folder makes it a path (one that does not exist), as with the checkpoint options.
    """
    if Path(value).expanduser().exists():
        return None
    name, sep, folder = value.partition(":")
    repo_id, _, revision = name.partition("@")
    if not _REPO_ID.match(repo_id) or Path(repo_id).parent.is_dir():
        return None
    return HubData(
        repo_id,
        revision.strip() or None,
        Path(folder.strip()).expanduser() if sep and folder.strip() else None,
    )


def load_split(data: HubData, split: str, *, config: str | None = None) -> Dataset:
    """One split of a hub data set through `datasets.load_dataset`, its media left undecoded.

    Audio and image columns hold `{"bytes", "path"}` (`media_file` writes them out), so the
    decoders `datasets` would need (torchcodec) are not.

    Raises:
        PluginError: `datasets` is not installed (exit 5).
        CheckpointError: not in the local datasets cache when offline (`HF_HUB_OFFLINE` or
            `HF_DATASETS_OFFLINE`), or neither cached nor downloadable (exit 4).
        InputError: the data set has no such config or split, or cannot be read (exit 3).
    """
    from anygpt_core.evaluation.metrics import require

    datasets = require("datasets")
    named = f"{data} (config {config}, split {split})" if config else f"{data} (split {split})"
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # its "using the cached version" notes: errors are ours
    try:
        loaded = datasets.load_dataset(data.repo_id, config, split=split, revision=data.revision)
    except Exception as err:  # datasets raises many types for "not there": sorted out below
        if datasets.config.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{named}: not in the local datasets cache (offline: HF_HUB_OFFLINE or "
                "HF_DATASETS_OFFLINE is set); load it once with a network, or pass a local path"
            ) from err
        if isinstance(err, (ConnectionError, FileNotFoundError, PermissionError)) or (
            type(err).__name__ == "DatasetNotFoundError"
        ):
            raise CheckpointError(
                f"{named}: not in the local datasets cache and not downloadable "
                f"({first_line(err)}); pass a local path"
            ) from err
        raise InputError(f"{named}: cannot be read ({first_line(err)})") from err
    finally:
        datasets.logging.set_verbosity(verbosity)
    features = loaded.features
    for name, feature in features.items():
        if isinstance(feature, (datasets.Audio, datasets.Image)) and feature.decode:
            loaded = loaded.cast_column(name, type(feature)(decode=False))
    return loaded


def column(rows: Dataset, names: Sequence[str], *, data: HubData, what: str) -> str:
    """The first of `names` that `rows` has.

    Raises:
        InputError: none of them, naming `what` the column holds and the names looked for.
    """
    for name in names:
        if name in rows.column_names:
            return name
    raise InputError(
        f"{data}: no {what} column ({' or '.join(names)}); its columns: "
        f"{', '.join(rows.column_names)}"
    )


def media_file(
    cell: Mapping[str, Any] | None, folder: Path, name: str, *, suffix: str
) -> Path | None:
    """The file of an undecoded audio or image cell: its bytes written once to `folder/name`.

    The file takes the suffix of the cell's own path (`.flac`, `.jpg`), else `suffix`; `name` is
    made safe as a file name (sample ids may hold `/`). A file already written is kept, so a
    resumed run hands the model the same one. A cell without bytes whose path is a local file
    gives that file; an empty cell gives None (the sample then fails where it is used, reported
    and counted as skipped).
    """
    if not cell:
        return None
    data, path = cell.get("bytes"), cell.get("path")
    if not data:
        return Path(path) if path and Path(path).is_file() else None
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120] or "item"
    target = folder / (stem + (Path(str(path or "")).suffix or suffix))
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: tmp.write_bytes(bytes(data)))
    return target
