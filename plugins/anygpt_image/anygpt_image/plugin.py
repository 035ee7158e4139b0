"""Entry point of `anygpt-image`: the `image` modality (SEED-2 codes, Stable unCLIP pictures).

Imports stay cheap: torch, diffusers and the model code load inside the codec on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anygpt_core import DecodingConfig, Instructions, ModalitySpec, hookimpl
from anygpt_core.spec import Codec
from anygpt_image.config import NUM_QUERY_TOKENS, SeedConfig
from anygpt_image.options import ImageOptions
from anygpt_image.phrasings import FROM_TEXT, TO_TEXT

if TYPE_CHECKING:
    from anygpt_core.evaluation import EvalTask

__all__ = ["IMAGE", "anygpt_demo_assets", "anygpt_eval_tasks", "anygpt_modalities"]


def _codec(options: Mapping[str, Any]) -> Codec:
    from anygpt_image.codec import ImageCodec

    return ImageCodec(options)


IMAGE = ModalitySpec(
    name="image",
    prefix="👀",
    start="<soim>",
    end="<eoim>",
    codebook_size=SeedConfig.codebook_size,
    num_codebooks=1,
    fixed_frames=NUM_QUERY_TOKENS,
    # The reference's image_generate_config.json as transformers 4.34 applied it: top_k 50 implicit,
    # min_new_tokens without effect.
    decoding=DecodingConfig(
        temperature=1.0, top_p=1.0, top_k=50, do_sample=True, max_new_tokens=200, min_new_tokens=0
    ),
    input_extensions=(".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"),
    output_extension=".jpg",
    instructions=Instructions(to_text=TO_TEXT, from_text=FROM_TEXT),
    options=ImageOptions.cli_options(),
    codec_factory=_codec,
    description="SEED-2 image tokens (32 per image) and Stable unCLIP decoding.",
    rank=0,  # the published models' vocabulary order: image, speech, music
    turn_rank=0,  # the reference's interleaved turn: images first
)


@hookimpl
def anygpt_modalities() -> list[ModalitySpec]:
    """Register the image modality."""
    return [IMAGE]


@hookimpl
def anygpt_demo_assets(directory: Path) -> dict[str, Any]:
    """Write the tiny SEED-2 tokenizer, ViT file and unCLIP pipeline; return their option values."""
    from anygpt_image.demo import write_demo_assets

    return write_demo_assets(directory)


@hookimpl
def anygpt_eval_tasks() -> list[EvalTask]:
    """The paper's image evaluations on MS-COCO: captioning and text to image."""
    from anygpt_image.evaluation import COCO_CAPTION, COCO_T2I

    return [COCO_CAPTION, COCO_T2I]
