"""The language-model backend behind the generation loop.

The loop needs three things from a model: run the transformer body over new tokens with a KV cache,
give the last hidden state, and project it onto any rows of the output embedding. Keeping that
interface small lets another engine (e.g. vLLM) stand in for the in-process transformers model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

__all__ = ["Backend", "LlamaBackend", "TransformersBackend", "make_backend"]


class Backend(Protocol):
    """A causal LM that the generation loop drives one token at a time."""

    vocab_size: int
    device: torch.device

    def start(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Reset the cache, run the prompt int64 [1, T] and return the last hidden state [H]."""
        ...

    def advance(self, token_id: torch.Tensor) -> torch.Tensor:
        """Append one token (int64 [1, 1] on `device`) and return its hidden state [H]."""
        ...

    def project(
        self, hidden: torch.Tensor, rows: slice | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits float32 of `hidden` for the output rows `rows` (all rows when None)."""
        ...


class TransformersBackend:
    """A transformers causal LM (LLaMA family) with a dynamic KV cache.

    Args:
        model: a `*ForCausalLM` whose `get_decoder()` returns the transformer body and whose
            `get_output_embeddings()` is a bias-free linear layer.
    """

    def __init__(self, model: Any) -> None:  # noqa: ANN401 - any transformers causal LM
        self.model = model
        self.body = model.get_decoder()
        head = model.get_output_embeddings()
        self.weight: torch.Tensor = head.weight
        self.bias: torch.Tensor | None = getattr(head, "bias", None)
        self.vocab_size = int(self.weight.shape[0])
        self.device = self.weight.device
        self.cache: Any = None
        self._row_cache: dict[int, torch.Tensor] = {}

    def start(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt with a fresh cache and return the last hidden state [H]."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        return self._run(input_ids.to(self.device))

    def advance(self, token_id: torch.Tensor) -> torch.Tensor:
        """Feed one token int64 [1, 1] and return its hidden state [H]."""
        return self._run(token_id)

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.body(input_ids=input_ids, cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.last_hidden_state[0, -1]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The output-embedding rows of `ids`, gathered once and cached (for non-contiguous ids)."""
        key = id(ids)
        if key not in self._row_cache:
            self._row_cache[key] = self.weight.index_select(0, ids.to(self.device))
        return self._row_cache[key]

    def project(
        self, hidden: torch.Tensor, rows: slice | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits float32 for all rows, a contiguous slice of rows, or gathered rows."""
        import torch.nn.functional as F

        if rows is None:
            weight, bias = self.weight, self.bias
        elif isinstance(rows, slice):
            weight = self.weight[rows]
            bias = None if self.bias is None else self.bias[rows]
        else:
            weight = self.rows(rows)
            bias = None if self.bias is None else self.bias[rows.to(self.device)]
        return F.linear(hidden, weight, bias).float()


def make_backend(model: Any) -> TransformersBackend:  # noqa: ANN401 - any transformers causal LM
    """The fastest exact backend for `model`: `LlamaBackend` where it applies, else the generic one."""
    if LlamaBackend.supports(model):
        return LlamaBackend(model)
    return TransformersBackend(model)


class LlamaBackend(TransformersBackend):
    """A lean forward pass over a transformers LLaMA model's own weights, for decoding.

    Building it stacks each layer's q/k/v and gate/up weights into one matrix and rebinds the
    model's parameters to slices of it (see `_stack`): memory stays the same, the model still runs
    as before, but its weights now share storage (save a model loaded for inference with care).

    The transformers module stack costs about a millisecond of Python per token, which dominates a
    small model's step and hides what slicing the output layer saves. This runs the same operations
    in the same order (RMSNorm in float32, rotary embedding, SDPA, SwiGLU), so its hidden states, and
    greedy tokens, equal the model's; the tests check that against `model.generate`. Used for plain
    LLaMA configurations (default RoPE, SiLU, SDPA, no grouped-query attention, no biases); anything
    else takes the generic path.
    """

    @staticmethod
    def supports(model: Any) -> bool:  # noqa: ANN401
        """Whether the lean path reproduces `model` exactly."""
        config = getattr(model, "config", None)
        if config is None or getattr(config, "model_type", None) != "llama":
            return False
        rope = getattr(config, "rope_parameters", None) or {}
        return (
            config.hidden_act == "silu"
            and rope.get("rope_type", "default") == "default"
            and config.num_key_value_heads == config.num_attention_heads
            and not config.attention_bias
            and not config.mlp_bias
            and getattr(config, "_attn_implementation", "sdpa") == "sdpa"
            and not model.training
        )

    def __init__(self, model: Any) -> None:  # noqa: ANN401
        import torch

        super().__init__(model)
        config = model.config
        self.heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        self.embed = self.body.embed_tokens.weight
        # q/k/v and gate/up run as one matrix product each: the same dot products as separate
        # layers, with fewer kernel launches per token.
        self.layers = [
            (
                layer.input_layernorm.weight,
                _stack([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                layer.self_attn.o_proj.weight,
                layer.post_attention_layernorm.weight,
                _stack([layer.mlp.gate_proj, layer.mlp.up_proj]),
                layer.mlp.down_proj.weight,
            )
            for layer in self.body.layers[: config.num_hidden_layers]
        ]
        self.norm = self.body.norm.weight
        self.eps = config.rms_norm_eps
        self.inv_freq = self.body.rotary_emb.inv_freq
        self.rope_scale = self.body.rotary_emb.attention_scaling
        self.dtype = self.embed.dtype
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0
        self.cos = self.sin = torch.empty(
            0
        )  # rotary tables (positions, 1, 1, head_dim), grown on use

    def start(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt with an empty cache and return the last hidden state [H]."""
        self.keys, self.values, self.length = [], [], 0
        return self._run(input_ids.to(self.device))

    def _cache(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (1, heads, T, head_dim) to the layer's preallocated cache; return the views.

        Buffers grow by doubling, so a step writes in place instead of copying the whole cache.
        """
        import torch

        start, end = self.length, self.length + k.shape[2]
        if layer == len(self.keys) or end > self.keys[layer].shape[2]:
            capacity = max(256, 2 * end)
            grown = [
                torch.empty(
                    (1, self.heads, capacity, self.head_dim), dtype=k.dtype, device=k.device
                )
                for _ in range(2)
            ]
            if layer < len(self.keys):
                grown[0][:, :, :start] = self.keys[layer][:, :, :start]
                grown[1][:, :, :start] = self.values[layer][:, :, :start]
                self.keys[layer], self.values[layer] = grown
            else:
                self.keys.append(grown[0])
                self.values.append(grown[1])
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        import torch

        dtype = x.dtype
        if dtype != torch.float32:
            x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * (x if dtype == torch.float32 else x.to(dtype))

    def _rotary(self, end: int) -> None:
        """Make the cos/sin tables cover positions [0, end), computed as transformers does."""
        import torch

        if self.cos.shape[0] >= end:
            return
        positions = torch.arange(max(256, 2 * end), device=self.device)
        freqs = positions[:, None].float() * self.inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * self.rope_scale).to(self.dtype)[:, None, None, :]
        self.sin = (emb.sin() * self.rope_scale).to(self.dtype)[:, None, None, :]

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        steps = input_ids.shape[1]
        h = F.embedding(input_ids, self.embed)  # (1, T, H)
        end = self.length + steps
        self._rotary(end)
        cos, sin = self.cos[self.length : end], self.sin[self.length : end]  # (T, 1, 1, head_dim)
        half = self.head_dim // 2
        width = self.heads * self.head_dim
        mask = None  # one new token, or a prompt on an empty cache: SDPA's own causal rule
        if steps > 1 and self.length:  # a chunk after cached tokens: row t sees keys <= length + t
            mask = torch.ones(steps, end, dtype=torch.bool, device=self.device).tril(self.length)
        for i, (ln1, wqkv, wo, ln2, wgu, wd) in enumerate(self.layers):
            x = self._rms(h, ln1)
            qkv = F.linear(x, wqkv).view(steps, 3, self.heads, self.head_dim)
            # q and k rotated together: the same elementwise products as separately, half the calls
            qk = qkv[:, :2]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            q = qk[:, 0].transpose(0, 1)[None]  # (1, heads, T, head_dim)
            k = qk[:, 1].transpose(0, 1)[None]
            v = qkv[:, 2].transpose(0, 1)[None]
            k, v = self._cache(i, k, v)
            a = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=0.0,
                scale=self.scaling,
                is_causal=steps > 1 and mask is None,
            )
            h = h + F.linear(a.transpose(1, 2).reshape(1, steps, width), wo)
            x = self._rms(h, ln2)
            gate, up = F.linear(x, wgu).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, wd)
        self.length = end
        return self._rms(h, self.norm)[0, -1]


def _stack(linears: list[Any]) -> torch.Tensor:
    """The linears' weights as one matrix, which the linears then use (as views): no second copy.

    Stacking copies would double a 7B model's attention and MLP input weights (about 9 GB in
    float16). Instead the layers' own parameters are rebound to row slices of the stacked matrix,
    so the model computes exactly as before and the old tensors are freed, one layer at a time.
    """
    import torch

    weights = [linear.weight for linear in linears]
    stacked = torch.cat([w.detach() for w in weights])
    start = 0
    for linear, weight in zip(linears, weights, strict=True):
        rows = weight.shape[0]
        linear.weight = torch.nn.Parameter(
            stacked[start : start + rows], requires_grad=weight.requires_grad
        )
        start += rows
    return stacked
