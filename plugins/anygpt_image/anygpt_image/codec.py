"""`ImageCodec`: images to 32 SEED-2 codes and codes back to pictures through Stable unCLIP."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import torch

from anygpt_core.checkpoints import resolve_checkpoint
from anygpt_core.errors import ConfigError, InputError
from anygpt_core.loading import pick_device
from anygpt_core.spec import save_format
from anygpt_image.checkpoint import SEED_FILE, VIT_FILE, load_seed, seed_config
from anygpt_image.config import NUM_QUERY_TOKENS, SeedConfig
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


def _device(value: str | None) -> torch.device:
    device: torch.device = pick_device(value or "auto", flag="--image-device")
    return device


def _number(value: str | float, kind: type[int] | type[float], flag: str) -> Any:  # noqa: ANN401
    try:
        return kind(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{flag} {value!r}: not a number") from err


class ImageCodec:
    """SEED-2 tokenizer plus Stable unCLIP decoder; weights load on first use.

    Options (by `CodecOption` name): `image_tokenizer_path`, `image_vit_path`, `image_decoder_path`,
    `image_steps`, `image_guidance_scale`, `image_low_memory`, `image_device`. Runs in float16 on a
    GPU and float32 on the CPU.
    """

    def __init__(self, options: Mapping[str, Any]) -> None:
        # Only stored: the factory is called at discovery-time speed and must not fail or load.
        self.options = dict(options)
        self.tokenizer_path = options["image_tokenizer_path"]
        self.vit_path = options.get("image_vit_path")
        self.decoder_path = options["image_decoder_path"]
        self.low_memory = bool(options.get("image_low_memory"))
        self._seed: SeedTokenizer | None = None
        self._seed_decoder: SeedTokenizer | None = None
        self._pipe: EmbeddingUnCLIPPipeline | None = None

    @functools.cached_property
    def device(self) -> torch.device:
        """`--image-device`, or cuda when available, else cpu."""
        return _device(self.options.get("image_device"))

    @property
    def dtype(self) -> torch.dtype:
        """float16 on a GPU, float32 on the CPU."""
        return torch.float16 if self.device.type == "cuda" else torch.float32

    @functools.cached_property
    def output_extension(self) -> str:
        """Suffix of the files `run` and `chat` write (`--image-format`: jpg or png)."""
        value = str(self.options.get("image_format") or "jpg").lower().lstrip(".")
        suffix = ".jpg" if value == "jpeg" else f".{value}"
        if suffix not in SAVE_FORMATS:
            raise ConfigError(f"--image-format {value}: choose jpg or png")
        return suffix

    @functools.cached_property
    def steps(self) -> int:
        """Diffusion steps (`--image-steps`, default 20)."""
        value = self.options.get("image_steps")
        steps = _number(value, int, "--image-steps") if value is not None else 20
        if steps < 1:
            raise ConfigError(f"--image-steps {steps}: must be at least 1")
        return steps

    @functools.cached_property
    def guidance_scale(self) -> float:
        """Classifier-free guidance (`--image-guidance-scale`, default 10)."""
        value = self.options.get("image_guidance_scale")
        return _number(value, float, "--image-guidance-scale") if value is not None else 10.0

    @functools.cached_property
    def seed_path(self) -> Path:
        """The SEED-2 tokenizer file (`--image-tokenizer-path`)."""
        return resolve_checkpoint(
            self.tokenizer_path, flag="--image-tokenizer-path", filename=SEED_FILE
        )

    @functools.cached_property
    def seed_sizes(self) -> SeedConfig:
        """SEED-2's sizes (from `seed_config.json` beside the file, else the published ones)."""
        return seed_config(self.seed_path)

    @property
    def seed_decoder(self) -> SeedTokenizer:
        """SEED-2 for codes -> embedding only: the whole tokenizer if loaded, else its decode half.

        Text -> image needs about 30M of SEED-2's 1.15B parameters and no ViT file.
        """
        if self._seed is not None:
            return self._seed
        if self._seed_decoder is None:
            logger.info("loading the SEED-2 decoder from %s", self.seed_path)
            self._seed_decoder = load_seed(
                self.seed_path,
                None,
                device=self.device,
                dtype=self.dtype,
                decode_only=True,
                config=self.seed_sizes,
            )
        return self._seed_decoder

    @property
    def seed_model(self) -> SeedTokenizer:
        """The SEED-2 tokenizer, loaded on first access."""
        if self._seed is None:
            seed_path = self.seed_path
            vit_path = None
            if self.vit_path:
                vit_path = resolve_checkpoint(
                    self.vit_path, flag="--image-vit-path", filename=VIT_FILE
                )
            logger.info("loading SEED-2 tokenizer from %s", seed_path)
            self._seed = load_seed(
                seed_path, vit_path, device=self.device, dtype=self.dtype, config=self.seed_sizes
            )
            self._seed_decoder = None  # the whole model serves decoding now
        return self._seed

    @property
    def pipeline(self) -> EmbeddingUnCLIPPipeline:
        """The Stable unCLIP pipeline, loaded on first access."""
        if self._pipe is None:
            from anygpt_image.unclip import load_unclip

            logger.info("loading Stable unCLIP from %s", self.decoder_path)
            self._pipe = load_unclip(
                self.decoder_path, device=self.device, dtype=self.dtype, low_memory=self.low_memory
            )
        return self._pipe

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
            InputError: wrong shape, dtype or range.
        """
        size = self.seed_sizes.codebook_size
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
            raise InputError("image codes must be an integer tensor of shape [1, 32]")
        if tuple(codes.shape) != (1, NUM_QUERY_TOKENS):
            raise InputError(
                f"image span has shape {list(codes.shape)}; "
                f"an image is exactly 1 x {NUM_QUERY_TOKENS} codes"
            )
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            raise InputError(f"image code {bad} is out of range; codes are 0..{size - 1}")
        return codes.to(torch.long)

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
            steps=self.steps,
            guidance_scale=self.guidance_scale,
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
