"""Music codec: transformers' `EncodecModel` in the `facebook/encodec_32khz` layout.

32 kHz mono, hop 640 (50 frames/s), 4 codebooks of 2048 at its only bandwidth (2.2 kbps), as AnyGPT
uses it (REFERENCE.md §6). Unlike the reference, input is read from its start, not a random offset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from anygpt_core.checkpoints import check_state_dict, read_state_dict
from anygpt_core.codec import CodecOptions
from anygpt_core.errors import CheckpointError
from anygpt_music.base import WaveCodec
from anygpt_music.keys import to_parametrized_weight_norm, training_only
from anygpt_music.loading import read_config, resolve_encodec

if TYPE_CHECKING:
    import torch
    from transformers import EncodecConfig, EncodecModel

__all__ = [
    "MUSIC_CODEBOOK_SIZE",
    "MUSIC_FRAME_RATE",
    "MUSIC_HUB_ID",
    "MUSIC_HUB_REVISION",
    "MUSIC_NUM_CODEBOOKS",
    "MUSIC_SAMPLE_RATE",
    "MusicCodec",
    "MusicOptions",
    "load_transformers_encodec",
]

logger = logging.getLogger(__name__)

MUSIC_HUB_ID = "facebook/encodec_32khz"
#: Revision read when `--music-tokenizer-path` names the hub id without `@revision`. "main" is the
#: revision whose config has `use_conv_shortcut: false`; the architecture is always built from the
#: folder's own config.json, so config and weights cannot disagree.
MUSIC_HUB_REVISION = "main"
MUSIC_SAMPLE_RATE = 32_000
MUSIC_CODEBOOK_SIZE = 2048
MUSIC_NUM_CODEBOOKS = 4
MUSIC_FRAME_RATE = 50


def load_transformers_encodec(
    value: str | Path, *, flag: str, default_revision: str | None
) -> tuple[EncodecModel, str]:
    """Load a transformers-layout EnCodec folder or hub id (config.json + model.safetensors).

    Both weight-norm spellings load (`weight_g`/`weight_v` of older hub files and today's
    `parametrizations.weight.original0/1`); any other difference is a `CheckpointError`.

    Returns:
        The model in eval mode on the CPU, and the folder it came from (for messages).
    """
    from transformers import EncodecConfig, EncodecModel

    path = resolve_encodec(value, flag=flag, default_revision=default_revision)
    folder = path.parent if path.is_file() else path
    data = read_config(folder)
    try:
        config = EncodecConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'config.json'}: invalid EnCodec config ({err})") from err
    model = EncodecModel(config)
    state = to_parametrized_weight_norm(read_state_dict(path))
    check_state_dict(
        state, model.state_dict(), source=folder, what="the EnCodec model", optional=training_only
    )
    model.load_state_dict(state, strict=False)
    model.eval()
    return model, str(folder)


def _num_codebooks(config: EncodecConfig, bandwidth: float) -> int:
    bits = (config.codebook_size - 1).bit_length()
    return max(1, int(bandwidth * 1000 // (config.frame_rate * bits)))


class MusicOptions(CodecOptions):
    """The music codec's options (`--music-*`)."""

    music_tokenizer_path: str = Field(
        MUSIC_HUB_ID,
        description="EnCodec 32 kHz: folder (config.json, model.safetensors) or hub id, "
        "optionally @revision.",
    )
    music_seconds: float = Field(
        20.0, gt=0, description="Music input longer than this is cut to its first N seconds."
    )


class MusicCodec(WaveCodec[MusicOptions]):
    """EnCodec 32 kHz: mono audio <-> int64 codes [4, T] at 50 frames per second.

    Options (`MusicOptions`): `music_tokenizer_path`, a folder with config.json and
    model.safetensors or a hub id (`owner/name[@revision]`); `music_seconds`, longer input is cut
    to its first N seconds with a logged notice.
    """

    Options = MusicOptions
    name = "music"
    sample_rate = MUSIC_SAMPLE_RATE
    num_codebooks = MUSIC_NUM_CODEBOOKS
    codebook_size = MUSIC_CODEBOOK_SIZE
    frame_rate = MUSIC_FRAME_RATE
    _bandwidth = 0.0

    @property
    def max_seconds(self) -> float:
        """`--music-seconds`."""
        return self.options.music_seconds

    def _load(self) -> Any:  # noqa: ANN401 - a transformers EncodecModel
        model, folder = load_transformers_encodec(
            self.options.music_tokenizer_path,
            flag="--music-tokenizer-path",
            default_revision=MUSIC_HUB_REVISION,
        )
        config = model.config
        bandwidth = float(config.target_bandwidths[0])
        found = {
            "sampling_rate": config.sampling_rate,
            "audio_channels": config.audio_channels,
            "codebook_size": config.codebook_size,
            "frame_rate": config.frame_rate,
            "codebooks": _num_codebooks(config, bandwidth),
        }
        wanted = {
            "sampling_rate": MUSIC_SAMPLE_RATE,
            "audio_channels": 1,
            "codebook_size": MUSIC_CODEBOOK_SIZE,
            "frame_rate": MUSIC_FRAME_RATE,
            "codebooks": MUSIC_NUM_CODEBOOKS,
        }
        wrong = [f"{k} {found[k]} (need {v})" for k, v in wanted.items() if found[k] != v]
        if wrong:
            raise CheckpointError(
                f"{folder}: not an EnCodec 32 kHz music codec: {', '.join(wrong)}"
            )
        self._bandwidth = bandwidth
        logger.info("music codec loaded from %s", folder)
        return model

    def _encode_wave(self, wav: torch.Tensor) -> torch.Tensor:
        model = self.model()
        out = model.encode(wav[None, None, :], bandwidth=self._bandwidth, return_dict=True)
        return out.audio_codes[0, 0]  # (chunks=1, B=1, K, T) -> (K, T)

    def _decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        model = self.model()
        out = model.decode(codes[None, None], [None], return_dict=True)
        return out.audio_values[0, 0]  # (B, C, samples) -> (samples,)
