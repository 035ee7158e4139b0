"""`ImageCodec`: images to 32 SEED-2 codes and codes back to pictures through Stable unCLIP."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from anygpt_core.checkpoints import resolve_checkpoint
from anygpt_core.codec import LazyCodec
from anygpt_core.errors import InputError
from anygpt_core.loading import pick_device
from anygpt_core.protocol import check_codes
from anygpt_core.spec import save_format
from anygpt_image.checkpoint import SEED_FILE, VIT_FILE, load_seed, seed_config
from anygpt_image.config import NUM_QUERY_TOKENS, SeedConfig
from anygpt_image.options import ImageOptions
from anygpt_image.preprocess import open_image, to_pixels

if TYPE_CHECKING:
    from PIL import Image

    from anygpt_core.config import DecodingConfig
    from anygpt_image.seed import SeedTokenizer
    from anygpt_image.unclip import EmbeddingUnCLIPPipeline

__all__ = ["SAVE_FORMATS", "ImageCodec"]

logger = logging.getLogger(__name__)

#: Output suffix -> PIL format.
SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


class ImageCodec(LazyCodec[ImageOptions]):
    """SEED-2 tokenizer plus Stable unCLIP decoder; each model loads once, on first use.

    Built from `ImageOptions` values by name. Runs in float16 on a GPU and float32 on the CPU.
    """

    Options = ImageOptions

    @property
    def device(self) -> torch.device:
        """`--image-device`: auto (cuda when available), cpu, cuda or cuda:N."""
        return self.lazy(
            "device", lambda: pick_device(self.options.image_device, flag="--image-device")
        )

    @property
    def dtype(self) -> torch.dtype:
        """float16 on a GPU, float32 on the CPU."""
        return torch.float16 if self.device.type == "cuda" else torch.float32

    @property
    def output_extension(self) -> str:
        """Suffix of the files `run` and `chat` write (`--image-format`: jpg or png)."""
        return "." + self.options.image_format

    @property
    def seed_path(self) -> Path:
        """The SEED-2 tokenizer file (`--image-tokenizer-path`)."""
        return self.lazy(
            "seed path",
            lambda: resolve_checkpoint(
                self.options.image_tokenizer_path,
                flag="--image-tokenizer-path",
                filename=SEED_FILE,
            ),
        )

    @property
    def seed_sizes(self) -> SeedConfig:
        """SEED-2's sizes (from `seed_config.json` beside the file, else the published ones)."""
        return self.lazy("seed sizes", lambda: seed_config(self.seed_path))

    @property
    def seed_decoder(self) -> SeedTokenizer:
        """SEED-2 for codes -> embedding only: the whole tokenizer if loaded, else its decode half.

        Text -> image needs about 30M of SEED-2's 1.15B parameters and no ViT file.
        """
        if self.is_loaded("seed"):
            return self.seed_model
        return self.lazy("seed decoder", self._load_seed_decoder)

    def _load_seed_decoder(self) -> SeedTokenizer:
        logger.info("loading the SEED-2 decoder from %s", self.seed_path)
        return load_seed(
            self.seed_path,
            None,
            device=self.device,
            dtype=self.dtype,
            decode_only=True,
            config=self.seed_sizes,
        )

    @property
    def seed_model(self) -> SeedTokenizer:
        """The SEED-2 tokenizer, loaded on first access."""
        return self.lazy("seed", self._load_seed)

    def _load_seed(self) -> SeedTokenizer:
        vit_path = None
        if self.options.image_vit_path:
            vit_path = resolve_checkpoint(
                self.options.image_vit_path, flag="--image-vit-path", filename=VIT_FILE
            )
        logger.info("loading SEED-2 tokenizer from %s", self.seed_path)
        model = load_seed(
            self.seed_path, vit_path, device=self.device, dtype=self.dtype, config=self.seed_sizes
        )
        self.forget("seed decoder")  # the whole model serves decoding now
        return model

    @property
    def pipeline(self) -> EmbeddingUnCLIPPipeline:
        """The Stable unCLIP pipeline, loaded on first access."""
        return self.lazy("pipeline", self._load_pipeline)

    def _load_pipeline(self) -> EmbeddingUnCLIPPipeline:
        from anygpt_image.unclip import load_unclip

        logger.info("loading Stable unCLIP from %s", self.options.image_decoder_path)
        return load_unclip(
            self.options.image_decoder_path,
            device=self.device,
            dtype=self.dtype,
            low_memory=self.options.image_low_memory,
        )

    def encode(self, source: Path | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Encode an image file or array.

        Returns:
            codes: int64 [1, 32], each in [0, 8192), on the CPU.

        Raises:
            InputError: missing, empty, corrupt or non-image file, or a malformed array.
        """
        image = open_image(source)
        model = self.seed_model
        pixels = to_pixels(image, model.config.image_size).to(self.device, self.dtype)
        return model.encode(pixels).to("cpu", torch.long)  # (1, 32)

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Validate a code span: int [1, 32] in [0, codebook_size). Returns int64 [1, 32].

        Raises:
            GenerationError: see `anygpt_core.protocol.check_codes`.
        """
        return check_codes(
            codes,
            name="image",
            num_codebooks=1,
            codebook_size=self.seed_sizes.codebook_size,
            frames=NUM_QUERY_TOKENS,
        )

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """The unCLIP image embedding of a span: int64 [1, 32] -> float (1, image_features_dim)."""
        codes = self.check_codes(codes)
        return self.seed_decoder.embed(codes.to(self.device))

    def decode(
        self,
        codes: torch.Tensor,
        *,
        condition: Path | None = None,
        seed: int | None = None,
        config: DecodingConfig | None = None,
    ) -> Image.Image:
        """Render codes int64 [1, 32] as a picture (768x768 with the published pipeline).

        Args:
            codes: int64 [1, 32] in [0, 8192).
            condition: not used by images; giving one is an error.
            seed: fixes the diffusion latents, so the same codes and seed give the same picture.
            config: ignored; diffusion settings are the `--image-*` options.

        Raises:
            InputError: bad codes, or a condition file was given.
        """
        if condition is not None:
            raise InputError(f"{condition}: image decoding takes no condition file")
        from anygpt_image.unclip import render

        embedding = self.embed(codes)
        return render(
            self.pipeline,
            embedding,
            steps=self.options.image_steps,
            guidance_scale=self.options.image_guidance_scale,
            seed=seed,
        )

    def save(
        self, media: Image.Image, target: Path | BinaryIO, *, suffix: str | None = None
    ) -> None:
        """Write a picture; the suffix picks JPEG (.jpg, .jpeg) or PNG (.png).

        Raises:
            InputError: another suffix, or a file object without `suffix`.
        """
        fmt = save_format(target, suffix, SAVE_FORMATS, "an image", choices=".jpg or .png")
        image = media.convert("RGB")
        if fmt == "JPEG":
            image.save(target, format=fmt, quality=95)
        else:
            image.save(target, format=fmt)
