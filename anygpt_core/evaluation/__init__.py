"""Evaluation: the paper's protocol, tasks from plugins, any engine (`anygpt eval`).

Plugins add tasks with the `anygpt_eval_tasks` hook (an `EvalTask` each); `Evaluation` answers a
task's samples through a backend (the local or vLLM engine, or an `anygpt serve`), caches each
answer, and scores them with the scorer models; `write_report` writes the table beside the paper's.
"""

from __future__ import annotations

from anygpt_core.evaluation.backends import Answer, Backend, Job, LocalBackend, ServerBackend
from anygpt_core.evaluation.runner import Evaluation, TaskReport, select
from anygpt_core.evaluation.task import (
    PAPER_DECODING,
    EvalTask,
    LoadContext,
    Metric,
    Record,
    Sample,
    Scored,
    paper_decoding,
)

__all__ = [
    "PAPER_DECODING",
    "Answer",
    "Backend",
    "EvalTask",
    "Evaluation",
    "Job",
    "LoadContext",
    "LocalBackend",
    "Metric",
    "Record",
    "Sample",
    "Scored",
    "ServerBackend",
    "TaskReport",
    "paper_decoding",
    "select",
]
