"""Errors the user sees: one root, one exit code per family.

The core raises these and never prints or exits; the CLI turns them into one line on stderr and the
family's exit code. Exit code 2 stays Typer's usage error.
"""

from __future__ import annotations

import re
from typing import ClassVar

__all__ = [
    "AnyGPTError",
    "CheckpointError",
    "ConfigError",
    "EngineUnavailableError",
    "GenerationError",
    "InputError",
    "ModalityUnavailableError",
    "OutputError",
    "PluginError",
    "first_line",
]


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when it has none), for one-line reports.

    torch's refusal of a pickle (`torch.load(weights_only=True)`) opens with paragraphs of advice
    on how to load it anyway; the line kept is the one naming what the file holds.
    """
    text = str(err).strip()
    if text.startswith("Weights only load failed"):
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        detail = f": {found.group(1).split('. ')[0].strip().rstrip('.')}" if found else ""
        return f"it holds pickled objects that a weights-only load refuses{detail}"
    return text.splitlines()[0] if text else type(err).__name__


class AnyGPTError(Exception):
    """Root of every error the CLI reports as one line."""

    exit_code: ClassVar[int] = 1


class InputError(AnyGPTError):
    """A missing, empty, corrupt or unsupported input, or an instruction that cannot be parsed."""

    exit_code: ClassVar[int] = 3


class OutputError(InputError):
    """An output location that cannot be written: not a directory, no permission, a full disk."""


class CheckpointError(AnyGPTError):
    """A missing model or checkpoint, or one whose files, keys or shapes do not match."""

    exit_code: ClassVar[int] = 4


class PluginError(AnyGPTError):
    """A modality without an installed plugin, or a plugin that is broken or blocked."""

    exit_code: ClassVar[int] = 5


class ModalityUnavailableError(PluginError):
    """The model's tokenizer lacks the tokens of a modality, so it cannot read or write it."""


class ConfigError(AnyGPTError):
    """A decoding or training configuration with an unknown or invalid field."""

    exit_code: ClassVar[int] = 6


class GenerationError(AnyGPTError):
    """The model produced something that cannot be turned into the requested output."""

    exit_code: ClassVar[int] = 7


class DeadlineError(GenerationError):
    """A request that ran past the time its caller gave it (a server's request timeout)."""


class EngineUnavailableError(AnyGPTError):
    """The generation engine cannot be reached: a vLLM server that is down, failing or gone.

    A server in front of it answers 503; the request may be retried later.
    """

    exit_code: ClassVar[int] = 8
