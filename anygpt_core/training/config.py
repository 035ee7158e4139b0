"""Training configuration: a YAML or JSON file, checked by pydantic, mapped onto TrainingArguments.

```yaml
model: runs/extended            # the extended model (pretrain) or the pretrained one (sft)
data: data/pretrain.jsonl       # one file or a list, written by `anygpt data prepare`
output_dir: runs/pretrain
max_length: 2048
learning_rate: 3.0e-5
max_steps: 4096
trainer:                        # any other TrainingArguments field, passed through
  fsdp: true
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from anygpt_core.config import format_validation_error
from anygpt_core.errors import AnyGPTError, ConfigError, first_line

__all__ = ["TrainConfig", "load_train_config", "training_arguments"]

#: TrainingArguments fields the trainer sets itself.
_MANAGED = {"output_dir", "seed", "remove_unused_columns", "resume_from_checkpoint", "label_names"}


class TrainConfig(BaseModel):
    """One training run (pretraining or SFT)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        description="Model directory or hub id: extended (pretrain) or pretrained (sft)."
    )
    data: list[Path] = Field(
        min_length=1, description="Training JSONL file(s) from `anygpt data prepare`."
    )
    output_dir: Path = Field(description="Checkpoints and the final model (Hugging Face layout).")
    max_length: int = Field(
        2048, ge=16, description="Tokens per example; longer ones are truncated."
    )
    seed: int = Field(0, description="Seeds sampling order, prompt direction and phrasings.")
    instructions: Path | None = Field(
        None,
        description="Phrasings JSON in the reference's other2text/text2other layout (pretrain).",
    )
    x2t_probability: float = Field(
        0.5, ge=0, le=1, description="Share of pretraining pairs rendered modality -> text."
    )
    template: Literal["mmgpt", "anygpt"] = Field(
        "mmgpt",
        description="SFT chat template: mmgpt (what `anygpt chat` prompts with) or anygpt "
        "(the reference's SFT template, `[AnyGPT]` … `<eom>`).",
    )
    resume: bool = Field(True, description="Continue from the newest checkpoint in output_dir.")
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate.")
    max_steps: int = Field(-1, description="Optimizer steps; -1 trains num_train_epochs.")
    num_train_epochs: float = Field(1.0, gt=0, description="Epochs when max_steps is -1.")
    per_device_train_batch_size: int = Field(1, ge=1, description="Examples per device and step.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step."
    )
    warmup_steps: float = Field(
        0, ge=0, description="Warmup steps, or a fraction of all steps if < 1."
    )
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    logging_steps: float = Field(10, gt=0, description="Log the loss every this many steps.")
    save_steps: float = Field(500, gt=0, description="Save a checkpoint every this many steps.")
    save_total_limit: int | None = Field(
        None, ge=1, description="Keep at most this many checkpoints."
    )
    bf16: bool = Field(False, description="bfloat16 mixed precision.")
    fp16: bool = Field(False, description="float16 mixed precision.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    packing: bool = Field(
        False,
        description="Join each batch's examples into one row with no padding (attention stays "
        "within each example); for data of very different lengths.",
    )
    dataloader_num_workers: int = Field(0, ge=0, description="Data loading processes.")
    report_to: str | list[str] = Field("none", description="Loggers: none, tensorboard, wandb, …")
    trainer: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other TrainingArguments field (deepspeed, fsdp, fsdp_config, optim, …).",
    )

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:  # noqa: ANN401 - raw YAML value
        return [value] if isinstance(value, (str, Path)) else value

    @field_validator("trainer")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        import dataclasses

        from transformers import TrainingArguments

        known = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
        unknown = sorted(set(value) - known)
        if unknown:
            names = (k if k.isprintable() else repr(k) for k in unknown)
            raise ValueError(f"not TrainingArguments fields: {', '.join(names)}")
        clash = sorted(set(value) & (_MANAGED | set(cls.model_fields)))
        if clash:
            raise ValueError(f"set {', '.join(clash)} at the top level or leave them out")
        return value


def load_train_config(path: Path) -> TrainConfig:
    """Read and validate a YAML (`.yaml`, `.yml`) or JSON config file.

    Raises:
        ConfigError: missing or unreadable file, or bad fields (all named on one line).
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such config file") from err
    except PermissionError as err:
        raise ConfigError(f"{path}: permission denied") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a readable text file ({err})") from err
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except RecursionError as err:
        raise ConfigError(f"{path}: nested too deeply to be a training config") from err
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first = first_line(err)
        raise ConfigError(
            f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'} ({first})"
        ) from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a mapping of fields")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err)}") from err
    except UnicodeEncodeError as err:  # YAML's "\ud800" escapes make text no encoder takes
        raise ConfigError(f"{path}: holds a lone surrogate escape; write the character") from err


def training_arguments(config: TrainConfig, *, source: Path | None = None) -> Any:  # noqa: ANN401
    """The `TrainingArguments` of a config.

    Raises:
        ConfigError: transformers rejects the combination (e.g. bf16 without hardware support).
    """
    import dataclasses
    import importlib.util

    from transformers import TrainingArguments

    if importlib.util.find_spec("accelerate") is None:
        raise AnyGPTError("training needs accelerate: pip install accelerate")
    mapped = {
        name: getattr(config, name)
        for name in (
            "learning_rate",
            "max_steps",
            "num_train_epochs",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "warmup_steps",
            "lr_scheduler_type",
            "weight_decay",
            "logging_steps",
            "save_steps",
            "save_total_limit",
            "bf16",
            "fp16",
            "dataloader_num_workers",
            "report_to",
            "seed",
        )
    }
    if config.gradient_checkpointing:  # renamed activation_checkpointing in transformers 5
        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        name = (
            "activation_checkpointing"
            if "activation_checkpointing" in known
            else "gradient_checkpointing"
        )
        mapped[name] = True
    # every parameter of a causal LM is used in each step (DDP's search for unused ones is a
    # wasted pass), and replicas log only errors: rank 0 reports for the run
    defaults = {"ddp_find_unused_parameters": False, "log_level_replica": "error"}
    where = f"{source}: " if source else ""
    try:
        args = TrainingArguments(
            output_dir=str(config.output_dir),
            remove_unused_columns=False,
            **mapped,
            **{**defaults, **config.trainer},
        )
    except (ValueError, TypeError, ImportError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{where}{first}") from err
    if args.fsdp_plugin_args is not None and args.device.type == "cpu":
        # accelerate shards with FSDP only on accelerators; on the CPU it would quietly train
        # every rank on a full copy (DDP) instead
        raise ConfigError(
            f"{where}trainer.fsdp: FSDP needs GPUs (accelerate runs it only on accelerators); "
            "remove fsdp to train on the CPU"
        )
    return args
