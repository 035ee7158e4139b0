"""Hook implementations of `anygpt-music`: the `music` and `audio` modalities and their demo codecs.

Importing this module is cheap: torch, transformers and encodec load inside the codecs on first use.
Sizes and options are the codecs' own (`MusicCodec.codebook_size`, `MusicOptions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core import DecodingConfig, ModalitySpec, hookimpl
from anygpt_core.audio import AUDIO_SUFFIXES
from anygpt_music.audio import AudioCodec, AudioOptions
from anygpt_music.instructions import AUDIO_INSTRUCTIONS, MUSIC_INSTRUCTIONS
from anygpt_music.music import MusicCodec, MusicOptions

if TYPE_CHECKING:
    from anygpt_core.evaluation import EvalTask

__all__ = ["AUDIO", "MUSIC", "anygpt_demo_assets", "anygpt_eval_tasks", "anygpt_modalities"]

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


MUSIC = ModalitySpec(
    name="music",
    prefix="🎶",
    start="<somu>",
    end="<eomu>",
    codebook_size=MusicCodec.codebook_size,
    num_codebooks=MusicCodec.num_codebooks,
    frame_rate=MusicCodec.frame_rate,
    decoding=MUSIC_DECODING,
    input_extensions=AUDIO_SUFFIXES,
    output_extension=".wav",
    instructions=MUSIC_INSTRUCTIONS,
    options=MusicOptions.cli_options(),
    codec_factory=MusicCodec,
    description="Music as EnCodec 32 kHz codes (4 codebooks x 2048, 50 frames/s).",
    rank=2,
    turn_rank=10,  # the reference's interleaved turn: after images, before the others
)

AUDIO = ModalitySpec(
    name="audio",
    prefix="👂",
    start="<soau>",
    end="<eoau>",
    codebook_size=AudioCodec.codebook_size,
    num_codebooks=AudioCodec.num_codebooks,
    frame_rate=AudioCodec.frame_rate,
    decoding=MUSIC_DECODING,
    input_extensions=AUDIO_SUFFIXES,
    output_extension=".wav",
    instructions=AUDIO_INSTRUCTIONS,
    options=AudioOptions.cli_options(),
    codec_factory=AudioCodec,
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


@hookimpl
def anygpt_eval_tasks() -> list[EvalTask]:
    """The paper's music evaluations on MusicCaps: text to music and captioning."""
    from anygpt_music.evaluation import MUSICCAPS_CAPTION, MUSICCAPS_T2M

    return [MUSICCAPS_CAPTION, MUSICCAPS_T2M]
