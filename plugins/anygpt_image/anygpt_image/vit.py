"""Vision-transformer parts of SEED-2: the EVA-ViT-g encoder and the ViT blocks of the decode path.

Parameter names follow the published checkpoint (`visual_encoder.blocks.N.attn.q_bias`, ...), so
state dicts load unchanged. Attention runs through `scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EvaViT", "Fp32LayerNorm", "VisionBlock"]


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, as the reference does for fp16 inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise `x` (..., C) in float32; returns the input dtype."""
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused `qkv` projection.

    EVA keeps the key projection bias-free and stores separate `q_bias` / `v_bias`
    (`qv_bias=True`); the timm-style blocks of the decoder use one `qkv.bias`.
    """

    def __init__(self, dim: int, heads: int, *, qv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qv_bias = qv_bias
        self.qkv = nn.Linear(dim, dim * 3, bias=not qv_bias)
        if qv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens. x: (B, N, C) -> (B, N, C)."""
        batch, tokens, dim = x.shape
        if self.qv_bias:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            qkv = F.linear(x, self.qkv.weight, bias)
        else:
            qkv = self.qkv(x)
        qkv = qkv.reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Two linear layers with exact GELU between them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        return self.fc2(F.gelu(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6), as in EVA and timm."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, *, qv_bias: bool) -> None:
        super().__init__()
        self.norm1 = Fp32LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qv_bias=qv_bias)
        self.norm2 = Fp32LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected by a strided convolution."""

    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: (B, 3, H, W) -> (B, H*W/patch², C)."""
        return self.proj(pixels).flatten(2).transpose(1, 2)


class EvaViT(nn.Module):
    """EVA-ViT-g as BLIP-2 uses it: absolute positions, no final norm, class token kept."""

    def __init__(
        self,
        *,
        num_patches: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_hidden: int,
    ) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.blocks = nn.ModuleList(
            VisionBlock(dim, heads, mlp_hidden, qv_bias=True) for _ in range(depth)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: float (B, 3, H, W) -> features (B, 1 + patches, C)."""
        x = self.patch_embed(pixels)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x
