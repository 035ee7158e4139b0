"""The evaluation report: `report.json`, `report.md` (ours beside the paper's) and `report.png`.

Tasks accumulate: evaluating `librispeech-asr` into a folder that already reports `coco-caption`
keeps that task's entry, so a table can be built one task at a time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from anygpt_core.errors import InputError
from anygpt_core.evaluation.runner import TaskReport
from anygpt_core.tasks import atomic_write

__all__ = ["library_versions", "write_report"]

#: Distributions whose versions make a number reproducible.
_LIBRARIES = (
    "anygpt-core",
    "anygpt-image",
    "anygpt-speech",
    "anygpt-music",
    "torch",
    "transformers",
    "jiwer",
    "whisper-normalizer",
    "pycocoevalcap",
)


def library_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the libraries behind the numbers (those present)."""
    found = {}
    for name in (*_LIBRARIES, *extra):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_report(
    out: Path,
    reports: Sequence[TaskReport],
    *,
    model: Mapping[str, Any],
    versions: Mapping[str, str],
) -> dict[str, Any]:
    """Merge `reports` into `out/report.json` and rewrite `report.md` and `report.png`.

    Returns:
        The whole report as written to `report.json`.
    """
    path = out / "report.json"
    tasks: dict[str, Any] = {}
    if path.is_file():
        try:
            tasks = dict(json.loads(path.read_text(encoding="utf-8")).get("tasks", {}))
        except (OSError, ValueError, AttributeError) as err:
            raise InputError(f"{path}: unreadable ({err}); move it away to start a report") from err
    for report in reports:
        tasks[report.task.name] = report.to_json()
    whole = {"tasks": tasks, "model": dict(model), "versions": dict(versions)}
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(whole, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)
    markdown = render_markdown(whole)
    atomic_write(
        out / "report.md", lambda tmp: tmp.write_text(markdown, encoding="utf-8"), overwrite=True
    )
    atomic_write(out / "report.png", lambda tmp: _chart(whole, tmp), overwrite=True)
    return whole


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:.4g}{unit}"


def render_markdown(whole: Mapping[str, Any]) -> str:
    """The report as a Markdown table: every metric of every task, ours beside the paper's."""
    model = whole.get("model", {})
    lines = [
        "# AnyGPT evaluation",
        "",
        f"Model: `{model.get('model', '?')}` · engine: {model.get('engine', '?')}",
        "",
        "| task | metric | ours | paper | ours − paper | n | skipped | decoding |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in sorted(whole.get("tasks", {}).items()):
        decode = entry.get("decode", {}).get("mode", "?")
        for metric, info in entry.get("metrics", {}).items():
            ours, paper = info.get("value"), info.get("paper")
            unit = info.get("unit", "")
            diff = "–" if ours is None or paper is None else f"{ours - paper:+.3g}"
            better = " (lower is better)" if info.get("lower_is_better") else ""
            lines.append(
                f"| {name} | {metric}{better} | {_fmt(ours, unit)} | {_fmt(paper, unit)} | {diff} "
                f"| {entry.get('n', 0)} | {entry.get('skipped', 0)} | {decode} |"
            )
    versions = ", ".join(f"{k} {v}" for k, v in sorted(whole.get("versions", {}).items()))
    lines += ["", f"Versions: {versions}", ""]
    return "\n".join(lines)


def _chart(whole: Mapping[str, Any], target: Path) -> None:
    """One bar pair (ours, paper) per metric; each its own axis, since scales differ (CIDEr ~100)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (f"{name}\n{metric}", info.get("value"), info.get("paper"))
        for name, entry in sorted(whole.get("tasks", {}).items())
        for metric, info in entry.get("metrics", {}).items()
    ]
    count = max(1, len(bars))
    figure, axes = plt.subplots(1, count, figsize=(2.4 * count, 3.2), squeeze=False)
    for axis, (label, ours, paper) in zip(axes[0], bars, strict=False):
        values = [ours if ours is not None else 0.0, paper if paper is not None else 0.0]
        axis.bar(["ours", "paper"], values, color=["#4c72b0", "#bbbbbb"])
        axis.set_title(label, fontsize=8)
        axis.tick_params(labelsize=7)
        for x, (value, given) in enumerate(zip(values, (ours, paper), strict=True)):
            axis.text(x, value, "–" if given is None else f"{value:.3g}", ha="center", fontsize=7)
    figure.tight_layout()
    figure.savefig(target, format="png", dpi=100)
    plt.close(figure)
