"""Pretraining and SFT with the transformers Trainer (torchrun, accelerate, DeepSpeed, FSDP as is).

Everything the user can get wrong (config fields, data lines, a model without AnyGPT tokens, a
modality the model lacks) is checked before the weights load. The output directory holds the
tokenizer in the published slow layout from the start, each checkpoint gets a copy, and the final
model is saved beside it, so `anygpt run --model-name-or-path OUTPUT_DIR` loads it as it is. Saves
are written aside and moved into place (saving.py): a kill while saving leaves the last ones whole.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from anygpt_core.errors import CheckpointError, ConfigError, OutputError, first_line
from anygpt_core.files import check_output_dir
from anygpt_core.plugins import PluginSet
from anygpt_core.tokenization import ReferenceTokenizer
from anygpt_core.training.config import TrainConfig, training_arguments
from anygpt_core.training.datasets import (
    ChatDataset,
    PretrainDataset,
    collate,
    collate_packed,
    read_examples,
)
from anygpt_core.training.extend import CHAT_TOKENS, resize_embeddings, write_tokenizer
from anygpt_core.training.saving import COMPLETE_MARKER, save_final_model, trainer_class

__all__ = ["COMPLETE_MARKER", "TrainResult", "last_complete_checkpoint", "train"]

logger = logging.getLogger(__name__)

Kind = Literal["pretrain", "sft"]


@dataclass
class TrainResult:
    """What a run did: where the model is, the steps taken and the logged losses `(step, loss)`.

    `main_process` is false on every process of a multi-process run but the first, which reports.
    """

    output_dir: Path
    steps: int = 0
    resumed_from: Path | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)
    main_process: bool = True


def _is_complete(checkpoint: Path, *, marked: bool) -> bool:
    """Has the marker; in a run whose checkpoints have none (older ones), a readable trainer state.

    The Trainer writes `trainer_state.json` after the weights, optimizer and RNG states.
    """
    import json

    if (checkpoint / COMPLETE_MARKER).is_file():
        return True
    if marked:
        return False
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: Path) -> tuple[Path | None, list[Path]]:
    """The newest complete `checkpoint-N` in `output_dir`, and the newer incomplete ones skipped."""
    import re

    found = sorted(
        (int(m.group(1)), p)
        for p in output_dir.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
    )
    marked = any((p / COMPLETE_MARKER).is_file() for _, p in found)
    skipped: list[Path] = []
    for _, checkpoint in reversed(found):
        if _is_complete(checkpoint, marked=marked):
            return checkpoint, skipped
        skipped.append(checkpoint)
    return None, skipped


def train(
    kind: Kind,
    config: TrainConfig,
    plugins: PluginSet,
    *,
    source: Path | None = None,
    callbacks: list[Any] | None = None,
    on_ready: Callable[[int, Path | None], None] | None = None,
) -> TrainResult:
    """Pretrain or fine-tune a model extended with AnyGPT tokens.

    Args:
        kind: `pretrain` (modality <-> text pairs, loss on all tokens) or `sft` (conversations,
            loss on the assistant replies; adds `<-Res->`, `<-Ins->` if missing).
        config: the validated config.
        plugins: installed modalities (their phrasings and tokens).
        source: the config file, for messages.
        callbacks: extra `TrainerCallback`s.
        on_ready: called with (examples, checkpoint resumed from) once everything is checked,
            on the main process only (rank 0 of a multi-process run).

    Raises:
        ConfigError, InputError, CheckpointError, ModalityUnavailableError: before any weights load.
    """
    from anygpt_core.prompts import ANYGPT_CHAT, MMGPT_CHAT, InstructionBank
    from anygpt_core.tokens import TokenSpace
    from anygpt_core.training.extend import check_base

    args = training_arguments(config, source=source)
    check_output_dir(config.output_dir)  # read-only, not a directory, full: one line, no weights
    base = check_base(config.model)
    lines, used = read_examples(config.data, kind, plugins.modalities)
    bank = InstructionBank.from_specs(plugins.modalities, path=config.instructions)
    if kind == "pretrain":
        for name in used:
            for direction in ("to_text", "from_text"):
                if not bank.lists.get((name, direction)):
                    raise ConfigError(
                        f"no {direction} phrasings for {name}; add them with instructions:"
                    )
    resume = None
    if config.resume and config.output_dir.is_dir():
        last, skipped = last_complete_checkpoint(config.output_dir)
        resume = None if last is None else str(last)
        for broken in skipped:
            logger.warning(
                "%s is incomplete (cut short by a kill or a full disk); skipped, resuming from %s",
                broken,
                last or "the start",
            )
    output_dir = config.output_dir
    added: list[str] = []
    base_tokenizer = _load_tokenizer(base)
    space = TokenSpace(base_tokenizer, plugins.modalities)
    for name in sorted(used):
        space.require(name)
    # one writer per filesystem: the main process, or each node's first with save_on_each_node
    with args.main_process_first(local=args.save_on_each_node, desc="tokenizer"):
        first = args.local_process_index if args.save_on_each_node else args.process_index
        if first == 0:
            _, added = write_tokenizer(base, output_dir, CHAT_TOKENS if kind == "sft" else ())
        tokenizer = _load_tokenizer(output_dir)
    # Examples are tokenized as transformers 4.34 did, like prompts at inference (tokenization.py).
    data_tokenizer = ReferenceTokenizer.wrap(output_dir, tokenizer)
    dataset: PretrainDataset | ChatDataset
    if kind == "pretrain":
        dataset = PretrainDataset(
            lines,
            data_tokenizer,
            bank.lists,
            max_length=config.max_length,
            seed=config.seed,
            x2t_probability=config.x2t_probability,
        )
    else:
        template = MMGPT_CHAT if config.template == "mmgpt" else ANYGPT_CHAT
        dataset = ChatDataset(lines, data_tokenizer, template, max_length=config.max_length)
    if on_ready is not None and args.process_index == 0:
        on_ready(len(lines), Path(resume) if resume else None)
    # ids the base tokenizer lacked (SFT's <-Res->, <-Ins->) start with the mean embedding
    model = _load_model(base, tokenizer, first_new=max(base_tokenizer.get_vocab().values()) + 1)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collator = collate_packed if config.packing else partial(collate, pad_id=pad_id)
    result = _run_trainer(model, args, dataset, collator, output_dir, resume, callbacks or [])
    result.added_tokens = added
    return result


def _load_tokenizer(directory: Path) -> Any:  # noqa: ANN401 - a transformers tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(
            f"{directory}: training needs a tokenizer with character offsets (fast)"
        )
    return tokenizer


def _load_model(base: Path, tokenizer: Any, *, first_new: int) -> Any:  # noqa: ANN401 - causal LM
    import torch

    from anygpt_core.loading import load_causal_lm

    model = load_causal_lm(base, dtype=torch.float32)
    resize_embeddings(model, max(tokenizer.get_vocab().values()) + 1, first_new)
    return model


def _run_trainer(
    model: Any,  # noqa: ANN401
    args: Any,  # noqa: ANN401
    dataset: Any,  # noqa: ANN401
    collator: Callable[[list[dict[str, list[int]]]], dict[str, Any]],
    output_dir: Path,
    resume: str | None,
    callbacks: list[Any],
) -> TrainResult:
    # each checkpoint, with a copy of the tokenizer, appears whole or not at all (saving.py)
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        callbacks=callbacks,
        tokenizer_dir=output_dir,
    )
    try:
        trainer.train(resume_from_checkpoint=resume)
        save_final_model(trainer, output_dir)  # beside the tokenizer, replacing an earlier one
        trainer.save_state()  # trainer_state.json beside the model: the loss curve of the whole run
        # no process leaves (and tears its group down) while one still saves
        trainer.accelerator.wait_for_everyone()
    except Exception as err:
        if resume is not None and isinstance(err, pickle.UnpicklingError):
            # torch's refusal of a pickle in the checkpoint (its optimizer or RNG state), without
            # its advice to load it anyway: that would run whatever code the pickle names
            raise CheckpointError(
                f"{resume}: not a checkpoint to resume from ({first_line(err)})"
            ) from err
        failure = _write_failure(err, output_dir / f"checkpoint-{trainer.state.global_step}")
        if failure is None:
            raise
        raise failure from err
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    return TrainResult(
        output_dir,
        trainer.state.global_step,
        Path(resume) if resume else None,
        losses,
        main_process=args.process_index == 0,
    )


def end_process_group() -> None:
    """Tear down this process's group of a multi-process run (gloo, NCCL), if there is one.

    A process that exits with its group alive may abort in the group's threads (seen with gloo:
    `terminate called without an active exception`, SIGABRT), which fails the whole launch.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _write_failure(err: BaseException, checkpoint: Path) -> OutputError | None:
    """One line for a save that failed for lack of space or permission; None for other errors.

    torch and safetensors wrap the OS error in their own types and words, so a full disk is
    also recognised by their messages or by no space being left where the checkpoint goes.
    """
    import contextlib
    import errno
    import shutil

    from anygpt_core.files import WRITE_ERRNOS, write_failure

    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return write_failure(checkpoint, err)
    text = str(err)
    full = any(s in text for s in ("No space left", "StorageFull", "file write failed"))
    with contextlib.suppress(OSError):
        full = full or shutil.disk_usage(checkpoint.parent).free < 1 << 20
    if full:
        return write_failure(checkpoint, OSError(errno.ENOSPC, "No space left on device"))
    return None
