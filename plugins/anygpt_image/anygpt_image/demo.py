"""Tiny seeded SEED-2 tokenizer and Stable unCLIP pipeline in the published file layouts.

`write_demo_assets` writes, in a few seconds and without network:

- `seed-tokenizer-2/seed_quantizer.pt`: flat state dict without the ViT, like the published file,
  plus `seed_config.json` with the tiny sizes;
- `eva_vit_g.pth`: the ViT weights without the `visual_encoder.` prefix, like LAVIS's file;
- `stable-diffusion-2-1-unclip/`: a diffusers `save_pretrained` layout with dummy-size components.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from anygpt_image.checkpoint import SEED_FILE, VIT_FILE, VIT_PREFIX
from anygpt_image.config import CLIP_MEAN, CLIP_STD, CONFIG_NAME, NUM_QUERY_TOKENS, SeedConfig
from anygpt_image.seed import SeedTokenizer

__all__ = ["build_tiny_seed", "build_tiny_unclip", "write_demo_assets"]

#: Each calibration vector appears this many times (jittered) in the tiny codebook.
_COPIES = 2
#: Parameters the architecture creates as zeros (learned embeddings); random in the tiny model.
_ZERO_INIT = ("query_tokens", "pos_embed", "pos_embed_image", "cls_token", "q_bias", "v_bias")


def _calibration_pixels(generator: torch.Generator, size: int, count: int) -> torch.Tensor:
    """Smooth random pictures (4x4 colour grids upsampled), normalised: (count, 3, size, size)."""
    coarse = torch.rand((count, 3, 4, 4), generator=generator)
    pictures = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pictures.clamp(0, 1) - mean) / std


@torch.no_grad()
def build_tiny_seed(seed: int = 0) -> SeedTokenizer:
    """A tiny `SeedTokenizer` whose codebook lies where its encoder output lies.

    A trained codebook sits on the encoder's output distribution. Here the 8192 rows are the
    pre-quantisation vectors of 128 seeded pictures (x 32 queries), each twice with a little jitter,
    so a new picture is coded by its nearest calibration vectors and different pictures get
    different codes.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SeedTokenizer(SeedConfig.tiny()).eval()
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] in _ZERO_INIT:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    codebook = model.quantize.embedding.weight
    count = codebook.shape[0] // (NUM_QUERY_TOKENS * _COPIES)
    pixels = _calibration_pixels(generator, model.config.image_size, count)
    features = torch.cat([model.features(chunk) for chunk in pixels.split(64)])
    features = features.reshape(-1, features.shape[-1]).repeat(_COPIES, 1)
    jitter = torch.randn(features.shape, generator=generator) * 0.05 * features.std(0)
    codebook.copy_(features + jitter)
    return model.requires_grad_(False)


def _clip_vocab() -> dict[str, int]:
    """Byte-level BPE vocabulary, no merges: each byte alone and as a word end, plus specials."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def _tiny_components(vocab: dict[str, int], embedding_dim: int) -> dict[str, Any]:
    """Dummy-size pipeline models (diffusers' test sizes); call under a fixed torch seed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    end = vocab["<|endoftext|>"]
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=end,
        pad_token_id=end,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        projection_dim=embedding_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        intermediate_size=37,
        patch_size=4,
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        attention_head_dim=(2, 4),
        layers_per_block=1,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=embedding_dim * 2,
        cross_attention_dim=32,
        upcast_attention=True,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        latent_channels=4,
        sample_size=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    return {
        "text_encoder": CLIPTextModel(text_config).eval(),
        "image_encoder": CLIPVisionModelWithProjection(vision_config).eval(),
        "unet": unet.eval(),
        "vae": vae.eval(),
    }


def build_tiny_unclip(directory: Path, *, embedding_dim: int, seed: int = 0) -> Path:
    """Save a dummy-size `StableUnCLIPImg2ImgPipeline` (with an image encoder, like the hub's)."""
    from diffusers import DDPMScheduler, PNDMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessorPil, CLIPTokenizer

    from anygpt_image.unclip import StableUnCLIPImg2ImgPipeline  # imported there without log noise

    directory.mkdir(parents=True, exist_ok=True)
    vocab = _clip_vocab()
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = Path(scratch, "vocab.json"), Path(scratch, "merges.txt")
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n", encoding="utf-8")
        tokenizer = CLIPTokenizer(
            vocab_file=str(vocab_file), merges_file=str(merges_file), model_max_length=77
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        models = _tiny_components(vocab, embedding_dim)
    # The hub pipeline's schedulers: PNDM v-prediction for denoising, squaredcos DDPM for noising.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessorPil(crop_size=32, size=32),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embedding_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        scheduler=scheduler,
        **models,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def write_demo_assets(directory: Path, *, seed: int = 0) -> dict[str, str]:
    """Write the tiny tokenizer, ViT file and unCLIP pipeline; return the codec option values."""
    directory = Path(directory)
    model = build_tiny_seed(seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tokenizer_dir = directory / "seed-tokenizer-2"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {k: v for k, v in state.items() if not k.startswith(VIT_PREFIX)}, tokenizer_dir / SEED_FILE
    )
    model.config.save(tokenizer_dir / CONFIG_NAME)
    vit = {k.removeprefix(VIT_PREFIX): v for k, v in state.items() if k.startswith(VIT_PREFIX)}
    torch.save(vit, directory / VIT_FILE)
    decoder_dir = build_tiny_unclip(
        directory / "stable-diffusion-2-1-unclip",
        embedding_dim=model.config.image_features_dim,
        seed=seed,
    )
    return {
        "image_tokenizer_path": str(tokenizer_dir),
        "image_vit_path": str(directory / VIT_FILE),
        "image_decoder_path": str(decoder_dir),
    }
