"""The paper's music evaluations on MusicCaps, scored with LAION CLAP.

- `musiccaps-t2m`: music generated from each caption (5 s: 250 frames), CLAP score of the music
  against the caption. Paper: 0.14.
- `musiccaps-caption`: each clip's first 5 s described by the model, CLAP score of the clip
  against the generated caption. Paper: 0.11 (the real captions score 0.16).

Data: `musiccaps-public.csv` (Google's release) and the clips the user downloaded, named
`{ytid}.wav`, beside it or in a `clips/` folder. The paper does not name its CLAP checkpoint.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anygpt_core.errors import InputError
from anygpt_core.evaluation.data import cut_clip, mean_of, read_waves, require_dir
from anygpt_core.evaluation.task import EvalTask, LoadContext, Metric, Record, Sample, Scored
from anygpt_core.tasks import Task

if TYPE_CHECKING:
    from anygpt_core.evaluation.scorers import Scorers

__all__ = ["MUSICCAPS_CAPTION", "MUSICCAPS_T2M"]

#: The music the paper generated and read: 5 s.
SECONDS = 5.0
_RATE = 32_000
_LAYOUT = "musiccaps-public.csv and {ytid}.wav clips beside it or in clips/"


def _rows(path: Path) -> tuple[Path, list[dict[str, str]]]:
    root = require_dir(path, _LAYOUT)
    table = root / "musiccaps-public.csv"
    if not table.is_file():
        raise InputError(f"{root}: no musiccaps-public.csv; expected {_LAYOUT}")
    try:
        with table.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{table}: unreadable ({err})") from err
    missing = {"ytid", "caption"} - set(rows[0] if rows else {})
    if missing:
        raise InputError(f"{table}: no {', '.join(sorted(missing))} column")
    return root, [r for r in rows if r["ytid"].strip() and r["caption"].strip()]


def load_t2m(path: Path, context: LoadContext) -> list[Sample]:
    """Every MusicCaps caption as a text-to-music task (the clips are not needed).

    Raises:
        InputError: no `musiccaps-public.csv`, or it lacks the `ytid` or `caption` column.
    """
    del context
    _, rows = _rows(path)
    return [
        Sample(r["ytid"].strip(), Task("text", "music", r["caption"].strip()), r["caption"].strip())
        for r in rows
    ]


def load_caption(path: Path, context: LoadContext) -> list[Sample]:
    """Every MusicCaps clip's first 5 s as a music-to-text task.

    A clip that is missing or unreadable stays a sample: it is reported and counted as skipped.

    Raises:
        InputError: no `musiccaps-public.csv`, or it lacks the `ytid` or `caption` column.
    """
    root, rows = _rows(path)
    clips = root / "clips" if (root / "clips").is_dir() else root
    samples = []
    for row in rows:
        ytid = row["ytid"].strip()
        source = clips / f"{ytid}.wav"
        clip = source
        if source.is_file():
            clip = cut_clip(
                source,
                context.workdir / "inputs" / f"{ytid}.wav",
                seconds=SECONDS,
                sample_rate=_RATE,
            )
        samples.append(Sample(ytid, Task("music", "text", str(clip)), row["caption"].strip()))
    return samples


def score_t2m(records: Sequence[Record], scorers: Scorers) -> Scored:
    """CLAP score of each generated piece against its caption (no music: no score)."""
    made = [r for r in records if r.files]
    scores = scorers.clap_audio_text(
        read_waves([r.files[0] for r in made], _RATE), _RATE, [r.sample.reference for r in made]
    )
    by_record = dict(zip((id(r) for r in made), scores, strict=True))
    each = [by_record.get(id(r), math.nan) for r in records]
    return Scored({"CLAP": mean_of(each)}, [{"CLAP": s} for s in each])


def score_caption(records: Sequence[Record], scorers: Scorers) -> Scored:
    """CLAP score of each clip against the caption the model wrote for it."""
    waves = read_waves([Path(r.sample.task.payload) for r in records], _RATE)
    each = scorers.clap_audio_text(waves, _RATE, [r.text for r in records])
    return Scored({"CLAP": mean_of(each)}, [{"CLAP": s} for s in each])


MUSICCAPS_T2M = EvalTask(
    name="musiccaps-t2m",
    modality="music",
    source="text",
    target="music",
    metrics=(Metric("CLAP", paper=0.14),),
    description="text to music on MusicCaps captions (5 s): CLAP score, music vs caption",
    data=_LAYOUT,
    load=load_t2m,
    score=score_t2m,
    scorers=("clap",),
)

MUSICCAPS_CAPTION = EvalTask(
    name="musiccaps-caption",
    modality="music",
    source="music",
    target="text",
    metrics=(Metric("CLAP", paper=0.11),),
    description="music captioning on MusicCaps clips (5 s): CLAP score, clip vs caption",
    data=_LAYOUT,
    load=load_caption,
    score=score_caption,
    scorers=("clap",),
)
