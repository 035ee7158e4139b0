"""Hook implementations of the speech plugin (entry point `speech` in the group `anygpt`).

Cheap to import: the codec class is named here but imports torch only when it first loads weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from anygpt_core import DecodingConfig, ModalitySpec, hookimpl
from anygpt_core.audio import AUDIO_SUFFIXES
from anygpt_speech.codec import SpeechCodec, SpeechOptions
from anygpt_speech.phrasings import SPEECH_INSTRUCTIONS
from anygpt_speech.tokenizer import CODEBOOK_SIZE, FRAME_RATE

if TYPE_CHECKING:
    from anygpt_core.evaluation import EvalTask


class SpeechDecodingConfig(DecodingConfig):
    """The core's decoding fields plus SoundStorm's, as the seed's speech config files hold them."""

    vc_steps: int | None = Field(
        None,
        gt=0,
        le=10_000,
        description="Mask-predict steps of SoundStorm's first acoustic layer.",
    )


#: The reference's `Speech-Instruction` task prompt, wrapped around a chat turn holding speech.
SPEECH_INSTRUCTION = "{turn} Please recognize the voice command and give reply and voice"

SPEECH = ModalitySpec(
    name="speech",
    prefix="🗣️",  # U+1F5E3 U+FE0F
    start="<sosp>",
    end="<eosp>",
    codebook_size=CODEBOOK_SIZE,
    num_codebooks=1,  # RVQ layer 0 only: SoundStorm predicts the others
    frame_rate=FRAME_RATE,
    # The reference's effective speech sampling (transformers 4.34 added top_k 50 and dropped
    # min_new_tokens); vc_steps 3 is the value its SoundStorm call actually used.
    decoding=SpeechDecodingConfig(
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        do_sample=True,
        max_new_tokens=1500,
        min_new_tokens=0,
        repetition_penalty=1.05,
        vc_steps=3,
    ),
    input_extensions=AUDIO_SUFFIXES,
    output_extension=".wav",
    instructions=SPEECH_INSTRUCTIONS,
    options=SpeechOptions.cli_options(),
    codec_factory=SpeechCodec,
    description="SpeechTokenizer (RVQ layer 0, 50 Hz) + SoundStorm, 16 kHz, voice prompts",
    rank=1,
    turn_rank=90,  # the reference's interleaved turn: speech last, just before the text
    turn_template=SPEECH_INSTRUCTION,
    condition="voice",
)


@hookimpl
def anygpt_modalities() -> list[ModalitySpec]:
    """The speech modality."""
    return [SPEECH]


@hookimpl
def anygpt_eval_tasks() -> list[EvalTask]:
    """The paper's speech evaluations: LibriSpeech ASR and VCTK zero-shot TTS."""
    from anygpt_speech.evaluation import LIBRISPEECH_ASR, VCTK_TTS

    return [LIBRISPEECH_ASR, VCTK_TTS]


@hookimpl
def anygpt_demo_assets(directory: Path) -> dict[str, Any]:
    """Tiny seeded SpeechTokenizer and SoundStorm in the published layout."""
    from anygpt_speech.demo import demo_options

    return dict(demo_options(directory))
