"""AnyGPT core: token space, protocol, prompts, plugin contract and the generation loop."""

from __future__ import annotations

from anygpt_core.config import DecodingConfig, load_decoding_config
from anygpt_core.errors import (
    AnyGPTError,
    CheckpointError,
    ConfigError,
    GenerationError,
    InputError,
    ModalityUnavailableError,
    PluginError,
)
from anygpt_core.spec import Codec, CodecOption, Instructions, ModalitySpec, hookimpl

__version__ = "0.1.0"

__all__ = [
    "AnyGPTError",
    "CheckpointError",
    "Codec",
    "CodecOption",
    "ConfigError",
    "DecodingConfig",
    "GenerationError",
    "InputError",
    "Instructions",
    "ModalitySpec",
    "ModalityUnavailableError",
    "PluginError",
    "__version__",
    "hookimpl",
    "load_decoding_config",
]
