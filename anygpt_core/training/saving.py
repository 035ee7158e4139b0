"""Checkpoints saved whole or not at all: written in a staging folder, then renamed into place.

The Trainer writes `checkpoint-N` and the final model where they are read, file by file, and
safetensors writes each weights file as a model-sized `.tmpXXXXXX` beside it before renaming it. A
kill (-9) or a full disk in the middle used to leave a checkpoint half written, with that temporary
file inside, in the folder the next run saves into again. Here every save is written in
`OUTPUT_DIR/.saving/` first: `checkpoint-N` (with the tokenizer and its completion marker) is
renamed into place in one step, the final model's files are moved in beside the tokenizer once all
are written. What a save cut short leaves (`.saving/`, and the temporary files of runs before this)
is removed when the next save starts; the checkpoints and model already there stay as they were.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from anygpt_core.files import remove_stale, write_bytes

__all__ = ["COMPLETE_MARKER", "SAVING_DIR", "save_final_model", "trainer_class"]

#: Written last into each checkpoint (after the Trainer's files and the tokenizer copy), so a
#: checkpoint cut short by a kill or a full disk is recognised: it has no marker.
COMPLETE_MARKER = "anygpt-complete.json"
#: The folder in the output directory where saves are written before they are moved into place.
SAVING_DIR = ".saving"
#: What safetensors (Rust's `tempfile`) names a weights file while it writes it.
_SAFETENSORS_TEMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")
#: Weights files a save may write; those of an earlier save that a new one lacks are removed, as
#: `save_pretrained` does in the folder it writes (other shards, the other format).
_WEIGHTS = re.compile(
    r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$"
)
_TOKENIZER_FILES = (
    "tokenizer.model",
    "added_tokens.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
)


def clear_leftovers(output_dir: Path) -> list[Path]:
    """Remove what a save cut short left in `output_dir`: `.saving/` and safetensors' temporaries.

    Called by the one process that writes there, as a save starts: no other save is under way.
    """

    def leftover(name: str) -> bool:
        return name == SAVING_DIR or _SAFETENSORS_TEMP.match(name) is not None

    return remove_stale(output_dir, matches=leftover, age=0)


def copy_tokenizer(source: Path, target: Path) -> None:
    """Copy the slow-layout tokenizer files, so a checkpoint loads as a model."""
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def mark_complete(checkpoint: Path, step: int) -> None:
    """Write the completion marker of `checkpoint`, whole (written aside, then renamed)."""
    tmp = checkpoint / f"{COMPLETE_MARKER}.tmp"
    write_bytes(tmp, json.dumps({"step": step}).encode())
    os.replace(tmp, checkpoint / COMPLETE_MARKER)


def _replace(new: Path, target: Path, trash: Path) -> None:
    """Rename `new` to `target`; a folder already at `target` is first moved into `trash`."""
    if target.is_dir() and not target.is_symlink():
        trash.mkdir(parents=True, exist_ok=True)
        os.replace(target, trash / target.name)
    os.replace(new, target)


def trainer_class() -> type[Any]:
    """The transformers `Trainer`, whose checkpoints appear whole or not at all.

    Its constructor takes `tokenizer_dir`, the folder whose tokenizer each checkpoint gets.
    """
    from transformers import Trainer
    from transformers.trainer_utils import rotate_checkpoints

    class AtomicTrainer(Trainer):
        def __init__(self, *args: Any, tokenizer_dir: Path, **kwargs: Any) -> None:  # noqa: ANN401
            super().__init__(*args, **kwargs)
            self.tokenizer_dir = tokenizer_dir
            self._staging: str | None = None

        def _get_output_dir(self, trial: Any) -> str:  # noqa: ANN401 - optuna's or a dict
            # while a checkpoint is saved, the Trainer's `run_dir` is the staging folder
            return self._staging or str(super()._get_output_dir(trial))

        def _save_checkpoint(self, model: Any, trial: Any) -> None:  # noqa: ANN401
            run_dir = Path(super()._get_output_dir(trial))
            name = f"checkpoint-{self.state.global_step}"
            staging = run_dir / SAVING_DIR
            writer = self.args.should_save  # the main process (of each node: save_on_each_node)
            if writer:
                clear_leftovers(run_dir)
            self.accelerator.wait_for_everyone()  # nobody writes into what is being cleared
            self._staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)  # every process writes its part
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()  # every part is written
            if writer:
                done = staging / name
                copy_tokenizer(self.tokenizer_dir, done)
                mark_complete(done, self.state.global_step)
                # one rename: `checkpoint-N` is whole, or (cut short before it) not there at all
                _replace(done, run_dir / name, staging / "replaced")
                shutil.rmtree(staging, ignore_errors=True)
                # the Trainer rotated in the staging folder, which held only this one
                rotate_checkpoints(
                    output_dir=str(run_dir),
                    save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint,
                    use_mtime=True,
                )

    return AtomicTrainer


def save_final_model(trainer: Any, output_dir: Path) -> None:  # noqa: ANN401 - an AtomicTrainer
    """`trainer.save_model(output_dir)`, written whole in `.saving/` before it replaces the last.

    The files are moved in one by one once all are written (renames: a kill between two leaves
    whole files of both saves); weights files of the earlier save that this one lacks go last.
    """
    staging = output_dir / SAVING_DIR
    writer = trainer.args.should_save
    if writer:
        clear_leftovers(output_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging / "model"))  # written by the main process alone
    trainer.accelerator.wait_for_everyone()
    if not writer:
        return
    saved = sorted((staging / "model").iterdir())
    for path in saved:
        _replace(path, output_dir / path.name, staging / "replaced")
    names = {path.name for path in saved}
    for path in output_dir.iterdir():
        if _WEIGHTS.match(path.name) and path.name not in names and path.is_file():
            path.unlink()
    shutil.rmtree(staging, ignore_errors=True)
