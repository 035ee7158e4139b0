"""The `sequence` modality: hook implementations and the spec only; the codec loads on first use.

Registered by the entry point `[project.entry-points.anygpt] sequence = "anygpt_sequence.plugin"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core import DecodingConfig, Instructions, ModalitySpec, hookimpl
from anygpt_sequence.codec import CODEBOOK_SIZE, NUM_CODEBOOKS, SequenceCodec, SequenceOptions
from anygpt_sequence.phrasings import FROM_TEXT, TO_TEXT

if TYPE_CHECKING:
    from anygpt_core.evaluation import EvalTask

__all__ = ["SEQUENCE", "anygpt_demo_assets", "anygpt_eval_tasks", "anygpt_modalities"]


SEQUENCE = ModalitySpec(
    name="sequence",
    prefix="📈",
    start="<sosq>",
    end="<eosq>",
    codebook_size=CODEBOOK_SIZE,
    num_codebooks=NUM_CODEBOOKS,
    max_frames=256,
    decoding=DecodingConfig(do_sample=True, top_k=20, max_new_tokens=130),
    input_extensions=(".csv", ".txt", ".npy"),
    output_extension=".csv",
    instructions=Instructions(to_text=TO_TEXT, from_text=FROM_TEXT),
    options=SequenceOptions.cli_options(),
    codec_factory=SequenceCodec,
    description="Numeric time series: frames of 4 values, 2-stage RVQ of 64 codes (example).",
)


@hookimpl
def anygpt_modalities() -> list[ModalitySpec]:
    """The sequence modality."""
    return [SEQUENCE]


@hookimpl
def anygpt_demo_assets(directory: Path) -> dict[str, Any]:
    """Fit a tiny codec on seeded synthetic waves and point the codec option at it."""
    from anygpt_sequence.demo import write_demo_codec

    return {"sequence_codec_path": str(write_demo_codec(Path(directory)))}


@hookimpl
def anygpt_eval_tasks() -> list[EvalTask]:
    """`sequence-trend`: name a series' trend (an example of a third party's eval task)."""
    from anygpt_sequence.evaluation import SEQUENCE_TREND

    return [SEQUENCE_TREND]
