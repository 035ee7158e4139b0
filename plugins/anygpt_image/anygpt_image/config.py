"""Architecture sizes of the SEED-2 image tokenizer: the published preset and a tiny one."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from anygpt_core.errors import CheckpointError

__all__ = ["CLIP_MEAN", "CLIP_STD", "CONFIG_NAME", "NUM_QUERY_TOKENS", "SeedConfig"]

#: CLIP normalisation used by the reference preprocessing (torchvision `Normalize`).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Every image is exactly this many codes; fixed by the protocol, so no preset may change it.
NUM_QUERY_TOKENS = 32

#: Optional file beside `seed_quantizer.pt` describing non-published sizes (the tiny demo).
CONFIG_NAME = "seed_config.json"


@dataclass(frozen=True)
class SeedConfig:
    """Sizes of `SeedTokenizer`; the defaults are the published `seed_quantizer.pt`.

    The Q-Former fields are the `bert-base-uncased` configuration the reference downloads at run
    time (hidden 768, 12 layers, 12 heads, FFN 3072, 512 positions, LayerNorm eps 1e-12, GELU),
    written here so loading never touches the hub.
    """

    image_size: int = 224
    patch_size: int = 14
    vit_width: int = 1408
    vit_depth: int = 39
    vit_heads: int = 16
    vit_mlp_hidden: int = 6144  # int(1408 * 4.3637)
    qformer_hidden: int = 768
    qformer_layers: int = 12
    qformer_heads: int = 12
    qformer_intermediate: int = 3072
    qformer_max_positions: int = 512
    qformer_layer_norm_eps: float = 1e-12
    cross_attention_freq: int = 2
    codebook_size: int = 8192
    codebook_dim: int = 32
    decode_depth: int = 4
    decode_heads: int = 12
    decode_mlp_hidden: int = 3072
    image_down: tuple[int, int, int] = (256, 128, 32)
    image_features_dim: int = 1024

    @classmethod
    def published(cls) -> SeedConfig:
        """The architecture of AILab-CVC/seed-tokenizer-2 `seed_quantizer.pt` (1.15 B params)."""
        return cls()

    @classmethod
    def tiny(cls) -> SeedConfig:
        """Same structure and key names at tiny widths; keeps 224-pixel input, 32 of 8192 codes."""
        return replace(
            cls(),
            vit_width=32,
            vit_depth=2,
            vit_heads=2,
            vit_mlp_hidden=64,
            qformer_hidden=32,
            qformer_layers=2,
            qformer_heads=2,
            qformer_intermediate=64,
            qformer_max_positions=64,
            codebook_dim=8,
            decode_depth=2,
            decode_heads=2,
            decode_mlp_hidden=64,
            image_down=(16, 8, 4),
            image_features_dim=32,
        )

    @property
    def num_patches(self) -> int:
        """Patch tokens of the ViT (the class token comes on top)."""
        return (self.image_size // self.patch_size) ** 2

    def save(self, path: Path) -> None:
        """Write the sizes as JSON."""
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> SeedConfig:
        """Read sizes written by `save`.

        Raises:
            CheckpointError: the file is not valid JSON or has unknown fields.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if "image_down" in data:
                data["image_down"] = tuple(data["image_down"])
            return cls(**data)
        except (OSError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: not a valid SEED size file ({err})") from err
