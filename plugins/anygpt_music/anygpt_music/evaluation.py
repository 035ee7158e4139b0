"""The paper's music evaluations on MusicCaps, scored with LAION CLAP.

- `musiccaps-t2m`: music generated from each caption (5 s: 250 frames), CLAP score of the music
  against the caption. Paper: 0.14.
- `musiccaps-caption`: each clip's first 5 s described by the model, CLAP score of the clip
  against the generated caption. Paper: 0.11 (the real captions score 0.16).

Data: `musiccaps-public.csv` (Google's release) and the clips the user downloaded, named
`{ytid}.wav`, beside it or in a `clips/` folder; or the Hugging Face data set `google/MusicCaps`,
which holds the captions but no audio (`google/MusicCaps:FOLDER` adds the clips). The paper does
not name its CLAP checkpoint.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anygpt_core.errors import InputError
from anygpt_core.evaluation.data import cut_clip, mean_of, read_waves, require_dir
from anygpt_core.evaluation.hub import HubData, column, load_split, media_file
from anygpt_core.evaluation.task import EvalTask, LoadContext, Metric, Record, Sample, Scored
from anygpt_core.tasks import Task

if TYPE_CHECKING:
    from anygpt_core.evaluation.scorers import Scorers

__all__ = ["MUSICCAPS_CAPTION", "MUSICCAPS_T2M"]

#: The music the paper generated and read: 5 s.
SECONDS = 5.0
_RATE = 32_000
_LAYOUT = "musiccaps-public.csv and {ytid}.wav clips beside it or in clips/"
#: Google's captions on the hub (one `train` split, no audio); another id is read the same way.
_HUB = ("google/MusicCaps",)


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
    return _t2m_samples((r["ytid"], r["caption"]) for r in rows)


def load_t2m_hub(data: HubData, context: LoadContext) -> list[Sample]:
    """`load_t2m` on the hub's MusicCaps (`google/MusicCaps`): its captions, in its order.

    Raises:
        InputError: no `ytid` or `caption` column.
        CheckpointError: not cached when offline, or not downloadable.
    """
    del context
    rows = load_split(data, "train")
    ytid = column(rows, ["ytid"], data=data, what="ytid")
    caption = column(rows, ["caption"], data=data, what="caption")
    table = rows.select_columns([ytid, caption]).to_list()
    return _t2m_samples((str(r[ytid] or ""), str(r[caption] or "")) for r in table)


def _t2m_samples(rows: Iterable[tuple[str, str]]) -> list[Sample]:
    found = ((y.strip(), c.strip()) for y, c in rows)
    return [Sample(y, Task("text", "music", c), c) for y, c in found if y and c]


def load_caption(path: Path, context: LoadContext) -> list[Sample]:
    """Every MusicCaps clip's first 5 s as a music-to-text task.

    A clip that is missing or unreadable stays a sample: it is reported and counted as skipped.

    Raises:
        InputError: no `musiccaps-public.csv`, or it lacks the `ytid` or `caption` column.
    """
    root, rows = _rows(path)
    clips = root / "clips" if (root / "clips").is_dir() else root
    return _caption_samples(
        (
            (r["ytid"].strip(), r["caption"].strip(), clips / f"{r['ytid'].strip()}.wav")
            for r in rows
        ),
        context,
    )


def load_caption_hub(data: HubData, context: LoadContext) -> list[Sample]:
    """`load_caption` on a hub MusicCaps: its captions with the clips of the `:FOLDER` given.

    A hub set that holds the audio (an `audio` column) needs no folder.

    Raises:
        InputError: the set holds no audio and no folder was given (`google/MusicCaps` holds
            none), or it lacks the `ytid` or `caption` column.
        CheckpointError: not cached when offline, or not downloadable.
    """
    rows = load_split(data, "train")
    ytid = column(rows, ["ytid"], data=data, what="ytid")
    caption = column(rows, ["caption"], data=data, what="caption")
    held = "audio" in rows.column_names
    if not held and data.folder is None:
        raise InputError(
            f"{data}: the hub data set holds MusicCaps' captions, not its audio; download the "
            f"clips as {{ytid}}.wav and pass --data musiccaps-caption={data}:FOLDER"
        )
    folder = data.folder if data.folder is not None else context.workdir / "hub"
    table = rows.select_columns([ytid, caption]).to_list()
    items = []
    for index, row in enumerate(table):
        name, text = str(row[ytid] or "").strip(), str(row[caption] or "").strip()
        if not name or not text:
            continue
        source = folder / f"{name}.wav"
        if held:
            written = media_file(rows[index]["audio"], folder, name, suffix=".wav")
            source = written if written is not None else source
        items.append((name, text, source))
    return _caption_samples(items, context)


def _caption_samples(items: Iterable[tuple[str, str, Path]], context: LoadContext) -> list[Sample]:
    """(ytid, caption, clip) -> samples of the clips' first 5 s (cut once under the workdir)."""
    samples = []
    for ytid, caption, source in items:
        clip = source
        if source.is_file():
            clip = cut_clip(
                source,
                context.workdir / "inputs" / f"{ytid}.wav",
                seconds=SECONDS,
                sample_rate=_RATE,
            )
        samples.append(Sample(ytid, Task("music", "text", str(clip)), caption))
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
    load_hub=load_t2m_hub,
    hub_ids=_HUB,
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
    load_hub=load_caption_hub,
    hub_ids=_HUB,
)
