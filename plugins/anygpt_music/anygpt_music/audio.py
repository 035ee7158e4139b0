"""Audio codec (the reserved `audio` modality): EnCodec 24 kHz at 3 kbps via the `encodec` package.

24 kHz mono, hop 320 (75 frames/s), 4 codebooks of 1024. Weights load from either published layout:

- the `encodec` package's original checkpoint (`encodec_24khz-d7cc33bc.th`, a plain state dict),
  given as the file or a folder holding it: the architecture is the package's published 24 kHz
  model;
- a transformers folder or hub id (`facebook/encodec_24khz`: config.json + model.safetensors): the
  architecture is built from config.json and the tensors renamed by `anygpt_music.keys`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from anygpt_core.checkpoints import check_state_dict, read_state_dict
from anygpt_core.codec import CodecOptions
from anygpt_core.errors import CheckpointError
from anygpt_music.base import WaveCodec
from anygpt_music.keys import to_encodec_names, training_only
from anygpt_music.loading import read_config, resolve_encodec

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUDIO_BANDWIDTH",
    "AUDIO_CODEBOOK_SIZE",
    "AUDIO_FRAME_RATE",
    "AUDIO_HUB_ID",
    "AUDIO_NUM_CODEBOOKS",
    "AudioCodec",
    "AudioOptions",
    "build_encodec_model",
    "load_encodec_package_model",
]

logger = logging.getLogger(__name__)

AUDIO_HUB_ID = "facebook/encodec_24khz"
AUDIO_HUB_REVISION = "main"
AUDIO_SAMPLE_RATE = 24_000
AUDIO_BANDWIDTH = 3.0
AUDIO_CODEBOOK_SIZE = 1024
AUDIO_NUM_CODEBOOKS = 4
AUDIO_FRAME_RATE = 75
#: The original checkpoint files end in these suffixes (`torch.save` output).
ORIGINAL_SUFFIXES = (".th", ".pt", ".pth")


def build_encodec_model(config: dict[str, Any] | None = None) -> Any:  # noqa: ANN401 - encodec model
    """Build an `encodec.EncodecModel` with random weights.

    Args:
        config: transformers `EncodecConfig` fields (config.json); None builds the package's
            published 24 kHz model.

    Raises:
        CheckpointError: a config the `encodec` package cannot express.
    """
    from encodec import EncodecModel
    from encodec.modules import SEANetDecoder, SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer
    from transformers import EncodecConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's old weight_norm, used by encodec
        if config is None:
            return EncodecModel.encodec_model_24khz(pretrained=False)
        cfg = EncodecConfig.from_dict(config)
        if cfg.norm_type != "weight_norm":
            raise CheckpointError(f"norm_type {cfg.norm_type!r}: the audio codec needs weight_norm")
        common: dict[str, Any] = {
            "channels": cfg.audio_channels,
            "dimension": cfg.hidden_size,
            "n_filters": cfg.num_filters,
            "n_residual_layers": cfg.num_residual_layers,
            "ratios": list(cfg.upsampling_ratios),
            "kernel_size": cfg.kernel_size,
            "last_kernel_size": cfg.last_kernel_size,
            "residual_kernel_size": cfg.residual_kernel_size,
            "dilation_base": cfg.dilation_growth_rate,
            "causal": cfg.use_causal_conv,
            "pad_mode": cfg.pad_mode,
            "true_skip": not cfg.use_conv_shortcut,
            "compress": cfg.compress,
            "lstm": cfg.num_lstm_layers,
        }
        encoder = SEANetEncoder(**common)
        decoder = SEANetDecoder(**common, trim_right_ratio=cfg.trim_right_ratio)
        quantizer = ResidualVectorQuantizer(
            dimension=cfg.codebook_dim or cfg.hidden_size,
            n_q=cfg.num_quantizers,
            bins=cfg.codebook_size,
        )
        return EncodecModel(
            encoder,
            decoder,
            quantizer,
            list(cfg.target_bandwidths),
            cfg.sampling_rate,
            cfg.audio_channels,
            normalize=cfg.normalize,
            segment=cfg.chunk_length_s,
            overlap=cfg.overlap if cfg.overlap is not None else 0.01,
            name="encodec_from_transformers",
        )


def _original_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix in ORIGINAL_SUFFIXES:
        return path
    if path.is_dir() and not (path / "config.json").exists():
        found = sorted(p for p in path.glob("encodec_24khz*") if p.suffix in ORIGINAL_SUFFIXES)
        return found[0] if found else None
    return None


def load_encodec_package_model(value: str | Path) -> tuple[Any, str]:
    """Load an `encodec.EncodecModel` from an original checkpoint or a transformers layout.

    Returns:
        The model in eval mode on the CPU, and where it came from (for messages).

    Raises:
        CheckpointError: nothing loadable there, or tensors that do not fit the architecture.
    """
    path = resolve_encodec(
        value, flag="--audio-tokenizer-path", default_revision=AUDIO_HUB_REVISION
    )
    original = _original_file(path)
    if original is not None:
        model = build_encodec_model(None)
        state = read_state_dict(original)
        where = str(original)
    else:
        folder = path.parent if path.is_file() else path
        try:
            model = build_encodec_model(read_config(folder))
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{folder / 'config.json'}: invalid EnCodec config ({err})"
            ) from err
        expected_keys = model.state_dict().keys()
        state = to_encodec_names(read_state_dict(path), expected_keys)
        where = str(folder)
    check_state_dict(
        state, model.state_dict(), source=where, what="the EnCodec model", optional=training_only
    )
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, where


class AudioOptions(CodecOptions):
    """The audio codec's options (`--audio-*`)."""

    audio_tokenizer_path: str = Field(
        AUDIO_HUB_ID,
        description="EnCodec 24 kHz: encodec .th file, transformers folder or hub id, "
        "optionally @revision.",
    )
    audio_seconds: float = Field(
        10.0, gt=0, description="Audio input longer than this is cut to its first N seconds."
    )


class AudioCodec(WaveCodec[AudioOptions]):
    """EnCodec 24 kHz at 3 kbps: mono audio <-> int64 codes [4, T] at 75 frames per second.

    Options (`AudioOptions`): `audio_tokenizer_path`, an original `.th` checkpoint (or a folder
    holding `encodec_24khz-*.th`), a transformers folder, or a hub id (`owner/name[@revision]`);
    `audio_seconds`, longer input is cut to its first N seconds with a logged notice.
    """

    Options = AudioOptions
    name = "audio"
    sample_rate = AUDIO_SAMPLE_RATE
    num_codebooks = AUDIO_NUM_CODEBOOKS
    codebook_size = AUDIO_CODEBOOK_SIZE
    frame_rate = AUDIO_FRAME_RATE

    @property
    def max_seconds(self) -> float:
        """`--audio-seconds`."""
        return self.options.audio_seconds

    def _load(self) -> Any:  # noqa: ANN401 - an encodec.EncodecModel
        model, where = load_encodec_package_model(self.options.audio_tokenizer_path)
        bins = model.quantizer.bins
        if (
            model.sample_rate != AUDIO_SAMPLE_RATE
            or model.channels != 1
            or bins != AUDIO_CODEBOOK_SIZE
        ):
            raise CheckpointError(
                f"{where}: not an EnCodec 24 kHz mono codec with "
                f"{AUDIO_CODEBOOK_SIZE}-code codebooks"
            )
        if model.segment is not None:
            raise CheckpointError(
                f"{where}: a chunked (segment {model.segment} s) codec; need one chunk"
            )
        if AUDIO_BANDWIDTH not in model.target_bandwidths:
            raise CheckpointError(
                f"{where}: the codec offers no {AUDIO_BANDWIDTH:g} kbps bandwidth"
            )
        model.set_target_bandwidth(AUDIO_BANDWIDTH)
        n_q = model.quantizer.get_num_quantizers_for_bandwidth(model.frame_rate, AUDIO_BANDWIDTH)
        if n_q != AUDIO_NUM_CODEBOOKS or model.frame_rate != self.frame_rate:
            raise CheckpointError(
                f"{where}: {AUDIO_BANDWIDTH:g} kbps gives {n_q} codebooks at {model.frame_rate} "
                f"frames/s (need {AUDIO_NUM_CODEBOOKS} at {self.frame_rate})"
            )
        logger.info("audio codec loaded from %s", where)
        return model

    def _encode_wave(self, wav: torch.Tensor) -> torch.Tensor:
        ((codes, _scale),) = self.model().encode(wav[None, None, :])  # one chunk: segment is None
        return codes[0]  # (B=1, K, T) -> (K, T)

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model().decode([(codes[None], None)])[0, 0]  # (B, C, samples) -> (samples,)
