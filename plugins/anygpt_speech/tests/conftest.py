"""Fixtures of the speech plugin's tests: tiny seeded checkpoints and small audio files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ["HF_HUB_OFFLINE"] = "1"

from anygpt_speech.demo import demo_options, write_tiny_tokenizer
from anygpt_speech.plugin import SPEECH


def speech_like(seconds: float, rate: int, *, seed: int, channels: int = 1) -> np.ndarray:
    """A voiced, gliding, amplitude-modulated signal with noise: float32 [T, channels]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for _ in range(channels):
        pitch = 110 + 120 * rng.random()
        phase = 2 * np.pi * np.cumsum(pitch * (1 + 0.25 * np.sin(2 * np.pi * 0.7 * t))) / rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 5))
        envelope = np.sin(2 * np.pi * 2.5 * t) ** 2
        out.append(0.3 * voiced * envelope + 0.05 * rng.standard_normal(t.shape))
    return np.stack(out, axis=1).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech_modules")


@pytest.fixture(scope="session")
def tiny_options(tiny_dir: Path) -> dict[str, object]:
    values = {o.name: o.default for o in SPEECH.options}
    values.update(demo_options(tiny_dir))
    values["speech_device"] = "cpu"
    return values


@pytest.fixture(scope="session")
def elu_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("speech_elu")
    write_tiny_tokenizer(directory, activation="ELU", seed=1)
    return directory


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("speech_audio")
    sf.write(directory / "mono16k.wav", speech_like(2.0, 16000, seed=1), 16000)
    sf.write(directory / "stereo44k.flac", speech_like(1.5, 44100, seed=2, channels=2), 44100)
    sf.write(directory / "voice22k.wav", speech_like(4.0, 22050, seed=3), 22050)
    sf.write(directory / "other_voice.wav", speech_like(3.0, 16000, seed=4), 16000)
    sf.write(directory / "long.wav", np.zeros((16000 * 7, 1), np.float32), 16000)
    sf.write(directory / "tiny.wav", speech_like(0.01, 16000, seed=5), 16000)
    (directory / "empty.wav").write_bytes(b"")
    (directory / "notes.txt").write_text("not audio at all\n")
    (directory / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(12))
    return directory
