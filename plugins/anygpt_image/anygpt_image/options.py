"""The image codec's options (`--image-*`): one typed field per flag, cheap to import."""

from __future__ import annotations

from pydantic import Field, field_validator

from anygpt_core.codec import CodecOptions

__all__ = ["SEED_HUB_ID", "UNCLIP_HUB_ID", "ImageOptions"]

SEED_HUB_ID = "AILab-CVC/seed-tokenizer-2"
UNCLIP_HUB_ID = "stabilityai/stable-diffusion-2-1-unclip"


class ImageOptions(CodecOptions):
    """What `ImageCodec` reads; its defaults are the reference's (20 steps, guidance 10)."""

    image_tokenizer_path: str = Field(
        SEED_HUB_ID,
        description="SEED-2 seed_quantizer.pt: a file, a directory holding it, or a hub id.",
    )
    image_vit_path: str | None = Field(
        None,
        description="EVA-ViT-g weights (LAVIS eva_vit_g.pth) when the tokenizer file lacks them.",
    )
    image_decoder_path: str = Field(
        UNCLIP_HUB_ID,
        description="Stable unCLIP diffusers pipeline: a local directory or a hub id.",
    )
    image_steps: int = Field(20, ge=1, le=10_000, description="Diffusion steps per image.")
    image_guidance_scale: float = Field(
        10.0, description="Classifier-free guidance scale of the decoder."
    )
    image_low_memory: bool = Field(
        False,
        description="Offload decoder models to the CPU between uses and decode the VAE in "
        "slices (24 GB GPUs).",
    )
    image_format: str = Field(
        "jpg",
        description="Format of the images run and chat write: jpg or png (decode -o: the suffix).",
    )
    image_device: str = Field(
        "auto", description="Device for image models: auto (cuda if present), cpu, cuda:N."
    )

    @field_validator("image_format")
    @classmethod
    def _format(cls, value: str) -> str:
        name = value.lower().lstrip(".")
        name = "jpg" if name == "jpeg" else name
        if name not in ("jpg", "png"):
            raise ValueError("choose jpg or png")
        return name
