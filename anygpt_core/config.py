"""Decoding configurations: the seed's `config/*_generate_config.json` fields, each meaning what it says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anygpt_core.errors import ConfigError

__all__ = ["DecodingConfig", "format_validation_error", "load_decoding_config"]


class DecodingConfig(BaseModel):
    """How to sample tokens in one state of the generation loop (text, or inside a modality span).

    Field names are the seed's, so its JSON files load unchanged. Unlike the reference (which ran
    transformers 4.34 with an implicit `top_k=50` and a silently dropped `min_new_tokens`), every field
    here is applied as written; the shipped defaults spell out the values the reference effectively used.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    do_sample: bool = Field(
        True, description="Sample from the distribution; False picks the argmax."
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus probability mass; 1 disables it.")
    top_k: int | None = Field(
        None, ge=0, description="Keep the k most likely tokens; null or 0 disables."
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        description="CTRL-style penalty on tokens already in the sequence; 1 disables it.",
    )
    max_new_tokens: int = Field(
        100, gt=0, description="Most tokens generated for the whole answer."
    )
    min_new_tokens: int = Field(
        0, ge=0, description="End tokens are forbidden until this many tokens were generated."
    )
    num_beams: int = Field(
        1,
        ge=1,
        description=(
            "Beams for a text answer (beam search, or beam sampling with do_sample); 1 for the "
            "token-by-token loop, which modality spans need."
        ),
    )
    vc_steps: int | None = Field(
        None, gt=0, description="Mask-predict steps of a speech decoder (SoundStorm); speech only."
    )

    def merged(self, **overrides: Any) -> DecodingConfig:  # noqa: ANN401 - field values
        """Return a copy with the non-None overrides applied and validated."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if not values:
            return self
        try:
            return DecodingConfig.model_validate({**self.model_dump(), **values})
        except ValidationError as err:
            raise ConfigError(f"decoding options: {format_validation_error(err)}") from err


def format_validation_error(err: ValidationError) -> str:
    """Join every problem of a pydantic error on one line: `field: message; field: message`."""
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "value"
        msg = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def load_decoding_config(path: Path, *, base: DecodingConfig | None = None) -> DecodingConfig:
    """Read a decoding config JSON file; fields it leaves out keep the values of `base`.

    Raises:
        ConfigError: the file is missing, is not a JSON object, or has unknown or invalid fields.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such config file") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a decoding config must be a JSON object")
    merged = {**(base.model_dump() if base else {}), **data}
    try:
        return DecodingConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err)}") from err
