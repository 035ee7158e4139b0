"""What an evaluation task is: its data, its samples, its metric. Plugins declare tasks; the core runs them.

A plugin returns `EvalTask` objects from its `anygpt_eval_tasks` hook. The task reads its data set's
own published layout (`load`), turns each item into a `Sample` (an AnyGPT task plus its reference),
and scores the generated outputs (`score`) with the scorer models the core loads (`Scorers`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core.config import DecodingConfig
from anygpt_core.tasks import Task

if TYPE_CHECKING:
    from anygpt_core.evaluation.hub import HubData
    from anygpt_core.evaluation.scorers import Scorers

__all__ = [
    "PAPER_DECODING",
    "EvalTask",
    "LoadContext",
    "Metric",
    "Record",
    "Sample",
    "Scored",
    "paper_decoding",
]

#: The paper's decoding for evaluation (Table 9): beam search with 5 beams for text answers;
#: sampling with top-p 0.7 for images and speech; top-p 1.0 with repetition penalty 1.15 for
#: music. The table leaves top-k out: it is off here (the reference's implicit top-k 50 was an
#: artefact of transformers 4.34, not a choice). Budgets are ours: a LibriSpeech test-clean
#: transcript needs up to about 150 tokens; music is limited to 5 s (250 frames of 4 codes).
PAPER_DECODING: Mapping[str, DecodingConfig] = {
    "text": DecodingConfig(do_sample=False, num_beams=5, max_new_tokens=200),
    "image": DecodingConfig(do_sample=True, top_p=0.7, top_k=0),
    "speech": DecodingConfig(do_sample=True, top_p=0.7, top_k=0, max_new_tokens=1500),
    "music": DecodingConfig(
        do_sample=True, top_p=1.0, top_k=0, repetition_penalty=1.15, max_new_tokens=1001
    ),
}


def paper_decoding(target: str) -> DecodingConfig | None:
    """The paper's decoding config for answers in `target`; None for a modality it never used."""
    return PAPER_DECODING.get(target)


@dataclass(frozen=True)
class Sample:
    """One item of an evaluation set: the AnyGPT task to run and what its answer is judged against.

    Attributes:
        id: stable within the task (the cache key): the same data give the same ids.
        task: what the model is asked (source, target, payload, condition such as a voice prompt).
        reference: what the answer is compared with, JSON-ready (a transcript, a list of captions,
            the path of the music clip, ...).
        extra: anything else the scorer needs, JSON-ready (a speaker id, the original image's path).
    """

    id: str
    task: Task
    reference: Any
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """A sample with the model's answer: its text and the files written from its spans."""

    sample: Sample
    text: str
    files: tuple[Path, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Metric:
    """One number a task reports.

    Attributes:
        name: as the paper names it (`CIDEr`, `WER`, `SIM`, `CLIP score`, ...).
        paper: the paper's value for AnyGPT (base model, zero-shot), None if it gives none.
        lower_is_better: True for error rates.
        unit: how `value` reads, e.g. `%` for WER in percent; empty for plain numbers.
    """

    name: str
    paper: float | None = None
    lower_is_better: bool = False
    unit: str = ""


@dataclass(frozen=True)
class Scored:
    """What `EvalTask.score` returns: each metric's value, and a score per record.

    Attributes:
        values: metric name -> value over the whole set (as the metric defines the aggregate:
            corpus WER is not the mean of per-sample WERs).
        per_sample: one dict of metric name -> value per record, in the records' order.
    """

    values: Mapping[str, float]
    per_sample: Sequence[Mapping[str, float | None]]


@dataclass(frozen=True)
class LoadContext:
    """What `EvalTask.load` may use besides the data path.

    Attributes:
        workdir: a folder of this task's own in the output directory, for files the task derives
            from the data (cropped voice prompts, 5 s music inputs); kept between runs, so a
            resumed run finds them again.
        seed: seeds every random choice of the data (the 30,000 COCO captions, VCTK's prompt
            clips), so the same seed gives the same set.
    """

    workdir: Path
    seed: int


@dataclass(frozen=True)
class EvalTask:
    """An evaluation task a plugin adds (`anygpt_eval_tasks`).

    Attributes:
        name: what `anygpt eval NAME` calls it, e.g. `librispeech-asr`.
        modality: the modality it exercises (its plugin must be installed).
        source: the task's input modality (`text` for generation tasks).
        target: the answer's modality.
        metrics: the numbers it reports; the first is the headline one.
        description: one line for `anygpt eval --list` and the report.
        data: the data set's layout that `load` reads, in a few words (named in errors and docs).
        load: reads the data set at a path into samples, in a stable order; raises `InputError`
            naming what is missing (`P: no *.trans.txt under test-clean`).
        score: scores records (every sample that has an answer) with the scorer models.
        scorers: the scorer kinds `score` uses (`whisper`, `wavlm-sv`, `clip`, `clap`), checked
            before anything is generated.
        libraries: the modules `score` imports (`jiwer`, `pycocoevalcap`, ...), checked before
            anything is generated.
        load_hub: reads a hub data set (`--data TASK=OWNER/NAME`, loaded with
            `anygpt_core.evaluation.hub.load_split`) into samples, as `load` does a folder; None
            if the task reads local data only.
        hub_ids: the hub data sets `load_hub` knows, the usual one first (named in help and
            errors).
    """

    name: str
    modality: str
    source: str
    target: str
    metrics: tuple[Metric, ...]
    description: str
    data: str
    load: Callable[[Path, LoadContext], list[Sample]]
    score: Callable[[Sequence[Record], Scorers], Scored]
    scorers: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    load_hub: Callable[[HubData, LoadContext], list[Sample]] | None = None
    hub_ids: tuple[str, ...] = ()

    @property
    def headline(self) -> Metric:
        """The metric the report leads with (the paper's column)."""
        return self.metrics[0]
