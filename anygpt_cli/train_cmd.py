"""`anygpt train pretrain` and `anygpt train sft`: the transformers Trainer on AnyGPT data.

Run on many GPUs unchanged: `torchrun --nproc-per-node 8 $(which anygpt) train pretrain cfg.yaml`
(or `accelerate launch`, with DeepSpeed / FSDP settings under `trainer:` in the config). Rank 0
reports (progress, the summary); the other ranks print only their errors, prefixed `rank N: `.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from anygpt_core.errors import AnyGPTError

if TYPE_CHECKING:
    from anygpt_core.plugins import PluginSet
    from anygpt_core.training.train import Kind

__all__ = ["register"]

Config = Annotated[
    Path,
    typer.Argument(help="Training config, YAML or JSON.", readable=False),  # ours: one line
]


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `train` command group."""
    group = typer.Typer(help="Pretrain or fine-tune an extended model.", no_args_is_help=True)
    app.add_typer(group, name="train")

    @group.command("pretrain")
    def pretrain_command(config: Config) -> None:
        """Pretrain on modality <-> text pairs (direction and phrasing seeded per example)."""
        _train("pretrain", config, plugins)

    @group.command("sft")
    def sft_command(config: Config) -> None:
        """Fine-tune on conversations; the loss covers only the assistant replies."""
        _train("sft", config, plugins)


def _train(kind: Kind, path: Path, plugins: PluginSet) -> None:
    from anygpt_cli.console import stderr, stdout
    from anygpt_cli.launch import launch_rank
    from anygpt_core.training.config import load_train_config
    from anygpt_core.training.train import end_process_group, train

    if launch_rank():
        _quiet_replica()
    config = load_train_config(path)

    def ready(examples: int, resumed: Path | None) -> None:
        where = f", resuming from {resumed}" if resumed else ""
        stderr.print(f"{kind}: {examples} examples from {len(config.data)} file(s){where}")

    try:
        result = train(kind, config, plugins, source=path, on_ready=ready)
    except Exception as err:
        if _peer_lost(err):
            raise AnyGPTError(
                f"another process of this run stopped ({type(err).__name__} in a collective); "
                "its error is above"
            ) from err
        raise
    end_process_group()
    if not result.main_process:
        return
    last = f", last loss {result.losses[-1][1]:.4f}" if result.losses else ""
    stdout.print(f"[green]saved[/green] {result.output_dir} after {result.steps} steps{last}")


def _peer_lost(err: Exception) -> bool:
    """Whether a collective failed because another process of the run is gone (gloo, NCCL)."""
    import os

    import torch.distributed

    world = os.environ.get("WORLD_SIZE", "").strip()
    if not (world.isdigit() and int(world) > 1) or isinstance(err, AnyGPTError):
        return False
    return isinstance(err, torch.distributed.DistError) or "closed by peer" in str(err)


def _quiet_replica() -> None:
    """Silence a process other than rank 0: the first reports for the run; errors still show."""
    import logging
    import warnings

    from transformers.utils import logging as transformers_logging

    from anygpt_cli.console import stderr

    stderr.quiet = True
    logging.getLogger().setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    warnings.simplefilter("ignore")
