"""`anygpt eval`: the paper's evaluation tasks (from the plugins), on any engine, with a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.catalogue import KNOWN_EVAL_TASKS
from anygpt_cli.common import DecodingFlags, EngineChoice, InstructionsFile, ModelChoice, load_model
from anygpt_cli.options import with_codec_options
from anygpt_core.errors import ConfigError
from anygpt_core.evaluation.metrics import require

if TYPE_CHECKING:
    from anygpt_core.evaluation import Backend, EvalTask, Sample, TaskReport
    from anygpt_core.evaluation.scorers import Scorers
    from anygpt_core.plugins import PluginSet

__all__ = ["register"]

HELP = """Evaluate a model on the AnyGPT paper's tasks, with its decoding and the standard scorers.

Tasks come from the installed plugins (`anygpt eval --list`): coco-caption, coco-t2i (image),
librispeech-asr, vctk-tts (speech), musiccaps-t2m, musiccaps-caption (music). Each reads its data
set's published layout from --data TASK=PATH, or a Hugging Face data set from --data TASK=HUB_ID
(openslr/librispeech_asr; HUB_ID:FOLDER adds the media a hub set only names, such as COCO images
or MusicCaps clips). Answers are cached in --out per sample: a killed run
resumes where it stopped, and --rescore scores again without generating. Writes report.json,
report.md, report.png and TASK/samples.jsonl in --out.
"""


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    """`NAME=VALUE` options as a dict; a malformed one is a usage error."""
    found: dict[str, str] = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise typer.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint=flag)
        found[name.strip()] = rest.strip()
    return found


_Tasks = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="TASK", help="Tasks to evaluate, e.g. librispeech-asr.", show_default=False
    ),
]
_Data = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        metavar="TASK=PATH_OR_HUB_ID",
        help="Where a task's data set lies: a folder in its published layout, or a "
        "Hugging Face data set id[:FOLDER] (repeatable).",
    ),
]
_Scorer = Annotated[
    list[str] | None,
    typer.Option(
        "--scorer",
        metavar="KIND=PATH_OR_HUB_ID",
        help="A scorer model (whisper, wavlm-sv, clip, clap) other than the default (repeatable).",
    ),
]
_Limit = Annotated[
    int | None,
    typer.Option(
        "--limit", min=1, metavar="N", help="Evaluate a seeded subset of N samples per task."
    ),
]
_Seed = Annotated[
    int, typer.Option("--seed", help="Seeds the data's choices, --limit and answers.")
]
_Decode = Annotated[
    str,
    typer.Option(
        "--decode",
        metavar="paper|model",
        help="paper: the paper's decoding (5 beams for text; top-p 0.7 for image and "
        "speech; repetition penalty 1.15 for music); model: the plugins' configs and "
        "the decoding flags.",
    ),
]
_Out = Annotated[Path, typer.Option("--out", help="Output directory (cache, samples, report).")]
_Rescore = Annotated[
    bool, typer.Option("--rescore", help="Score the cached answers again; generate nothing.")
]
_ListTasks = Annotated[bool, typer.Option("--list", help="List the installed tasks and stop.")]
_BatchSize = Annotated[
    int,
    typer.Option("--batch-size", min=1, max=256, help="Samples generated together (or in flight)."),
]
_ScorerDevice = Annotated[
    str, typer.Option("--scorer-device", help="Device of the scorer models: cpu, cuda.")
]


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `eval` command with the installed plugins' codec options."""

    @app.command("eval", help=HELP)
    @with_codec_options(plugins.options(), plugins.option_panels())
    @ModelChoice.options()
    @EngineChoice.options(server=True)
    @DecodingFlags.options(seed=False)
    def eval_command(
        tasks: _Tasks = None,
        *,
        data: _Data = None,
        scorer: _Scorer = None,
        limit: _Limit = None,
        seed: _Seed = 0,
        decode: _Decode = "paper",
        out: _Out = Path("anygpt_eval"),
        rescore: _Rescore = False,
        list_tasks: _ListTasks = False,
        model: ModelChoice,
        engine: EngineChoice,
        batch_size: _BatchSize = 8,
        scorer_device: _ScorerDevice = "cpu",
        decoding: DecodingFlags,
        instructions: InstructionsFile = None,
        codec_options: dict[str, Any],
    ) -> None:
        if list_tasks:
            _list(plugins)
            return
        chosen, paths = _chosen(plugins, tasks, data)
        flags = _flags(plugins, decode, decoding)
        url = engine.url()
        model.check()  # an unknown mode fails before loading
        _check_engines(chosen, decode, engine, url)
        scorers = _scorers(chosen, _pairs(scorer, "--scorer"), device=scorer_device)
        evaluation = _Run(out=out, scorers=scorers, seed=seed, limit=limit, decode=decode)
        samples = {t.name: evaluation.samples(t, paths[t.name]) for t in chosen}
        backend = None
        if not rescore:
            backend = _backend(
                plugins,
                model,
                engine,
                batch_size=batch_size,
                codec_options=codec_options,
                instructions=instructions,
            )
        settings = _settings(model, decoding, engine, instructions, codec_options)
        with evaluation.progress:
            reports = evaluation.run(
                chosen, samples, backend=backend, overrides=flags, settings=settings
            )
        _finish(out, reports, backend=backend, settings=settings, scorers=scorers)


def _chosen(
    plugins: PluginSet, names: list[str] | None, data: list[str] | None
) -> tuple[list[EvalTask], dict[str, str]]:
    """The tasks asked for and where each one's data lies; a usage error if one has none."""
    if not names:
        raise typer.BadParameter("name at least one task (anygpt eval --list)", param_hint="TASK")
    chosen = [plugins.eval_task(name, KNOWN_EVAL_TASKS) for name in dict.fromkeys(names)]
    paths = _pairs(data, "--data")
    unknown = sorted(set(paths) - {t.name for t in chosen})
    if unknown:
        raise typer.BadParameter(
            f"{unknown[0]}: not among the tasks asked for", param_hint="--data"
        )
    for task in chosen:
        if task.name not in paths:
            hub = f" or {task.name}={task.hub_ids[0]}" if task.hub_ids else ""
            raise typer.BadParameter(
                f"{task.name}: no data; pass --data {task.name}=PATH ({task.data}){hub}",
                param_hint="--data",
            )
    return chosen, paths


def _flags(plugins: PluginSet, decode: str, decoding: DecodingFlags) -> dict[str, Any]:
    """The decoding fields each job carries: --config's and the flags' (with --decode model)."""
    if decode not in {"paper", "model"}:
        raise ConfigError(f"--decode {decode}: use paper or model")
    flags = decoding.overrides
    if decode == "paper" and (
        decoding.config is not None or any(v is not None for v in flags.values())
    ):
        raise ConfigError("decoding flags and --config apply with --decode model")
    decoding.check(plugins)
    if decoding.config is not None:  # its fields travel with each job, to a server too
        flags = {**json.loads(decoding.config.read_text(encoding="utf-8")), **_given(flags)}
    return flags


def _check_engines(
    chosen: list[EvalTask], decode: str, engine: EngineChoice, url: str | None
) -> None:
    """One engine at a time, and one that can decode as asked."""
    if engine.server is not None and url is not None:
        raise ConfigError("--server and --engine vllm are two engines; give one")
    if url is not None and decode == "paper" and any(t.target == "text" for t in chosen):
        raise ConfigError(
            "--decode paper: text answers use beam search, which the vLLM engine does not "
            "run; use the local engine or --server, or --decode model"
        )


def _scorers(chosen: list[EvalTask], models: dict[str, str], *, device: str) -> Scorers:
    """The scorers; the scorer models and metric libraries the tasks need are checked now."""
    from anygpt_core.evaluation.scorers import Scorers

    scorers = Scorers(models, device=device)
    scorers.check(dict.fromkeys(kind for task in chosen for kind in task.scorers))
    for module in dict.fromkeys(m for task in chosen for m in (*task.libraries, "matplotlib")):
        require(module)  # a metric library missing fails now, not after generating
    return scorers


def _settings(
    model: ModelChoice,
    decoding: DecodingFlags,
    engine: EngineChoice,
    instructions: Path | None,
    codec_options: dict[str, Any],
) -> dict[str, Any]:
    """How the answers were made, for the report."""
    return {
        "model": model.model_name_or_path or "demo",
        "engine": "server" if engine.server else engine.engine,
        "quantize": model.quantize,
        "instructions": str(instructions) if instructions else None,
        "config": str(decoding.config) if decoding.config else None,
        "codec_options": codec_options,
    }


def _backend(
    plugins: PluginSet,
    model: ModelChoice,
    engine: EngineChoice,
    *,
    batch_size: int,
    codec_options: dict[str, Any],
    instructions: Path | None,
) -> Backend:
    """What answers: the `anygpt serve` at --server, or the model loaded here."""
    from anygpt_core.evaluation import LocalBackend, ServerBackend

    if engine.server is not None:
        backend = ServerBackend(engine.server, api_key=engine.api_key, concurrency=batch_size)
        backend.model()  # a server that is down fails now, before any task
        return backend
    gpt = load_model(
        plugins,
        model,
        codec_options=codec_options,
        output_dir=Path("."),  # nothing is saved by the model: the runner writes the files
        instructions=instructions,
        vllm_url=engine.url(),
    )
    gpt.engine.max_batch = batch_size
    return LocalBackend(gpt, model=model.model_name_or_path or "demo")


class _Run:
    """The evaluation with a rich progress bar per task (ETA included) on stderr."""

    def __init__(self, **options: Any) -> None:  # noqa: ANN401 - Evaluation's arguments
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from anygpt_cli.console import stderr

        self.options = options
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=stderr,
            disable=not stderr.is_terminal,
        )
        self.bars: dict[str, Any] = {}

    def update(self, name: str, done: int, total: int, what: str) -> None:
        """Show a task's progress (its bar is made on its first update)."""
        if name not in self.bars:
            self.bars[name] = self.progress.add_task(name, total=None, what=what)
        bar = self.bars[name]
        if self.progress.tasks[bar].fields.get("what") != what:  # a new stage: its own clock
            self.progress.reset(bar, what=what)
        self.progress.update(
            bar, description=f"{name}: {what}", completed=done, total=total or None
        )

    def samples(self, task: EvalTask, data: str) -> list[Sample]:
        """The task's samples from a path or hub id (data read before any model loads)."""
        from anygpt_core.evaluation import Evaluation

        return Evaluation(backend=None, on_progress=self.update, **self.options).samples(task, data)

    def run(
        self,
        tasks: list[EvalTask],
        samples: dict[str, list[Sample]],
        **options: Any,  # noqa: ANN401 - Evaluation's arguments
    ) -> list[TaskReport]:
        """Answer and score each task in turn."""
        from anygpt_core.evaluation import Evaluation

        evaluation = Evaluation(on_progress=self.update, **self.options, **options)
        return [evaluation.run(task, samples[task.name]) for task in tasks]


def _finish(
    out: Path,
    reports: list[TaskReport],
    *,
    backend: Backend | None,
    settings: dict[str, Any],
    scorers: Any,  # noqa: ANN401 - Scorers
) -> None:
    from anygpt_cli.console import stderr, stdout
    from anygpt_core.evaluation.report import library_versions, write_report

    model = backend.describe() if backend is not None else {"model": settings["model"]}
    versions = library_versions() | {f"scorer {k}": v for k, v in scorers.versions().items()}
    write_report(out, reports, model=model, versions=versions)
    for report in reports:
        for error in report.errors[:5]:
            stderr.print(f"[yellow]skipped {report.task.name} {error}[/yellow]", markup=True)
        if len(report.errors) > 5:
            stderr.print(f"[yellow]… and {len(report.errors) - 5} more[/yellow]", markup=True)
        entry = report.to_json()
        for name, info in entry["metrics"].items():
            ours, paper = info["value"], info.get("paper")
            shown = "–" if ours is None else f"{ours:.4g}"
            beside = "" if paper is None else f" (paper {paper:g})"
            stdout.print(
                f"{report.task.name} {name}: {shown}{beside} · n={report.n}, "
                f"skipped={report.skipped}",
                markup=False,
            )
    stdout.print(f"wrote {out / 'report.json'}, report.md, report.png", markup=False)


def _list(plugins: PluginSet) -> None:
    from anygpt_cli.console import stdout

    tasks = plugins.eval_tasks()
    for name, task in sorted(tasks.items()):
        paper = ", ".join(f"{m.name} {m.paper:g}" for m in task.metrics if m.paper is not None)
        stdout.print(f"{name}  {task.description} (paper: {paper or '–'})", markup=False)
    missing = sorted(set(KNOWN_EVAL_TASKS) - set(tasks))
    for name in missing:
        stdout.print(f"{name}  needs: pip install {KNOWN_EVAL_TASKS[name]}", markup=False)
