# mypy: disable-error-code="empty-body"
"""The plugin contract: what a plugin declares and the hooks it implements.

A plugin declares its modalities (`ModalitySpec`), their codecs (`Codec`) and CLI options. It is a
module named by an entry point in the group `anygpt` that implements some of the hooks below with
`anygpt_core.hookimpl`. Hooks are called at discovery and must stay cheap: no weights, no network,
no heavy imports (torch, transformers) at module import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol, TypeVar, runtime_checkable

import pluggy
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anygpt_core.config import DecodingConfig
from anygpt_core.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from anygpt_core.evaluation.task import EvalTask

__all__ = [
    "PROJECT",
    "Codec",
    "CodecOption",
    "Instructions",
    "ModalitySpec",
    "anygpt_demo_assets",
    "anygpt_eval_tasks",
    "anygpt_modalities",
    "hookimpl",
    "hookspec",
    "save_format",
    "save_suffix",
]

#: The plugin system's name: its entry point group and pluggy project.
PROJECT = "anygpt"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
T = TypeVar("T")


@runtime_checkable
class Codec(Protocol):
    """Turns media into discrete codes and back. Heavy weights load on first use, not in `__init__`.

    A codec may also have an `output_extension` attribute (e.g. from a format option): the suffix
    of the files `run` and `chat` write, in place of the spec's `output_extension`.
    """

    def encode(self, source: Path | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Encode a file or an in-memory array.

        Returns:
            codes: int64 [num_codebooks, T], each value in [0, codebook_size).

        Raises:
            InputError: the file is missing, empty, corrupt, too long or of an unsupported format.
        """
        ...

    def decode(
        self,
        codes: torch.Tensor,
        *,
        condition: Path | None = None,
        seed: int | None = None,
        config: DecodingConfig | None = None,
    ) -> Any:  # noqa: ANN401 - media type is the codec's own (PIL image, waveform, ...)
        """Decode codes int64 [num_codebooks, T] into media.

        Args:
            codes: int64 [num_codebooks, T].
            condition: an optional file that steers decoding (what it is: the spec's `condition`,
                e.g. a voice prompt); codecs that take none raise `InputError` when given one.
            seed: makes sampling decoders (diffusion, mask-predict) reproducible.
            config: the decoding config in effect for this modality (the default, a user's
                `--config` file, flags); decoders read their own fields, e.g. speech `vc_steps`.
        """
        ...

    def save(
        self,
        media: Any,  # noqa: ANN401 - see decode
        target: Path | BinaryIO,
        *,
        suffix: str | None = None,
    ) -> None:
        """Write media to a path (its suffix picks the format) or to a binary file object.

        Args:
            media: what `decode` returned.
            target: a path, or a writable binary file object (an `io.BytesIO` for bytes in
                memory); a file object is written from its current position and left open.
            suffix: picks the format, e.g. ".wav"; required with a file object, and wins over a
                path's suffix when given. `save_suffix` reads the two.

        Raises:
            InputError: an unsupported suffix, or a file object without `suffix`.
        """
        ...


def save_suffix(target: str | os.PathLike[str] | BinaryIO, suffix: str | None = None) -> str:
    """The lowercase suffix that picks the format in `Codec.save`: `suffix`, else the path's.

    Raises:
        InputError: `target` is a file object and `suffix` is None.
    """
    if suffix is not None:
        return suffix.lower()
    if isinstance(target, (str, os.PathLike)):
        return Path(target).suffix.lower()
    raise InputError(
        "saving to a file object needs a suffix (e.g. suffix='.wav') to pick the format"
    )


def save_format(
    target: str | os.PathLike[str] | BinaryIO,
    suffix: str | None,
    formats: Mapping[str, T],
    what: str,
    *,
    choices: str | None = None,
) -> T:
    """The format `formats` maps the save suffix to (see `save_suffix`), for writing `what`.

    `choices` words the suffixes in the error (default: all of them, comma-separated).

    Raises:
        InputError: no suffix, or one `formats` lacks (the message lists those it has).
    """
    chosen = save_suffix(target, suffix)
    if chosen in formats:
        return formats[chosen]
    where = f"{target}: " if isinstance(target, (str, os.PathLike)) else ""
    kind = repr(chosen) if chosen else "a file without suffix"
    choices = choices or ", ".join(formats)
    raise InputError(f"{where}cannot write {what} as {kind}; use {choices}")


class CodecOption(BaseModel):
    """A command-line option a modality adds to `anygpt run`, `encode`, `decode` and `chat`.

    `name` is a Python identifier; the flag is `--` + name with `_` replaced by `-`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Identifier, e.g. `music_tokenizer_path`.")
    help: str = Field(description="One line for --help.")
    type: Literal["str", "path", "int", "float", "bool"] = Field("str", description="Value type.")
    default: str | int | float | bool | None = Field(
        None, description="Value when the flag is absent."
    )

    @property
    def flag(self) -> str:
        """The command-line spelling, e.g. `--music-tokenizer-path`."""
        return "--" + self.name.replace("_", "-")

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"option name {value!r} must be a lowercase identifier")
        return value


class Instructions(BaseModel):
    """Phrasings used in base-model prompts, in the reference's `other2text`/`text2other` roles."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    to_text: tuple[str, ...] = Field(
        description="Ask to turn this modality into text (other2text)."
    )
    from_text: tuple[str, ...] = Field(
        description="Ask to turn text into this modality (text2other)."
    )


class ModalitySpec(BaseModel):
    """A modality: its tokens in the LLM vocabulary, its codec and how to decode inside its spans.

    The tokens are `<{prefix}{i}>` for i in 0..codebook_size*num_codebooks-1, then `start`, then `end`.
    RVQ codebooks are flattened frame-major: frame t, layer k is token `code + codebook_size * k`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(description="Lowercase identifier used in instructions, e.g. `sequence`.")
    prefix: str = Field(description="Token prefix, e.g. `🎶` (token `<🎶17>`).")
    start: str = Field(description="Span start token, e.g. `<somu>`.")
    end: str = Field(description="Span end token, e.g. `<eomu>`.")
    codebook_size: int = Field(gt=0, description="Codes per codebook.")
    num_codebooks: int = Field(1, gt=0, description="RVQ layers per frame (flattened frame-major).")
    fixed_frames: int | None = Field(
        None, gt=0, description="Every item has exactly this many frames (e.g. 32)."
    )
    frame_rate: float | None = Field(
        None, gt=0, description="Frames per second, for timed media (shown by `anygpt plugins`)."
    )
    max_frames: int | None = Field(
        None, gt=0, description="Longest span the loop lets a model write."
    )
    decoding: DecodingConfig = Field(description="Default decoding config inside this modality.")
    input_extensions: tuple[str, ...] = Field(
        (),
        description="Lowercase file suffixes encode reads, e.g. `.wav`; a file with another is "
        "refused before its codec sees it. Empty: any.",
    )
    output_extension: str = Field(description="Suffix of files decode writes, e.g. `.wav`.")
    instructions: Instructions = Field(description="Prompt phrasings for this modality.")
    options: tuple[CodecOption, ...] = Field((), description="CLI options passed to the codec.")
    codec_factory: Callable[[Mapping[str, Any]], Codec] = Field(
        description="Build the codec from option values; called lazily, must not load weights yet."
    )
    description: str = Field("", description="One line for `anygpt plugins`.")
    rank: int = Field(
        100,
        ge=0,
        description=(
            "Place among the modalities (vocabulary extension, listings), lowest first, ties by "
            "name; the published models' modalities take 0, 1, 2."
        ),
    )
    turn_rank: int = Field(
        50,
        ge=0,
        description=(
            "Place of this modality's spans in a chat user turn, lowest first, ties by name "
            "(the reference's interleaved rule: image, music, the others, speech)."
        ),
    )
    turn_template: str | None = Field(
        None,
        description=(
            "Wraps a chat user turn that holds this modality's spans; `{turn}` stands for the "
            "turn (the reference's Speech-Instruction prompt)."
        ),
    )
    condition: str | None = Field(
        None,
        description=(
            "What a decoding condition file is to this modality's codec, e.g. `voice`; None: it "
            "takes none. A chat's voice prompt conditions the modalities whose condition is "
            "`voice`."
        ),
    )

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"modality name {value!r} must be a lowercase identifier")
        return value

    @field_validator("input_extensions")
    @classmethod
    def _suffixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for suffix in value:
            if not suffix.startswith(".") or suffix != suffix.lower():
                raise ValueError(f"input extension {suffix!r} must be a lowercase `.suffix`")
        return value

    @model_validator(mode="after")
    def _tokens_distinct(self) -> ModalitySpec:
        if self.start == self.end:
            raise ValueError("start and end tokens must differ")
        if self.turn_template is not None and self.turn_template.count("{turn}") != 1:
            raise ValueError("turn_template must hold `{turn}` once")
        if not self.prefix or any(c in self.prefix for c in "<>0123456789"):
            raise ValueError(
                f"prefix {self.prefix!r} must be non-empty without digits or angle brackets"
            )
        return self

    @property
    def vocab_size(self) -> int:
        """Number of code tokens (codebook_size × num_codebooks)."""
        return self.codebook_size * self.num_codebooks

    def code_token(self, index: int) -> str:
        """The token string of flattened code index `index` (already offset by its layer)."""
        return f"<{self.prefix}{index}>"

    def token_strings(self) -> list[str]:
        """All token strings in the canonical order: codes, then start, then end."""
        return [self.code_token(i) for i in range(self.vocab_size)] + [self.start, self.end]


# ---- hooks ----------------------------------------------------------------------------------


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
