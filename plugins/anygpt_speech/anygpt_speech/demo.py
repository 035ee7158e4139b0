"""Tiny seeded checkpoints in the published file layouts, for tests and the embedded demo.

Layout (as in `fnlp/AnyGPT-speech-modules`):

```
speechtokenizer/config.json                     SpeechTokenizer config (JSON)
speechtokenizer/ckpt.dev                        plain state dict (torch.save)
soundstorm/speechtokenizer_soundstorm_mls.pt    plain state dict (torch.save)
soundstorm/config.json                          the tiny architecture (--soundstorm-config)
```
"""

from __future__ import annotations

import json
from pathlib import Path

from anygpt_speech.checkpoints import SOUNDSTORM_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

__all__ = [
    "SOUNDSTORM_CONFIG_FILE",
    "demo_options",
    "write_tiny_soundstorm",
    "write_tiny_tokenizer",
]

#: Our addition to the published layout: the tiny SoundStorm is not the published size.
SOUNDSTORM_CONFIG_FILE = "soundstorm/config.json"


def write_tiny_tokenizer(directory: Path, *, activation: str = "Snake", seed: int = 0) -> Path:
    """Write a tiny SpeechTokenizer with calibrated codebooks; return the checkpoint path."""
    import torch

    from anygpt_speech.tokenizer import (
        SpeechTokenizerConfig,
        build_speech_tokenizer,
        calibrate_codebooks,
    )

    config = SpeechTokenizerConfig.tiny(activation=activation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_speech_tokenizer(config)
        calibrate_codebooks(model, seed=seed)
    ckpt = directory / TOKENIZER_FILE
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, ckpt)
    return ckpt


def write_tiny_soundstorm(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny seeded SoundStorm (plain state dict) and its config; return its path."""
    import torch

    from anygpt_speech.soundstorm import SoundStorm, SoundStormConfig

    config = SoundStormConfig.tiny()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SoundStorm(config)
    path = directory / SOUNDSTORM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    (directory / SOUNDSTORM_CONFIG_FILE).write_text(
        json.dumps(config.model_dump(), indent=2) + "\n"
    )
    torch.save(model.state_dict(), path)
    return path


def demo_options(directory: Path) -> dict[str, str]:
    """Write both tiny models into `directory`; return the option values that load them."""
    tokenizer = write_tiny_tokenizer(directory)
    soundstorm = write_tiny_soundstorm(directory)
    return {
        "speech_tokenizer_path": str(tokenizer),
        "speech_tokenizer_config": str(directory / TOKENIZER_CONFIG_FILE),
        "soundstorm_path": str(soundstorm),
        "soundstorm_config": str(directory / SOUNDSTORM_CONFIG_FILE),
    }
