"""An evaluation task of the example modality: does the model name a series' trend?

`sequence-trend` reads a folder holding `trends.csv` (columns `file`, `label`; labels `rising`,
`falling` or `flat`) and the series files it names. Each series is shown to the model (sequence ->
text); an answer is right when it names the series' label. A third-party modality ships its tasks
this way: its data layout, its samples, its metric, through the core's `anygpt eval`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from anygpt_core import InputError
from anygpt_core.evaluation import EvalTask, LoadContext, Metric, Record, Sample, Scored
from anygpt_core.evaluation.data import require_dir
from anygpt_core.tasks import Task

if TYPE_CHECKING:
    from anygpt_core.evaluation.scorers import Scorers

__all__ = ["LABELS", "SEQUENCE_TREND"]

#: The trends a series is labelled with.
LABELS = ("rising", "falling", "flat")
_LAYOUT = "trends.csv (file,label with labels rising, falling, flat) and the series files"


def load_trends(path: Path, context: LoadContext) -> list[Sample]:
    """The labelled series of `trends.csv`, in its order.

    Raises:
        InputError: no `trends.csv`, no `file`/`label` column, or a label not in `LABELS`.
    """
    del context
    root = require_dir(path, _LAYOUT)
    table = root / "trends.csv"
    if not table.is_file():
        raise InputError(f"{root}: no trends.csv; expected {_LAYOUT}")
    try:
        with table.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{table}: unreadable ({err})") from err
    samples = []
    for number, row in enumerate(rows, start=2):
        name, label = (row.get("file") or "").strip(), (row.get("label") or "").strip().lower()
        if not name or label not in LABELS:
            raise InputError(f"{table}:{number}: expected a file and a label among {LABELS}")
        samples.append(Sample(name, Task("sequence", "text", str(root / name)), label))
    return samples


def score_trends(records: Sequence[Record], scorers: Scorers) -> Scored:
    """Accuracy (%): the share of answers that name the right trend and no other."""
    del scorers
    each = []
    for record in records:
        named = {w for w in re.findall(r"[a-z]+", record.text.lower()) if w in LABELS}
        each.append(100.0 if named == {record.sample.reference} else 0.0)
    return Scored({"accuracy": sum(each) / len(each)}, [{"accuracy": e} for e in each])


SEQUENCE_TREND = EvalTask(
    name="sequence-trend",
    modality="sequence",
    source="sequence",
    target="text",
    metrics=(Metric("accuracy", unit="%"),),
    description="name a series' trend (rising, falling, flat): accuracy",
    data=_LAYOUT,
    load=load_trends,
    score=score_trends,
)
