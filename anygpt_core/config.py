"""Decoding configurations: the seed's `config/*_generate_config.json` fields, each meaning what it says."""

from __future__ import annotations

import json
import random
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anygpt_core.errors import ConfigError

__all__ = [
    "MAX_SEED",
    "DecodingConfig",
    "check_seed",
    "draw_seed",
    "format_validation_error",
    "load_decoding_config",
]

#: Seeds are 0 .. 2**32 - 1: each maps to its own generator state in torch, numpy and `random`
#: (numpy refuses more; wider ones would wrap onto others and repeat their outputs).
MAX_SEED = 2**32 - 1
#: Integers beyond this are no budget, count or step a model can use.
_MAX_INT = 2**31 - 1


class DecodingConfig(BaseModel):
    """How to sample tokens in one state of the generation loop (text, or inside a modality span).

    Field names are the seed's, so its JSON files load unchanged. A modality whose decoder reads more
    fields declares a subclass as its spec's `decoding` (the speech plugin's `vc_steps`). Unlike the
    reference (which ran transformers 4.34 with an implicit `top_k=50` and a silently dropped
    `min_new_tokens`), every field here is applied as written; the shipped defaults spell out the
    values the reference effectively used.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    do_sample: bool = Field(
        True, description="Sample from the distribution; False picks the argmax."
    )
    temperature: float = Field(1.0, gt=0, le=100, description="Softmax temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus probability mass; 1 disables it.")
    top_k: int | None = Field(
        None, ge=0, le=_MAX_INT, description="Keep the k most likely tokens; null or 0 disables."
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        le=100,
        description="CTRL-style penalty on tokens already in the sequence; 1 disables it.",
    )
    max_new_tokens: int = Field(
        100,
        gt=0,
        le=_MAX_INT,
        description="Most tokens generated for the whole answer (capped at the model's context).",
    )
    min_new_tokens: int = Field(
        0,
        ge=0,
        le=_MAX_INT,
        description="End tokens are forbidden until this many tokens were generated.",
    )
    num_beams: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Beams for a text answer (beam search, or beam sampling with do_sample); 1 for the "
            "token-by-token loop, which modality spans need."
        ),
    )

    def merged(self, **overrides: Any) -> DecodingConfig:  # noqa: ANN401 - field values
        """Return a copy with the non-None overrides applied and validated."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if not values:
            return self
        try:
            return type(self).model_validate({**self.model_dump(), **values})
        except ValidationError as err:
            raise ConfigError(f"decoding options: {format_validation_error(err)}") from err


def format_validation_error(err: ValidationError) -> str:
    """Join every problem of a pydantic error on one line: `field: message; field: message`."""
    parts = []
    for item in err.errors():
        names = (str(p) if str(p).isprintable() else repr(p) for p in item["loc"])
        where = ".".join(names) or "value"
        msg = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {' '.join(msg.split())}")  # one line, whatever a key holds
    return "; ".join(parts)


def load_decoding_config(
    path: Path, *, base: DecodingConfig | None = None, other_fields: Collection[str] = ()
) -> DecodingConfig:
    """Read a decoding config JSON file; fields it leaves out keep the values of `base`.

    The result has `base`'s type (a plugin's subclass reads its own fields too). `other_fields` are
    fields other modalities' configs read (`PluginSet.decoding_fields`): one file serves every
    modality, so each takes its own and leaves theirs.

    Raises:
        ConfigError: the file is missing, is not a JSON object, or has unknown or invalid fields.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such config file") from err
    except IsADirectoryError as err:
        raise ConfigError(f"{path}: is a directory, not a config file") from err
    except PermissionError as err:
        raise ConfigError(f"{path}: permission denied") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON file ({err})") from err
    except RecursionError as err:
        raise ConfigError(f"{path}: JSON nested too deeply to be a decoding config") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a decoding config must be a JSON object")
    kind = type(base) if base is not None else DecodingConfig
    theirs = set(other_fields) - set(kind.model_fields)
    merged = {**(base.model_dump() if base else {}), **data}
    merged = {k: v for k, v in merged.items() if k not in theirs}
    try:
        return kind.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err)}") from err
    except UnicodeEncodeError as err:  # JSON's "\ud800" escapes make text no encoder takes
        raise ConfigError(f"{path}: holds a lone surrogate escape; write the character") from err


def draw_seed(seed: int | None) -> int:
    """`seed` checked (`check_seed`), or a fresh one from the system's randomness when None.

    A drawn seed is below 2**31, so a run can be repeated with it whatever tool reads it.
    """
    return random.SystemRandom().randrange(2**31) if seed is None else check_seed(seed)


def check_seed(seed: int) -> int:
    """`seed` if it is within 0 .. `MAX_SEED`.

    Raises:
        ConfigError: a seed outside that range, in one line.
    """
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed {seed}: expected a whole number from 0 to {MAX_SEED}")
    return seed
