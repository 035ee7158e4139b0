# mypy: disable-error-code="empty-body"
"""Hook specifications of the `anygpt` plugin system.

A plugin is a module named by an entry point in the group `anygpt`; it implements some of these hooks
with `anygpt_core.hookimpl`. Hooks are called at discovery and must stay cheap: no weights, no network,
no heavy imports (torch, transformers) at module import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from anygpt_core.spec import ModalitySpec

if TYPE_CHECKING:
    from anygpt_core.evaluation.task import EvalTask

PROJECT = "anygpt"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "PROJECT",
    "anygpt_demo_assets",
    "anygpt_eval_tasks",
    "anygpt_modalities",
    "hookimpl",
    "hookspec",
]


@hookspec
def anygpt_modalities() -> Sequence[ModalitySpec]:
    """Return the modalities this plugin adds.

    Called once at discovery; must not load weights or touch the network. A modality whose name,
    prefix, start or end token clashes with an already registered one makes the plugin be skipped.
    """


@hookspec
def anygpt_demo_assets(directory: Path) -> Mapping[str, Any]:
    """Write tiny seeded codec checkpoints for the embedded demo model into `directory`.

    Called when the demo is built (once per installed plugin set). `directory` is empty and belongs to
    this plugin alone. Files must use the real published formats, so the demo exercises the same
    loading code as real checkpoints; build them deterministically and in seconds, without network.

    Returns:
        Option values for this plugin's codec options (`CodecOption.name` -> value, e.g.
        `{"music_tokenizer_path": str(directory / "encodec")}`) that the demo uses as defaults.
    """


@hookspec
def anygpt_eval_tasks() -> Sequence[EvalTask]:
    """Return the evaluation tasks this plugin adds (`anygpt eval NAME`).

    Called when `anygpt eval` lists or runs tasks; must not load data, weights or scorers, nor
    touch the network: an `EvalTask` names the functions that do, called when the task runs. A
    task's name must be unique among the installed plugins (a clash is reported and the later
    plugin's task skipped).
    """
