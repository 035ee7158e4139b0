"""Stable unCLIP decoding: a SEED image embedding in, a picture out.

diffusers' `StableUnCLIPImg2ImgPipeline` conditions its UNet on an image embedding; the reference
calls it with `image_embeds`, an empty prompt, `noise_level=0`, guidance 10, 20 steps. The published
pipeline ships a CLIP image encoder that this path never runs, so it is not loaded; the subclass
below only lets the pipeline run without it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from anygpt_core.checkpoints import resolve_checkpoint
from anygpt_core.errors import CheckpointError, first_line
from anygpt_image.options import UNCLIP_HUB_ID

# diffusers imports transformers' CLIPImageProcessor, whose torchvision advice does not apply: the
# pipeline's image processor is never used on this path.
_import_log = logging.getLogger("transformers.utils.import_utils")
_level = _import_log.level
_import_log.setLevel(logging.ERROR)
from diffusers import StableUnCLIPImg2ImgPipeline  # noqa: E402

_import_log.setLevel(_level)

__all__ = [
    "PIPELINE_FILES",
    "UNCLIP_HUB_ID",
    "EmbeddingUnCLIPPipeline",
    "StableUnCLIPImg2ImgPipeline",
    "load_unclip",
    "render",
]

logger = logging.getLogger(__name__)


class EmbeddingUnCLIPPipeline(StableUnCLIPImg2ImgPipeline):  # type: ignore[misc]  # untyped base
    """`StableUnCLIPImg2ImgPipeline` that runs without image encoder given `image_embeds`."""

    _optional_components = ["feature_extractor", "image_encoder"]  # noqa: RUF012 - diffusers' name

    def _encode_image(
        self,
        image: Any,  # noqa: ANN401 - diffusers' signature
        device: torch.device,
        batch_size: int,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        noise_level: torch.Tensor,
        generator: torch.Generator | None,
        image_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.image_encoder is not None or image_embeds is None:
            return super()._encode_image(
                image,
                device,
                batch_size,
                num_images_per_prompt,
                do_classifier_free_guidance,
                noise_level,
                generator,
                image_embeds,
            )
        embeds = self.noise_image_embeddings(
            image_embeds=image_embeds.to(device), noise_level=noise_level, generator=generator
        )  # (B, 2 * dim): noised embedding, then the noise-level embedding
        embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance:
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
        return embeds


#: What decoding reads of a published pipeline: not its CLIP image encoder, fp16 variants or pickles.
PIPELINE_FILES = (
    "model_index.json",
    "*/*.json",
    "tokenizer/*",
    "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
)


def _resolve(location: str | Path) -> Path:
    path = resolve_checkpoint(location, flag="--image-decoder-path", allow_patterns=PIPELINE_FILES)
    if not (path / "model_index.json").is_file():
        raise CheckpointError(
            f"{path}: no model_index.json; --image-decoder-path wants a diffusers pipeline "
            "directory such as stable-diffusion-2-1-unclip"
        )
    return path


def _load_text_encoder(path: Path, dtype: torch.dtype) -> Any:  # noqa: ANN401 - a CLIP text model
    """The pipeline's CLIP text encoder, refused if its weights leave parameters unset.

    transformers fills a tensor missing from the file with random values and only logs it; loading
    it here, with the loading report, turns that into an error. (Old files with a `text_model.`
    prefix are renamed by transformers itself.)
    """
    from transformers import CLIPTextModel
    from transformers.utils import logging as transformers_logging

    folder = path / "text_encoder"
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        loaded: Any = CLIPTextModel.from_pretrained(folder, dtype=dtype, output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    model, info = loaded
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise CheckpointError(
            f"{folder}: {len(missing)} tensors of its config are not in its weights "
            f"(e.g. {missing[0]}); a damaged or mismatched text encoder"
        )
    return model


def _check_loaded(path: Path, pipe: StableUnCLIPImg2ImgPipeline) -> None:
    """Refuse a tensor left on the meta device: diffusers does that with one missing from a file."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for key, tensor in [*component.named_parameters(), *component.named_buffers()]:
                if tensor.is_meta:
                    raise CheckpointError(
                        f"{path / name}: its weights lack {key}; a damaged or mismatched {name}"
                    )


def load_unclip(
    location: str | Path, *, device: torch.device, dtype: torch.dtype, low_memory: bool
) -> EmbeddingUnCLIPPipeline:
    """Load the unCLIP pipeline without its image encoder.

    `low_memory` keeps each model on the CPU until it runs (accelerate's model offload, CUDA only)
    and decodes the VAE in slices, so a 24 GB GPU renders 768x768. Attention is not sliced: with
    PyTorch's fused attention that costs time and memory (measured on CPU: a real-size UNet step
    went from 17 s / 5.0 GiB peak to 31 s / 5.8 GiB with `set_attention_slice("auto")`).

    Raises:
        CheckpointError: the directory or hub snapshot is missing or not a loadable pipeline.
    """
    path = _resolve(location)
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # the CLI shows its own progress
        transformers_logging.disable_progress_bar()
        text_encoder = _load_text_encoder(path, dtype)
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # missing weights: our one line, not its report
        try:
            pipe = EmbeddingUnCLIPPipeline.from_pretrained(
                path,
                dtype=dtype,
                image_encoder=None,
                feature_extractor=None,
                text_encoder=text_encoder,
            )
        finally:
            diffusers_logging.set_verbosity(verbosity)
    except CheckpointError:
        raise
    except Exception as err:  # any loader failure means a bad pipeline directory
        raise CheckpointError(
            f"{path}: not a loadable Stable unCLIP pipeline ({first_line(err)})"
        ) from err
    _check_loaded(path, pipe)
    pipe.set_progress_bar_config(disable=True)
    if low_memory:
        pipe.vae.enable_slicing()
        if device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
            return pipe
        logger.info(
            "image low-memory mode: model offload needs a GPU; VAE slicing only on %s", device
        )
    return pipe.to(device)


def render(
    pipe: EmbeddingUnCLIPPipeline,
    embedding: torch.Tensor,
    *,
    steps: int,
    guidance_scale: float,
    seed: int | None,
) -> Image.Image:
    """Denoise from seeded latents conditioned on `embedding` (1, dim); returns one PIL image.

    Latents and the embedding-noising draw come from one CPU generator, so a seed gives the same
    picture on any device.
    """
    generator = torch.Generator("cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    unet = pipe.unet
    size = unet.config.sample_size
    latents = torch.randn((1, unet.config.in_channels, size, size), generator=generator)
    latents = latents * pipe.scheduler.init_noise_sigma
    device = pipe._execution_device
    result = pipe(
        image_embeds=embedding.to(device=device, dtype=unet.dtype),
        prompt="",
        guidance_scale=guidance_scale,
        noise_level=0,
        num_inference_steps=steps,
        latents=latents.to(device=device, dtype=unet.dtype),
        generator=generator,
    )
    return result.images[0]
