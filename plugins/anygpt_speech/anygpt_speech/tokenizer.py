"""SpeechTokenizer (the `speechtokenizer==0.1.2` package): config checks, safe loading, tiny builds.

The published `speechtokenizer/config.json` + `ckpt.dev` pair loads unchanged: the model is built
from the JSON config with `SpeechTokenizer(config)` and the plain state dict is read with
`torch.load(weights_only=True)` and copied strictly (the package's own `load_from_checkpoint` would
unpickle arbitrary code). Both activations of the package, `ELU` and `Snake`, are supported.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from anygpt_core.checkpoints import check_state_dict, read_state_dict
from anygpt_core.config import format_validation_error
from anygpt_core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from speechtokenizer import SpeechTokenizer

__all__ = [
    "CODEBOOK_SIZE",
    "FRAME_RATE",
    "SpeechTokenizerConfig",
    "build_speech_tokenizer",
    "calibrate_codebooks",
    "decode_codes",
    "encode_all_layers",
    "load_speech_tokenizer",
]

#: Codes per RVQ layer; the speech modality has exactly this many tokens.
CODEBOOK_SIZE = 1024
#: Code frames per second of the published model (16 kHz, hop 320).
FRAME_RATE = 50.0


class SpeechTokenizerConfig(BaseModel):
    """The model-shaping fields of a SpeechTokenizer `config.json`; training fields pass through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    n_filters: int = Field(gt=0, description="Channels of the first SEANet convolution.")
    strides: list[int] = Field(
        min_length=1, description="Downsampling ratios; their product is the hop."
    )
    dimension: int = Field(gt=0, description="Latent (and codebook vector) width.")
    semantic_dimension: int = Field(
        gt=0, description="Width of the training-only semantic projection."
    )
    bidirectional: bool = Field(description="Bidirectional LSTM in the encoder.")
    dilation_base: int = Field(gt=0, description="Dilation growth of the residual blocks.")
    residual_kernel_size: int = Field(gt=0, description="Kernel of the residual convolutions.")
    n_residual_layers: int = Field(gt=0, description="Residual blocks per stage.")
    lstm_layers: int = Field(ge=0, description="LSTM layers after the convolutions.")
    activation: str = Field(description="`ELU` or `Snake`.")
    codebook_size: int = Field(description="Codes per RVQ layer; must be 1024.")
    n_q: int = Field(ge=2, description="RVQ layers: layer 0 is semantic, the rest acoustic.")
    sample_rate: int = Field(gt=0, description="Audio rate the model works at.")

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        if value not in {"ELU", "Snake"}:
            raise ValueError(f"expected 'ELU' or 'Snake', got {value!r}")
        return value

    @field_validator("codebook_size")
    @classmethod
    def _speech_vocabulary(cls, value: int) -> int:
        if value != CODEBOOK_SIZE:
            raise ValueError(f"the speech modality has {CODEBOOK_SIZE} codes, got {value}")
        return value

    @property
    def hop_length(self) -> int:
        """Samples per code frame (320 for the published model: 50 frames per second at 16 kHz)."""
        return math.prod(self.strides)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str) -> SpeechTokenizerConfig:
        """Validate a parsed config file.

        Raises:
            ConfigError: one line naming `source` and every bad or missing field.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(f"{source}: {format_validation_error(err)}") from err

    @classmethod
    def published(cls) -> SpeechTokenizerConfig:
        """The architecture of AnyGPT's speech tokenizer (with Snake activations)."""
        return cls(
            n_filters=64,
            strides=[8, 5, 4, 2],
            dimension=1024,
            semantic_dimension=768,
            bidirectional=True,
            dilation_base=2,
            residual_kernel_size=3,
            n_residual_layers=1,
            lstm_layers=2,
            activation="Snake",
            codebook_size=CODEBOOK_SIZE,
            n_q=8,
            sample_rate=16000,
        )

    @classmethod
    def tiny(cls, *, activation: str = "Snake") -> SpeechTokenizerConfig:
        """The published structure at test size: same hop, rate and codebooks, narrow layers."""
        return cls.published().model_copy(
            update={
                "n_filters": 4,
                "dimension": 32,
                "semantic_dimension": 16,
                "lstm_layers": 1,
                "activation": activation,
            }
        )


def build_speech_tokenizer(config: SpeechTokenizerConfig) -> SpeechTokenizer:
    """A randomly initialised `speechtokenizer.SpeechTokenizer` in eval mode."""
    with warnings.catch_warnings():
        # The package uses torch.jit.script and torch.nn.utils.weight_norm: deprecated, but its keys
        # (weight_g, weight_v) need the latter.
        warnings.simplefilter("ignore", FutureWarning)
        from speechtokenizer import SpeechTokenizer

        model = SpeechTokenizer(config.model_dump())
    return model.eval()


def load_speech_tokenizer(ckpt: Path, config_path: Path, config: dict[str, Any]) -> SpeechTokenizer:
    """Build from a parsed config and strictly load a weights-only state dict.

    Raises:
        ConfigError: the config lacks or misstates a field.
        CheckpointError: the checkpoint cannot be read or does not match the config.
    """
    parsed = SpeechTokenizerConfig.from_json(config, source=str(config_path))
    state = read_state_dict(ckpt)
    model = build_speech_tokenizer(parsed)
    check_state_dict(
        state,
        model.state_dict(),
        source=ckpt,
        what="the SpeechTokenizer model",
        hint=f"is {config_path} (activation {parsed.activation!r}) the config of this checkpoint?",
    )
    model.load_state_dict(state, strict=True)
    return model


def calibrate_codebooks(model: SpeechTokenizer, *, seed: int = 0, seconds: float = 5.5) -> None:
    """Give an untrained model usable codebooks, in place.

    A fresh SpeechTokenizer has all-zero codebooks (they wait for k-means on training data), so
    every frame gets the same code. This encodes seeded synthetic speech-like signals and fills each
    RVQ layer with residual latent frames of that layer, so codes spread over the codebook.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    rate = model.sample_rate
    time = torch.arange(int(seconds * rate)) / rate
    signals = []
    for _ in range(4):
        pitch = 90 + 160 * torch.rand(3, generator=generator)
        glide = 1 + 0.3 * torch.sin(
            2 * math.pi * 0.4 * time + 6 * torch.rand(1, generator=generator)
        )
        phase = torch.cumsum(pitch[0] * glide / rate, 0) * 2 * math.pi
        voiced = sum(torch.sin(k * phase) / k for k in range(1, 6))
        envelope = torch.sin(2 * math.pi * (1 + 3 * torch.rand(1, generator=generator)) * time) ** 2
        noise = torch.randn(time.shape, generator=generator) * (1 - envelope)
        signals.append(0.3 * voiced * envelope + 0.1 * noise)
    wav = torch.stack(signals)[:, None]  # (B, 1, T)
    with torch.inference_mode():
        latents = model.encoder(wav)  # (B, D, frames)
    residual = latents.transpose(1, 2).reshape(-1, latents.shape[1]).clone()
    for layer in model.quantizer.vq.layers:
        book = layer._codebook
        size = book.embed.shape[0]
        picks = torch.randperm(residual.shape[0], generator=generator)
        picks = picks.repeat(math.ceil(size / len(picks)))[:size]
        jitter = torch.randn(size, residual.shape[1], generator=generator) * residual.std() * 0.05
        embed = residual[picks] + jitter
        book.embed.copy_(embed)
        book.embed_avg.copy_(embed)
        book.cluster_size.fill_(1.0)
        book.inited.fill_(1.0)
        residual = residual - embed[book.quantize(residual)]


def encode_all_layers(
    model: SpeechTokenizer, wav: torch.Tensor, layers: int | None = None
) -> torch.Tensor:
    """RVQ codes int64 [n_q, frames] of a mono waveform float32 [T] at the model's rate.

    `layers` keeps only the first so many RVQ layers (None: all). Each layer quantises what the
    layers before it left, so the first layers' codes are the same either way; the semantic
    tokens the language model reads need only layer 0, and the seven acoustic layers' nearest-
    code searches are skipped.
    """
    import torch

    with torch.inference_mode():
        codes = model.encode(wav.reshape(1, 1, -1).to(_device_of(model)), n_q=layers)
    return codes[:, 0].long()  # (n_q, 1, frames) -> (n_q, frames)


def decode_codes(model: SpeechTokenizer, codes: torch.Tensor) -> torch.Tensor:
    """A mono waveform float32 [frames * hop] from all RVQ codes int64 [n_q, frames]."""
    import torch

    with torch.inference_mode():
        wav = model.decode(codes[:, None].to(_device_of(model)))  # (1, 1, T)
    return wav.reshape(-1).float().cpu()


def _device_of(model: SpeechTokenizer) -> torch.device:
    return next(model.parameters()).device
