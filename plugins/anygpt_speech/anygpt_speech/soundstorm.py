"""SoundStorm: a Conformer that fills in the acoustic RVQ layers of SpeechTokenizer codes.

The module tree reproduces the state-dict layout of AnyGPT's `speechtokenizer_soundstorm_mls.pt`
(356 tensors at the published size, with AnyGPT's `conv.net1` / `conv.ds_conv` / `conv.net2`
names), so that file loads strictly. A few `nn.Sequential` slots hold parameter-free modules only
to keep the published indices (`ff*.fn.fn.net.3`, `conv.net1.2`, `to_logits.2`).

Model: codes of the acoustic layers (mask id = codebook_size) are embedded per layer and summed per
frame, the embedding of the frame's semantic code (RVQ layer 0) is added, a Conformer with rotary
attention runs over the frames, and one head per acoustic layer gives logits over the codebook.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

__all__ = ["SoundStorm", "SoundStormConfig"]

ROTARY_THETA = 10000.0
FF_MULT = 4
CONV_EXPANSION = 2
CONV_KERNEL = 31


class SoundStormConfig(BaseModel):
    """Architecture of a SoundStorm model; the defaults are the published MLS model's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    codebook_size: int = Field(
        1024, gt=0, description="Codes per RVQ layer (semantic and acoustic)."
    )
    num_quantizers: int = Field(7, gt=0, description="Acoustic RVQ layers predicted (layers 1..N).")
    dim: int = Field(1024, gt=0, description="Model width.")
    depth: int = Field(12, gt=0, description="Conformer blocks.")
    heads: int = Field(8, gt=0, description="Attention heads.")
    dim_head: int = Field(128, gt=0, description="Width of one attention head (even, for rotary).")

    @classmethod
    def tiny(cls) -> SoundStormConfig:
        """The published structure at test size (dim 32, depth 2, heads 2, dim_head 16)."""
        return cls(dim=32, depth=2, heads=2, dim_head=16)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _rotary_angles(length: int, dim_head: int, device: torch.device) -> torch.Tensor:
    """Rotary angles float32 [length, dim_head]: both halves of the head share the frequencies."""
    inv_freq = 1.0 / ROTARY_THETA ** (
        torch.arange(0, dim_head, 2, device=device, dtype=torch.float32) / dim_head
    )
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return torch.cat((angles, angles), dim=-1)


class PreNorm(nn.Module):
    """LayerNorm, then the wrapped module (keys `norm.*`, `fn.*`)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class HalfStep(nn.Module):
    """Macaron feed-forward: the wrapped module's output is halved (key `fn.*`)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.fn(x)


class FeedForward(nn.Module):
    """Linear -> SiLU -> Linear; slot 2 is the (inference-free) dropout of the published layout."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim * FF_MULT), nn.SiLU(), nn.Identity(), nn.Linear(dim * FF_MULT, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with rotary positions on queries and keys."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: torch.Tensor, *, angles: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        key, value = self.to_kv(x).chunk(2, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, H*D) -> (B, H, N, D)
            return t.view(batch, length, self.heads, -1).transpose(1, 2)

        query, key, value = split(self.to_q(x)), split(key), split(value)
        cos, sin = angles.cos(), angles.sin()
        query = (query.float() * cos + _rotate_half(query.float()) * sin).to(x.dtype)
        key = (key.float() * cos + _rotate_half(key.float()) * sin).to(x.dtype)
        out = F.scaled_dot_product_attention(query, key, value)  # (B, H, N, D)
        return self.to_out(out.transpose(1, 2).reshape(batch, length, -1))


class ChannelsFirst(nn.Module):
    """(B, N, C) -> (B, C, N)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class ChannelsLast(nn.Module):
    """(B, C, N) -> (B, N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class ChannelNorm(nn.Module):
    """Normalise over channels of (B, C, N) with a learned gain `gamma` [1, C, 1] and no bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-6 if x.dtype == torch.float32 else 1e-4
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * var.clamp(min=eps).rsqrt() * self.gamma


class DepthwiseConv(nn.Module):
    """Depthwise 1-D convolution with "same" zero padding (key `conv.*`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, CONV_KERNEL, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = CONV_KERNEL // 2
        return self.conv(F.pad(x, (pad, pad - (CONV_KERNEL + 1) % 2)))


class ConvModule(nn.Module):
    """Conformer convolution: LN, pointwise + GLU, depthwise, SiLU, channel norm, pointwise."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        inner = dim * CONV_EXPANSION
        self.net1 = nn.Sequential(
            nn.LayerNorm(dim), ChannelsFirst(), nn.Conv1d(dim, 2 * inner, 1), nn.GLU(dim=1)
        )
        self.ds_conv = DepthwiseConv(inner)
        self.net2 = nn.Sequential(
            nn.SiLU(), ChannelNorm(inner), nn.Conv1d(inner, dim, 1), ChannelsLast()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net2(self.ds_conv(self.net1(x)))


class ConformerBlock(nn.Module):
    """Half feed-forward, attention, convolution, half feed-forward (residual), final LayerNorm."""

    def __init__(self, config: SoundStormConfig) -> None:
        super().__init__()
        dim = config.dim
        self.ff1 = HalfStep(PreNorm(dim, FeedForward(dim)))
        self.attn = PreNorm(dim, Attention(dim, config.heads, config.dim_head))
        self.conv = ConvModule(dim)
        self.ff2 = HalfStep(PreNorm(dim, FeedForward(dim)))
        self.post_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, *, angles: torch.Tensor) -> torch.Tensor:
        x = x + self.ff1(x)
        x = x + self.attn(x, angles=angles)
        x = x + self.conv(x)
        x = x + self.ff2(x)
        return self.post_norm(x)


class Conformer(nn.Module):
    """A stack of Conformer blocks sharing one rotary table."""

    def __init__(self, config: SoundStormConfig) -> None:
        super().__init__()
        self.dim_head = config.dim_head
        self.layers = nn.ModuleList(ConformerBlock(config) for _ in range(config.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = _rotary_angles(x.shape[1], self.dim_head, x.device)
        for block in self.layers:
            x = block(x, angles=angles)
        return x


class LevelLogits(nn.Module):
    """One projection per acoustic layer: weight [Q, dim, codebook], bias [1, 1, Q, codebook]."""

    def __init__(self, levels: int, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(levels, dim, codebook_size))
        self.bias = nn.Parameter(torch.zeros(1, 1, levels, codebook_size))
        nn.init.uniform_(self.weight, -(dim**-0.5), dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnqd,qdl->bnql", x, self.weight) + self.bias


class ConformerWrapper(nn.Module):
    """Embeds the acoustic codes, runs the Conformer, returns logits per frame and layer."""

    def __init__(self, config: SoundStormConfig) -> None:
        super().__init__()
        levels, dim = config.num_quantizers, config.dim
        self.levels = levels
        self.codes_per_level = config.codebook_size + 1  # + the mask id
        self.code_embeds = nn.Embedding(self.codes_per_level * levels, dim)
        self.conformer = Conformer(config)
        self.heads = nn.Sequential(nn.Linear(dim, dim * levels))
        # Slot 1 held a reshape in the published layout; the reshape is done in forward.
        self.to_logits = nn.Sequential(
            nn.LayerNorm(dim), nn.Identity(), LevelLogits(levels, dim, config.codebook_size)
        )

    def forward(self, codes: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Logits of every acoustic code.

        Args:
            codes: int64 [B, N, Q], values in [0, codebook_size] (codebook_size = masked).
            condition: float [B, N, dim], the semantic-token embeddings.

        Returns:
            logits: float [B, N, Q, codebook_size].
        """
        batch, length, levels = codes.shape
        offsets = torch.arange(levels, device=codes.device) * self.codes_per_level
        x = self.code_embeds(codes + offsets).sum(dim=2) + condition  # (B, N, dim)
        x = self.conformer(x)
        x = self.heads(x).view(batch, length, levels, -1)  # (B, N, Q, dim)
        norm, _, project = self.to_logits
        return project(norm(x))


class SoundStorm(nn.Module):
    """Semantic embedding + `ConformerWrapper` (keys `semantic_token_emb.*`, `net.*`)."""

    def __init__(self, config: SoundStormConfig | None = None) -> None:
        super().__init__()
        self.config = config or SoundStormConfig()
        self.semantic_token_emb = nn.Embedding(self.config.codebook_size, self.config.dim)
        self.net = ConformerWrapper(self.config)

    @property
    def mask_id(self) -> int:
        """The code that marks a position still to be predicted."""
        return self.config.codebook_size

    def logits(self, semantic: torch.Tensor, acoustic: torch.Tensor) -> torch.Tensor:
        """Logits float [B, N, Q, L] of semantic int64 [B, N] and acoustic int64 [B, N, Q]."""
        return self.net(acoustic, self.semantic_token_emb(semantic))

    def forward_passes(self, steps: int) -> int:
        """Number of Conformer passes `generate` makes."""
        return steps + 1 + self.config.num_quantizers - 1

    @torch.inference_mode()
    def generate(
        self,
        semantic: torch.Tensor,
        *,
        prompt: torch.Tensor | None = None,
        steps: int = 3,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict the acoustic layers for semantic codes by mask-predict (AnyGPT's schedule).

        The first acoustic layer is decoded in `steps + 1` passes. Pass i (of 0..steps) fills every
        masked position, then masks again the `cos(pi/2 * i/steps) * N` least confident positions
        (N = frames including the prompt; ranked over all layers and frames, as the reference does)
        together with all higher layers. A pass that will re-mask samples from the 30 % most likely
        codes with Gumbel noise at temperature i/steps; a pass that will not (the last) takes the
        argmax. Each further layer then takes one greedy pass. Unlike the reference, prompt codes
        are never overwritten.

        Args:
            semantic: int64 [B, N] RVQ layer-0 codes of the speech to voice.
            prompt: int64 [B, P, Q + 1] all RVQ layers of a voice prompt (frames first), or None.
            steps: mask-predict steps of the first acoustic layer (`vc_steps`).
            generator: source of the Gumbel noise, for reproducible voices.

        Returns:
            int64 [B, N, Q]: acoustic codes (RVQ layers 1..Q) of the N frames of `semantic`.
        """
        levels, mask_id = self.config.num_quantizers, self.mask_id
        batch, frames = semantic.shape
        free = torch.ones(batch, frames, levels, dtype=torch.bool, device=semantic.device)
        acoustic = torch.full_like(free, mask_id, dtype=torch.long)
        if prompt is not None:
            semantic = torch.cat([prompt[..., 0], semantic], dim=1)
            acoustic = torch.cat([prompt[..., 1:], acoustic], dim=1)
            free = torch.cat([torch.zeros_like(prompt[..., 1:], dtype=torch.bool), free], dim=1)
        condition = self.semantic_token_emb(semantic)  # (B, N, dim)
        length = semantic.shape[1]
        # Re-mask counts cos(pi/2 * i/steps) * N for i = 0..steps, in float32 as the reference does.
        times = torch.linspace(0.0, 1.0, steps + 1)
        remask_counts = (torch.cos(times * math.pi / 2) * length).long().tolist()

        masked = free.clone()
        for i, count in enumerate(remask_counts):
            logits = self.net(acoustic, condition)  # (B, N, Q, L)
            if count == 0:
                sampled = logits.argmax(dim=-1)
            else:
                logits = _keep_top(logits, fraction=0.3)
                sampled = _gumbel_argmax(logits, i / steps, generator)
            acoustic = torch.where(masked, sampled, acoustic)
            if count == 0:
                continue
            probs = logits.softmax(dim=-1).gather(-1, sampled.unsqueeze(-1))[..., 0]
            doubt = (1.0 - probs).flatten(1)  # (B, N*Q), high = unsure
            rank = doubt.argsort(dim=-1, descending=True).argsort(dim=-1)
            masked = (rank < count).view(batch, length, levels)
            masked[:, :, 1:] = True
            masked &= free
            acoustic = acoustic.masked_fill(masked, mask_id)

        for level in range(1, levels):
            sampled = self.net(acoustic, condition).argmax(dim=-1)
            acoustic[:, :, level:] = torch.where(
                free[:, :, level:], sampled[:, :, level:], acoustic[:, :, level:]
            )
        return acoustic[:, -frames:]


def _keep_top(logits: torch.Tensor, *, fraction: float) -> torch.Tensor:
    """Set all but the top `ceil(fraction * L)` logits of each position to -inf."""
    k = math.ceil(fraction * logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter(-1, indices, values)


def _gumbel_argmax(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Sample from softmax(logits / temperature) by the Gumbel-max trick; temperature 0 = argmax."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform + 1e-10) + 1e-10)
    return (logits / temperature + gumbel.to(logits.dtype)).argmax(dim=-1)
