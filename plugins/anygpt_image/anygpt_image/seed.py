"""SEED-2 image tokenizer (`Blip2QformerQuantizer` of AILab-CVC/SEED) with the published key layout.

Encode: EVA-ViT-g -> `ln_vision` -> causal Q-Former over 32 queries -> `encode_task_layer` ->
nearest codebook entry (squared L2) -> 32 ids. Decode: codebook rows -> `decode_task_layer` ->
`pos_embed_image` + `blocks_image` -> `image_down` -> flatten -> `distill_image_proj`, the image
embedding Stable unCLIP is conditioned on.
"""

from __future__ import annotations

import torch
from torch import nn

from anygpt_image.config import NUM_QUERY_TOKENS, SeedConfig
from anygpt_image.qformer import QFormer
from anygpt_image.vit import EvaViT, Fp32LayerNorm, VisionBlock

__all__ = ["DECODE_PREFIXES", "INFERENCE_UNUSED_PREFIXES", "SeedTokenizer", "VectorQuantizer"]

#: Keys of the training-only reconstruction branch (and BERT's position buffer) that inference never
#: reads: loaded when present, never required.
INFERENCE_UNUSED_PREFIXES = ("pos_embed", "blocks.", "Qformer.bert.embeddings.position_ids")

#: Keys `SeedTokenizer.embed` reads: codes -> unCLIP embedding needs neither the ViT nor the
#: Q-Former (about 30M of the 1.15B parameters).
DECODE_PREFIXES = (
    "quantize.",
    "decode_task_layer.",
    "pos_embed_image",
    "blocks_image.",
    "image_down.",
    "distill_image_proj.",
)


class VectorQuantizer(nn.Module):
    """Plain codebook: nearest entry by squared Euclidean distance, no normalisation."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: float (B, Q, dim) -> ids int64 (B, Q)."""
        flat = z.reshape(-1, z.shape[-1])
        codebook = self.embedding.weight
        distance = (
            flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.t()
        )
        return distance.argmin(dim=1).reshape(z.shape[:-1])


class SeedTokenizer(nn.Module):
    """SEED-2 tokenizer; `state_dict()` has exactly the published file's 881 keys at full size.

    `pos_embed` and `blocks` belong to SEED's training-time reconstruction of Q-Former features;
    they exist so published state dicts map one to one, and no method here reads them.
    """

    def __init__(self, config: SeedConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.qformer_hidden
        self.visual_encoder = EvaViT(
            num_patches=config.num_patches,
            patch_size=config.patch_size,
            dim=config.vit_width,
            depth=config.vit_depth,
            heads=config.vit_heads,
            mlp_hidden=config.vit_mlp_hidden,
        )
        self.ln_vision = Fp32LayerNorm(config.vit_width)
        self.Qformer = QFormer(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, NUM_QUERY_TOKENS, hidden))
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_dim)
        self.encode_task_layer = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, config.codebook_dim)
        )
        self.decode_task_layer = nn.Sequential(
            nn.Linear(config.codebook_dim, config.codebook_dim),
            nn.Tanh(),
            nn.Linear(config.codebook_dim, hidden),
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_QUERY_TOKENS, hidden))
        self.blocks = self._decoder_blocks(config)
        self.pos_embed_image = nn.Parameter(torch.zeros(1, NUM_QUERY_TOKENS, hidden))
        self.blocks_image = self._decoder_blocks(config)
        d1, d2, d3 = config.image_down
        self.image_down = nn.Sequential(
            nn.Linear(hidden, d1, bias=False),
            nn.ReLU(),
            nn.Linear(d1, d2, bias=False),
            nn.ReLU(),
            nn.Linear(d2, d3, bias=False),
        )
        self.distill_image_proj = nn.Linear(NUM_QUERY_TOKENS * d3, config.image_features_dim)

    @staticmethod
    def _decoder_blocks(config: SeedConfig) -> nn.ModuleList:
        return nn.ModuleList(
            VisionBlock(
                config.qformer_hidden, config.decode_heads, config.decode_mlp_hidden, qv_bias=False
            )
            for _ in range(config.decode_depth)
        )

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation vectors: normalised pixels (B, 3, S, S) -> (B, 32, codebook_dim)."""
        image = self.ln_vision(self.visual_encoder(pixels))  # (B, 1 + patches, vit_width)
        queries = self.query_tokens.expand(pixels.shape[0], -1, -1)
        return self.encode_task_layer(self.Qformer(queries, image))

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image to codes. pixels: float (B, 3, S, S) normalised -> int64 (B, 32)."""
        return self.quantize(self.features(pixels))

    @torch.no_grad()
    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes to the unCLIP image embedding: int64 (B, 32) -> float (B, image_features_dim)."""
        x = self.decode_task_layer(self.quantize.embedding(codes))  # (B, 32, hidden)
        x = x + self.pos_embed_image
        for block in self.blocks_image:
            x = block(x)
        x = self.image_down(x)  # (B, 32, image_down[-1])
        return self.distill_image_proj(x.flatten(1))
