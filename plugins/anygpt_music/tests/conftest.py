"""Fixtures of the anygpt-music tests: tiny seeded codecs written in the published file layouts."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import soundfile as sf
from anygpt_music.tiny import save_tiny_audio_codec, save_tiny_music_codec, seeded_signal


@pytest.fixture(scope="session")
def tiny_music_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_music_codec(tmp_path_factory.mktemp("music") / "encodec_32khz", seed=0)


@pytest.fixture(scope="session")
def tiny_audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_audio_codec(tmp_path_factory.mktemp("audio") / "encodec_24khz", seed=1)


@pytest.fixture
def write_audio(tmp_path: Path):
    """write_audio(name, rate, seconds, channels=1, **soundfile kwargs) -> Path of seeded audio."""

    def write(name: str, rate: int, seconds: float, channels: int = 1, **kwargs) -> Path:
        mono = seeded_signal(rate, seconds, seed=7).numpy() * 0.8
        data = (
            np.stack([mono, np.roll(mono, 17) * 0.5][:channels], axis=1) if channels > 1 else mono
        )
        path = tmp_path / name
        sf.write(str(path), data, rate, **kwargs)
        return path

    return write
