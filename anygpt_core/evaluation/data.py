"""Helpers the plugins' eval tasks share: reading a data folder, cutting audio clips, reading outputs."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anygpt_core.errors import AnyGPTError, InputError, first_line
from anygpt_core.tasks import atomic_write

if TYPE_CHECKING:
    import numpy as np

__all__ = ["cut_clip", "find_folder", "mean_of", "read_waves", "require_dir"]

logger = logging.getLogger(__name__)


def require_dir(path: Path, layout: str) -> Path:
    """`path` as a directory, or the one-line error naming the layout a task reads.

    Raises:
        InputError: no such directory.
    """
    if not path.is_dir():
        what = "no such directory" if not path.exists() else "not a directory"
        raise InputError(f"{path}: {what}; expected {layout}")
    return path


def find_folder(root: Path, names: Sequence[str]) -> Path | None:
    """The first of `root/name` that is a directory (`root` itself when its name is one of them)."""
    if root.name in names:
        return root
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def cut_clip(
    source: Path,
    target: Path,
    *,
    seconds: float,
    sample_rate: int,
    rng: random.Random | None = None,
) -> Path:
    """Write `seconds` of `source` (mono, resampled) to `target` once; return the clip's path.

    With `rng` the clip starts at a random point (the paper's "random 3 s clip"), else at 0. A
    clip already written is kept (a resumed run uses the same one). When `source` cannot be read,
    `source` itself is returned: the sample then fails where it is used, naming the bad file.
    """
    if target.is_file():
        return target
    import soundfile as sf

    from anygpt_core.audio import load_audio, write_wav

    try:
        wav = load_audio(source, sample_rate)
    except AnyGPTError as err:
        logger.warning("%s: skipped (%s)", source, first_line(err))
        return source
    length = int(seconds * sample_rate)
    start = 0
    if rng is not None and wav.shape[0] > length:
        start = rng.randrange(0, wav.shape[0] - length + 1)
    clip = wav[start : start + length]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(target, lambda tmp: write_wav(clip, tmp, sample_rate, suffix=".wav"))
    except sf.LibsndfileError as err:
        raise InputError(f"{target}: cannot write ({err})") from err
    return target


def read_waves(paths: Sequence[Path], sample_rate: int) -> list[np.ndarray]:
    """Mono float32 arrays of audio files at `sample_rate` (generated answers, prompt clips)."""
    from anygpt_core.audio import load_audio

    return [load_audio(p, sample_rate).numpy() for p in paths]


def mean_of(values: Iterable[float]) -> float:
    """The mean of the defined values (NaN marks a sample without a score); NaN if there is none."""
    found = [v for v in values if not math.isnan(v)]
    return sum(found) / len(found) if found else math.nan
