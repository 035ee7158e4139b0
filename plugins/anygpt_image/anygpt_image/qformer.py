"""The causal Q-Former of SEED-2: BERT layers run over 32 learned queries only.

Module and parameter names are BLIP-2's (`bert.encoder.layer.N.crossattention.self.key`, ...), so
the published `Qformer.bert.*` keys load unchanged. SEED removed the text parts (word and position
embeddings, the text FFN `intermediate`/`output`, the LM head); what is left reads image features
through cross-attention on every `cross_attention_freq`-th layer (0, 2, 4, ...) and lets query i
attend to queries 0..i only (the causal mask that makes the codes left-to-right).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anygpt_image.config import SeedConfig

__all__ = ["QFormer"]


class SelfOrCrossAttention(nn.Module):
    """BERT attention projections; keys and values read `kv_width` features."""

    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *, causal: bool) -> torch.Tensor:
        """x: (B, Q, H) attends to memory (B, M, W) -> (B, Q, H)."""
        q, k, v = (
            self._split(self.query(x)),
            self._split(self.key(memory)),
            self._split(self.value(memory)),
        )
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, heads, Q, head_dim)
        return out.transpose(1, 2).reshape(x.shape)


class AddNorm(nn.Module):
    """Dense projection, residual, LayerNorm (BERT's `*Output` modules)."""

    def __init__(self, width_in: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """x: (B, Q, width_in), residual: (B, Q, H) -> (B, Q, H)."""
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    """Attention followed by its output projection (BERT's `BertAttention`)."""

    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float) -> None:
        super().__init__()
        self.self = SelfOrCrossAttention(hidden, heads, kv_width)
        self.output = AddNorm(hidden, hidden, eps)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *, causal: bool) -> torch.Tensor:
        """x: (B, Q, H), memory: (B, M, W) -> (B, Q, H)."""
        return self.output(self.self(x, memory, causal=causal), x)


class Intermediate(nn.Module):
    """FFN expansion with exact GELU (`intermediate_query`)."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Q, H) -> (B, Q, intermediate)."""
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    """Causal self-attention, optional cross-attention to the image, query FFN."""

    def __init__(self, config: SeedConfig, index: int) -> None:
        super().__init__()
        hidden, heads, eps = (
            config.qformer_hidden,
            config.qformer_heads,
            config.qformer_layer_norm_eps,
        )
        self.attention = Attention(hidden, heads, hidden, eps)
        self.has_cross_attention = index % config.cross_attention_freq == 0
        if self.has_cross_attention:
            self.crossattention = Attention(hidden, heads, config.vit_width, eps)
        self.intermediate_query = Intermediate(hidden, config.qformer_intermediate)
        self.output_query = AddNorm(config.qformer_intermediate, hidden, eps)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """x: queries (B, Q, H), image: (B, N, vit_width) -> (B, Q, H)."""
        x = self.attention(x, x, causal=True)
        if self.has_cross_attention:
            x = self.crossattention(x, image, causal=False)
        return self.output_query(self.intermediate_query(x), x)


class Embeddings(nn.Module):
    """What SEED keeps of BERT's embeddings: a LayerNorm over the query tokens.

    `position_ids` is BERT's persistent buffer; the published state dict holds it, queries never
    read it (they carry no positions).
    """

    def __init__(self, config: SeedConfig) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.qformer_hidden, eps=config.qformer_layer_norm_eps)
        self.register_buffer(
            "position_ids", torch.arange(config.qformer_max_positions).expand((1, -1)).clone()
        )

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        """queries: (B, Q, H) -> (B, Q, H)."""
        return self.LayerNorm(queries)


class Encoder(nn.Module):
    """The stack of Q-Former layers."""

    def __init__(self, config: SeedConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config, i) for i in range(config.qformer_layers))


class Bert(nn.Module):
    """Container matching the `Qformer.bert.*` key prefix."""

    def __init__(self, config: SeedConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)


class QFormer(nn.Module):
    """Causal Q-Former: query tokens read image features; output (B, Q, hidden)."""

    def __init__(self, config: SeedConfig) -> None:
        super().__init__()
        self.bert = Bert(config)

    def forward(self, queries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """queries: (B, Q, H), image: (B, N, vit_width) -> (B, Q, H)."""
        x = self.bert.embeddings(queries)
        for layer in self.bert.encoder.layer:
            x = layer(x, image)
        return x
