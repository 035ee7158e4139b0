"""Hook implementations of `anygpt-music`: the `music` and `audio` modalities and their demo codecs.

Importing this module is cheap: torch, transformers and encodec load inside the codecs on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anygpt_core import CodecOption, DecodingConfig, ModalitySpec, hookimpl
from anygpt_core.audio import AUDIO_SUFFIXES
from anygpt_music.instructions import AUDIO_INSTRUCTIONS, MUSIC_INSTRUCTIONS

__all__ = ["AUDIO", "MUSIC", "anygpt_demo_assets", "anygpt_modalities"]

#: The reference's effective music decoding (config/music_generate_config.json; its
#: min_new_tokens 10 never took effect, so 0). The reference has no audio config; audio shares
#: these values.
MUSIC_DECODING = DecodingConfig(
    temperature=1.0,
    top_p=1.0,
    top_k=200,
    do_sample=True,
    max_new_tokens=2000,
    min_new_tokens=0,
    repetition_penalty=1.15,
)


def _music_codec(options: Mapping[str, Any]) -> Any:  # noqa: ANN401 - a MusicCodec
    from anygpt_music.music import MUSIC_HUB_ID, MusicCodec

    return MusicCodec(
        options.get("music_tokenizer_path") or MUSIC_HUB_ID,
        max_seconds=options.get("music_seconds"),
    )


def _audio_codec(options: Mapping[str, Any]) -> Any:  # noqa: ANN401 - an AudioCodec
    from anygpt_music.audio import AUDIO_HUB_ID, AudioCodec

    return AudioCodec(
        options.get("audio_tokenizer_path") or AUDIO_HUB_ID,
        max_seconds=options.get("audio_seconds"),
    )


MUSIC = ModalitySpec(
    name="music",
    prefix="🎶",
    start="<somu>",
    end="<eomu>",
    codebook_size=2048,
    num_codebooks=4,
    frame_rate=50.0,
    decoding=MUSIC_DECODING,
    input_extensions=AUDIO_SUFFIXES,
    output_extension=".wav",
    instructions=MUSIC_INSTRUCTIONS,
    options=(
        CodecOption(
            name="music_tokenizer_path",
            help="EnCodec 32 kHz: folder (config.json, model.safetensors) or hub id, optionally @revision.",
            type="str",
            default="facebook/encodec_32khz",
        ),
        CodecOption(
            name="music_seconds",
            help="Music input longer than this is cut to its first N seconds.",
            type="float",
            default=20.0,
        ),
    ),
    codec_factory=_music_codec,
    description="Music as EnCodec 32 kHz codes (4 codebooks x 2048, 50 frames/s).",
    rank=2,
    turn_rank=10,  # the reference's interleaved turn: after images, before the others
)

AUDIO = ModalitySpec(
    name="audio",
    prefix="👂",
    start="<soau>",
    end="<eoau>",
    codebook_size=1024,
    num_codebooks=4,
    frame_rate=75.0,
    decoding=MUSIC_DECODING,
    input_extensions=AUDIO_SUFFIXES,
    output_extension=".wav",
    instructions=AUDIO_INSTRUCTIONS,
    options=(
        CodecOption(
            name="audio_tokenizer_path",
            help="EnCodec 24 kHz: encodec .th file, transformers folder or hub id, optionally @revision.",
            type="str",
            default="facebook/encodec_24khz",
        ),
        CodecOption(
            name="audio_seconds",
            help="Audio input longer than this is cut to its first N seconds.",
            type="float",
            default=10.0,
        ),
    ),
    codec_factory=_audio_codec,
    description="General sound as EnCodec 24 kHz codes at 3 kbps (4 x 1024, 75 frames/s); "
    "reserved: the published models have no audio tokens.",
)


@hookimpl
def anygpt_modalities() -> list[ModalitySpec]:
    """Register music (published models) and audio (reserved, for extended models)."""
    return [MUSIC, AUDIO]


@hookimpl
def anygpt_demo_assets(directory: Path) -> dict[str, Any]:
    """Write tiny seeded EnCodec 32 kHz and 24 kHz checkpoints in the hub file layout."""
    from anygpt_music.tiny import write_demo_assets

    return dict(write_demo_assets(directory))
