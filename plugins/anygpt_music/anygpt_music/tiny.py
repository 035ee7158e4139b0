"""Published EnCodec configs, tiny seeded variants, and the demo checkpoints built from them.

A fresh `EncodecModel` has all-zero codebooks, so every frame would get code 0 and tests would prove
nothing. The tiny builders therefore run the seeded encoder over seeded tones and noise and place
each RVQ layer's codebook on that layer's residuals (sampled frames plus jitter), so that real
input uses many distinct codes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import EncodecModel

__all__ = [
    "audio_config",
    "build_seeded_encodec",
    "music_config",
    "save_tiny_audio_codec",
    "save_tiny_music_codec",
    "seeded_signal",
    "write_demo_assets",
]

#: Only widths change in the tiny presets; rates, ratios, codebook sizes, bandwidths stay published.
TINY_WIDTHS: dict[str, Any] = {"num_filters": 4, "hidden_size": 16, "codebook_dim": 16}

_ENCODEC_FIELDS: dict[str, Any] = {
    "architectures": ["EncodecModel"],
    "audio_channels": 1,
    "chunk_length_s": None,
    "compress": 2,
    "dilation_growth_rate": 2,
    "kernel_size": 7,
    "last_kernel_size": 7,
    "model_type": "encodec",
    "norm_type": "weight_norm",
    "normalize": False,
    "num_lstm_layers": 2,
    "num_residual_layers": 1,
    "overlap": None,
    "pad_mode": "reflect",
    "residual_kernel_size": 3,
    "trim_right_ratio": 1.0,
}


def music_config(**overrides: Any) -> dict[str, Any]:  # noqa: ANN401 - config.json values
    """config.json fields of `facebook/encodec_32khz`, with `overrides` applied."""
    fields = {
        **_ENCODEC_FIELDS,
        "codebook_dim": 128,
        "codebook_size": 2048,
        "hidden_size": 128,
        "num_filters": 64,
        "sampling_rate": 32_000,
        "target_bandwidths": [2.2],
        "upsampling_ratios": [8, 5, 4, 4],
        "use_causal_conv": False,
        "use_conv_shortcut": False,
    }
    return {**fields, **overrides}


def audio_config(**overrides: Any) -> dict[str, Any]:  # noqa: ANN401 - config.json values
    """config.json fields of `facebook/encodec_24khz`, with `overrides` applied."""
    fields = {
        **_ENCODEC_FIELDS,
        "codebook_dim": 128,
        "codebook_size": 1024,
        "hidden_size": 128,
        "num_filters": 32,
        "sampling_rate": 24_000,
        "target_bandwidths": [1.5, 3.0, 6.0, 12.0, 24.0],
        "upsampling_ratios": [8, 5, 4, 2],
        "use_causal_conv": True,
        "use_conv_shortcut": True,
    }
    return {**fields, **overrides}


def seeded_signal(sample_rate: int, seconds: float, *, seed: int = 0) -> torch.Tensor:
    """Seeded mono audio: drifting tones, noise bursts and hiss; float32 [samples] in [-1, 1]."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = int(sample_rate * seconds)
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    wav = torch.zeros(n, dtype=torch.float64)
    for _ in range(4):
        f0 = 80.0 * 2 ** (6 * torch.rand((), generator=gen, dtype=torch.float64))
        drift = 1 + 0.5 * torch.sin(
            2 * math.pi * 0.3 * t + 6 * torch.rand((), generator=gen).item()
        )
        wav += 0.2 * torch.sin(2 * math.pi * f0 * t * drift)
    envelope = (torch.sin(2 * math.pi * 1.7 * t) > 0.6).double()
    wav += 0.3 * envelope * torch.randn(n, generator=gen, dtype=torch.float64)
    wav += 0.05 * torch.randn(n, generator=gen, dtype=torch.float64)
    return (wav / wav.abs().max().clamp(min=1.0)).float()


def build_seeded_encodec(
    config: dict[str, Any], *, seed: int = 0, seconds: float = 4.0
) -> EncodecModel:
    """A transformers `EncodecModel` with seeded weights and codebooks fitted to its own latents.

    Args:
        config: config.json fields (e.g. `music_config(**TINY_WIDTHS)`).
        seed: seeds the weights, the fitting audio and the codebook sampling.
        seconds: length of the seeded audio whose latents the codebooks are drawn from.
    """
    import torch
    from transformers import EncodecConfig, EncodecModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EncodecModel(EncodecConfig.from_dict(config)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    wav = seeded_signal(model.config.sampling_rate, seconds, seed=seed)
    with torch.inference_mode():
        latents = model.encoder(wav[None, None, :])[0].T  # (frames, dim)
        residual = latents.clone()
        size = model.config.codebook_size
        for layer in model.quantizer.layers:
            book = layer.codebook
            picks = torch.randint(0, residual.shape[0], (size,), generator=gen)
            spread = residual.std(dim=0, keepdim=True).clamp(min=1e-4)
            jitter = 0.5 * spread * torch.randn(size, residual.shape[1], generator=gen)
            embed = residual[picks] + jitter
            book.embed.copy_(embed)
            book.embed_avg.copy_(embed)
            book.cluster_size.fill_(1.0)
            residual = residual - book.decode(book.quantize(residual))
    return model


def _save(model: EncodecModel, directory: Path) -> Path:
    from transformers.utils import logging as hf_logging

    directory.mkdir(parents=True, exist_ok=True)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the CLI owns the terminal
    try:
        model.save_pretrained(str(directory))
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return directory


def save_tiny_music_codec(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny seeded EnCodec 32 kHz in the `facebook/encodec_32khz` file layout."""
    return _save(build_seeded_encodec(music_config(**TINY_WIDTHS), seed=seed), Path(directory))


def save_tiny_audio_codec(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny seeded EnCodec 24 kHz in the `facebook/encodec_24khz` file layout."""
    return _save(build_seeded_encodec(audio_config(**TINY_WIDTHS), seed=seed), Path(directory))


def write_demo_assets(directory: Path) -> dict[str, str]:
    """Write both tiny codecs under `directory` and return the option values that point at them."""
    directory = Path(directory)
    music = save_tiny_music_codec(directory / "encodec_32khz", seed=0)
    audio = save_tiny_audio_codec(directory / "encodec_24khz", seed=1)
    return {"music_tokenizer_path": str(music), "audio_tokenizer_path": str(audio)}
