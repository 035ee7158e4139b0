"""The language-model backend behind the generation loop.

The loop needs three things from a model: run the transformer body over new tokens with a KV cache,
give the last hidden state, and project it onto any rows of the output embedding. Keeping that
interface small lets another engine (e.g. vLLM) stand in for the in-process transformers model.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from anygpt_core.engine.prefix import MIN_REUSE, PrefixCache

if TYPE_CHECKING:
    import torch

__all__ = ["Backend", "Head", "LlamaBackend", "TransformersBackend", "left_pad", "make_backend"]


class Head(NamedTuple):
    """Rows of the output layer, gathered once (`Backend.head`) and projected onto many times."""

    weight: torch.Tensor
    bias: torch.Tensor | None


class Backend(Protocol):
    """A causal LM that the generation loop drives one token per row of a batch at a time.

    A backend holds only the model: the KV cache of a call lives in the session `prefill`
    returns, so several callers can use one backend.
    """

    vocab_size: int
    device: torch.device

    def prefill(self, prompts: Sequence[torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Run prompts (int64 [T_b] each), left-padded together, with a new session.

        Returns the session (its KV cache) and the last hidden states [B, H].
        """
        ...

    def step(self, session: Any, tokens: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        """Append one token per row (int64 [B] on `device`) and return the hidden states [B, H]."""
        ...

    def select(self, session: Any, rows: torch.Tensor) -> None:  # noqa: ANN401
        """Keep only the rows `rows` (int64 indices, in that order) of the session's batch."""
        ...

    def can_join(self, session: Any) -> bool:  # noqa: ANN401
        """Whether `join` can append rows to `session` (else new rows wait for it to end)."""
        ...

    def join(self, session: Any, other: Any) -> None:  # noqa: ANN401
        """Append the rows of `other` (a session `prefill` just made) to `session`'s batch.

        Rows keep their own positions; columns of the cache that a row has no token for are
        hidden from it, so each row attends to exactly what it did in its own session.
        """
        ...

    def remember(self, session: Any, row: int, tokens: torch.Tensor) -> None:  # noqa: ANN401
        """Keep row `row`'s keys and values for later prompts that start with `tokens` (optional).

        `tokens` (int64 [T]) are every token the row has run, prompt first; a backend with no
        prefix cache ignores it.
        """
        ...

    def head(self, rows: slice | torch.Tensor) -> Head:
        """The output-layer rows `rows` (a slice is a view; indices are gathered once)."""
        ...

    def project(
        self, hidden: torch.Tensor, rows: slice | torch.Tensor | Head | None = None
    ) -> torch.Tensor:
        """Logits float32 [B, N] of `hidden` [B, H] for the output rows `rows` (all when None)."""
        ...


@dataclass
class _Session:
    """One call's KV cache and the batch's padding (transformers' cache, or the lean path's)."""

    cache: Any = None
    #: bool (B, capacity): key positions that hold a token (False: left padding).
    valid: Any = None
    #: int64 (B,): the position id of each row's next token.
    positions: Any = None
    length: int = 0
    padded: bool = False
    #: more than every row's next position (0: not known yet); sizes the rotary tables
    top: int = 0
    keys: list[Any] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    #: per row, the prompt tokens `prefill` took from the prefix cache
    reused: list[int] = field(default_factory=list)


def left_pad(
    prompts: Sequence[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded (pad id 0) into int64 [B, T], and their attention mask bool [B, T]."""
    import torch

    flat = [p.reshape(-1) for p in prompts]
    width = max(p.numel() for p in flat)
    ids = torch.zeros((len(flat), width), dtype=torch.long, device=device)
    mask = torch.zeros((len(flat), width), dtype=torch.bool, device=device)
    for row, p in enumerate(flat):
        ids[row, width - p.numel() :] = p.to(device)
        mask[row, width - p.numel() :] = True
    return ids, mask


class TransformersBackend:
    """A transformers causal LM (LLaMA family) with a dynamic KV cache per session.

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
        #: keys and values of prompts and answers already run, which later prompts that start
        #: with them reuse (`anygpt_core.engine.prefix`); None runs every prompt in full
        self.prefix_cache: PrefixCache | None = PrefixCache()

    def prefill(self, prompts: Sequence[torch.Tensor]) -> tuple[_Session, torch.Tensor]:
        """Run the prompts and return the session and hidden states [B, H].

        With a prefix cache, each prompt's longest cached start is copied into the session and
        only the rest runs; every prompt is then kept in the cache.
        """
        flat = [p.reshape(-1) for p in prompts]
        cache = self.prefix_cache
        if cache is None or not cache.budget:
            return self._prefill(flat)
        hits = [cache.match(p.cpu()) for p in flat]
        reused = sum(n for n, _ in hits)
        if reused:
            session, hidden = self._prefill_after(flat, hits)
        else:
            session, hidden = self._prefill(flat)
        session.reused = [n for n, _ in hits]
        cache.count(reused, sum(p.numel() for p in flat) - reused)
        for row, tokens in enumerate(flat):
            self.remember(session, row, tokens)
        return session, hidden

    def _prefill(self, prompts: Sequence[torch.Tensor]) -> tuple[_Session, torch.Tensor]:
        """Run the prompts with a fresh cache: the session and hidden states [B, H]."""
        from transformers import DynamicCache

        ids, mask = left_pad(prompts, self.device)
        session = _Session(cache=DynamicCache(config=self.model.config), valid=mask)
        session.padded = not bool(mask.all())
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        session.positions = positions[:, -1] + 1
        return session, self._run(session, ids, positions)

    def _prefill_after(
        self, prompts: Sequence[torch.Tensor], hits: Sequence[tuple[int, torch.Tensor | None]]
    ) -> tuple[_Session, torch.Tensor]:
        """Run what follows each prompt's cached start (`hits`: `PrefixCache.match` per prompt).

        The cached starts end at one column, A (the longest's length), each right-aligned before
        it; the rest of the prompts are left-padded after it. Columns a row has no token in are
        zeros, hidden by its `valid` mask, and its positions count only its own tokens.
        """
        import torch

        reuse = [n for n, _ in hits]
        ids, mask = left_pad([p[n:] for p, n in zip(prompts, reuse, strict=True)], self.device)
        start = max(reuse)
        valid = torch.zeros((len(prompts), start + ids.shape[1]), dtype=torch.bool)
        valid = valid.to(self.device)
        valid[:, start:] = mask
        for row, n in enumerate(reuse):
            valid[row, start - n : start] = True
        offset = torch.tensor(reuse, device=self.device)[:, None]
        positions = (offset + mask.long().cumsum(1) - 1).clamp(min=0)
        session = self._seeded(hits, start, ids.shape[1])
        session.valid = valid
        session.padded = True
        session.positions = positions[:, -1] + 1
        hidden = self._run(session, ids, positions)
        # the prompts ran with the mask; with no hole and no padding left, steps need none
        session.padded = not bool(session.valid.all())
        return session, hidden

    def _seeded(
        self, hits: Sequence[tuple[int, torch.Tensor | None]], start: int, more: int
    ) -> _Session:
        """A session whose cache holds each row's cached start before column `start`."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer, (keys, values) in enumerate(_seed_layers(hits, start, start)):
            cache.update(keys, values, layer)
        return _Session(cache=cache)

    def _layers(self, session: _Session) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values (B, heads, columns, head_dim) of the session."""
        return [(layer.keys, layer.values) for layer in session.cache.layers]

    def _columns(self, session: _Session) -> torch.Tensor:
        """Bool (B, columns): the columns each row holds a token in."""
        return session.valid

    def remember(self, session: _Session, row: int, tokens: torch.Tensor) -> None:
        """Keep row `row`'s keys and values in the prefix cache, under `tokens` (all it ran)."""
        import torch

        cache = self.prefix_cache
        if cache is None or not cache.budget or tokens.numel() < MIN_REUSE:
            return
        if not self.can_join(session):  # a sliding window or offloaded cache: not every column
            return
        columns = self._columns(session)[row].nonzero().squeeze(1)
        layers = self._layers(session)
        if columns.numel() != tokens.numel() or not layers:
            return
        keys = layers[0][0]
        size = 2 * len(layers) * keys.shape[1] * columns.numel() * keys.shape[3]
        tokens = tokens.reshape(-1).cpu()
        if not cache.wants(tokens, size * keys.element_size()):  # before copying anything
            return
        kv = torch.stack([torch.stack((k[row, :, columns], v[row, :, columns])) for k, v in layers])
        cache.add(tokens, kv)

    def step(self, session: _Session, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row int64 [B] and return the hidden states [B, H]."""
        import torch

        ones = torch.ones((tokens.shape[0], 1), dtype=torch.bool, device=self.device)
        session.valid = torch.cat([session.valid, ones], dim=1)
        positions = session.positions[:, None]
        session.positions = session.positions + 1
        return self._run(session, tokens[:, None], positions)

    def select(self, session: _Session, rows: torch.Tensor) -> None:
        """Keep the batch rows `rows` of the session's cache.

        Columns no kept row has a token in are dropped from the left, as `LlamaBackend.select`
        does; the session stays padded, so each row's positions are still passed explicitly.
        """
        rows = rows.to(self.device)
        session.cache.batch_select_indices(rows)
        session.valid = session.valid[rows]
        session.positions = session.positions[rows]
        if session.padded and self.can_join(session):  # plain layers: their tensors are the cache
            start = _first_used(session.valid)
            for layer in session.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            session.valid = session.valid[:, start:]

    def can_join(self, session: _Session) -> bool:
        """Whether rows can join `session`: its cache is plain (no sliding window, no offload)."""
        return all(type(layer).__name__ == "DynamicLayer" for layer in session.cache.layers)

    def join(self, session: _Session, other: _Session) -> None:
        """Append `other`'s rows to `session`, both caches left-padded to the longer one."""
        import torch

        if not (self.can_join(session) and self.can_join(other)):
            raise RuntimeError("rows cannot join this model's cache (see `can_join`)")
        length = max(session.valid.shape[1], other.valid.shape[1])
        for mine, theirs in zip(session.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
            mine.values = torch.cat(
                [_pad_left(mine.values, length), _pad_left(theirs.values, length)]
            )
        session.valid = torch.cat(
            [_pad_left(session.valid, length, dim=1), _pad_left(other.valid, length, dim=1)]
        )
        session.positions = torch.cat([session.positions, other.positions])
        session.padded = True

    def _run(
        self, session: _Session, input_ids: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        mask = session.valid.long() if session.padded else None
        out = self.body(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions if session.padded else None,
            cache=session.cache,
            use_cache=True,
        )
        session.cache = out.cache
        return out.last_hidden_state[:, -1]

    def head(self, rows: slice | torch.Tensor) -> Head:
        """The output rows `rows`: a view for a slice, a gathered copy for indices."""
        if isinstance(rows, slice):
            bias = None if self.bias is None else self.bias[rows]
            return Head(self.weight[rows], bias)
        rows = rows.to(self.device)
        bias = None if self.bias is None else self.bias[rows]
        return Head(self.weight.index_select(0, rows), bias)

    def project(
        self, hidden: torch.Tensor, rows: slice | torch.Tensor | Head | None = None
    ) -> torch.Tensor:
        """Logits float32 for all rows, a slice or indices of rows, or a gathered `Head`."""
        import torch.nn.functional as F

        if rows is None:
            weight, bias = self.weight, self.bias
        else:
            weight, bias = rows if isinstance(rows, Head) else self.head(rows)
        if hidden.shape[0] > 3 and hidden.device.type == "cpu":
            # the same dot products. From 4 rows MKL's (V, H) @ (H, B) runs about 1.5x faster on
            # the CPU than linear's (B, H) @ (H, V)^T; for 2 or 3 rows linear costs what one row
            # does and the other order twice that (49,418 x 256 head: 0.93 against 1.81 ms)
            logits = (weight @ hidden.T).T
            return (logits if bias is None else logits + bias).float()
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
    greedy tokens, equal the model's; the tests check that against `model.generate`. Batches are
    left-padded: each row has its own positions, and an attention mask hides the padding. Used for
    plain LLaMA configurations (default RoPE, SiLU, SDPA, no grouped-query attention, no biases);
    anything else takes the generic path.
    """

    @staticmethod
    def supports(model: Any) -> bool:  # noqa: ANN401
        """Whether the lean path reproduces `model` exactly."""
        import torch

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
            # it stacks plain weight matrices; quantised layers (anygpt_core.engine.quantize) hold none
            and isinstance(
                getattr(model.get_decoder().layers[0].mlp.down_proj, "weight", None), torch.Tensor
            )
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
        self._rms_constants = (
            torch.tensor(float(config.hidden_size), device=self.device),
            torch.tensor(self.eps, dtype=torch.float32, device=self.device),
        )
        self.inv_freq = self.body.rotary_emb.inv_freq
        self.rope_scale = self.body.rotary_emb.attention_scaling
        self.dtype = self.embed.dtype
        self._lock = threading.Lock()
        # rotary tables (positions, head_dim): cos, sin, and sin with its first half negated (see
        # `_run`); grown on use and replaced, never written in place
        self._tables = (torch.empty(0), torch.empty(0), torch.empty(0))

    def _prefill(self, prompts: Sequence[torch.Tensor]) -> tuple[_Session, torch.Tensor]:
        """Run the prompts with an empty cache; return the session and hidden states [B, H]."""
        ids, mask = left_pad(prompts, self.device)
        session = _Session(valid=mask, padded=not bool(mask.all()))
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        session.positions = positions[:, -1] + 1
        return session, self._run(session, ids, positions)

    def _seeded(
        self, hits: Sequence[tuple[int, torch.Tensor | None]], start: int, more: int
    ) -> _Session:
        """A session whose buffers hold each row's cached start before column `start`."""
        session = _Session(length=start)
        capacity = max(256, 2 * (start + more))
        for keys, values in _seed_layers(hits, start, capacity):
            session.keys.append(keys)
            session.values.append(values)
        return session

    def _layers(self, session: _Session) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values (B, heads, columns, head_dim): views of the buffers."""
        end = session.length
        return [
            (k[:, :, :end], v[:, :, :end])
            for k, v in zip(session.keys, session.values, strict=True)
        ]

    def _columns(self, session: _Session) -> torch.Tensor:
        """Bool (B, columns): the columns each row holds a token in."""
        return _valid(session)

    def step(self, session: _Session, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row int64 [B] and return the hidden states [B, H]."""
        positions = session.positions[:, None]
        session.positions = session.positions + 1
        return self._run(session, tokens[:, None], positions)

    def select(self, session: _Session, rows: torch.Tensor) -> None:
        """Keep the batch rows `rows` of the session's cache (a copy of what is kept).

        Columns no kept row has a token in are dropped from the left: rows that joined a
        long-running batch were right-aligned to its length, and without this the cache (and
        every step's attention) would keep the width of the batch's whole history.
        """
        rows = rows.to(self.device)
        valid = _valid(session)[rows]
        start = _first_used(valid) if session.padded else 0
        session.keys = [k[rows, :, start:] for k in session.keys]
        session.values = [v[rows, :, start:] for v in session.values]
        session.valid = valid[:, start:]
        session.length -= start
        session.padded = not bool(session.valid.all())
        session.positions = session.positions[rows]

    def can_join(self, session: _Session) -> bool:
        """Rows can always join the lean path's cache."""
        return True

    def join(self, session: _Session, other: _Session) -> None:
        """Append `other`'s rows to `session`: one new cache, each part right-aligned in it.

        The columns a row has no token in are zeros (never garbage: a masked key still enters
        the product) and hidden by the row's `valid` mask.
        """
        import torch

        length = max(session.length, other.length)
        capacity = max(256, 2 * length)
        for layer in range(len(session.keys)):
            for parts in (session.keys, session.values):
                theirs = other.keys if parts is session.keys else other.values
                mine, new = parts[layer], theirs[layer]
                rows = mine.shape[0] + new.shape[0]
                merged = mine.new_zeros((rows, self.heads, capacity, self.head_dim))
                merged[: mine.shape[0], :, length - session.length : length] = mine[
                    :, :, : session.length
                ]
                merged[mine.shape[0] :, :, length - other.length : length] = new[
                    :, :, : other.length
                ]
                parts[layer] = merged
        session.valid = torch.cat(
            [_pad_left(_valid(session), length, dim=1), _pad_left(_valid(other), length, dim=1)]
        )
        session.positions = torch.cat([session.positions, other.positions])
        session.top = max(session.top, other.top)
        session.length = length
        session.padded = True

    def _cache(
        self, session: _Session, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, heads, T, head_dim) to the layer's preallocated cache; return views.

        Buffers grow by doubling, so a step writes in place instead of copying the whole cache.
        """
        import torch

        start, end = session.length, session.length + k.shape[2]
        keys, values = session.keys, session.values
        if layer == len(keys) or end > keys[layer].shape[2]:
            capacity = max(256, 2 * end)
            shape = (k.shape[0], self.heads, capacity, self.head_dim)
            grown = [torch.empty(shape, dtype=k.dtype, device=k.device) for _ in range(2)]
            if layer < len(keys):
                grown[0][:, :, :start] = keys[layer][:, :, :start]
                grown[1][:, :, :start] = values[layer][:, :, :start]
                keys[layer], values[layer] = grown
            else:
                keys.append(grown[0])
                values.append(grown[1])
        keys[layer][:, :, start:end] = k
        values[layer][:, :, start:end] = v
        return keys[layer][:, :, :end], values[layer][:, :, :end]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """LlamaRMSNorm, bit for bit: `x * rsqrt(mean(x^2) + eps)` in float32, cast, scaled.

        `mean` is `sum` then a division by the width; spelled out, with the width and eps as
        float32 tensors made once (a Python number becomes a tensor at every call) and the
        temporaries updated in place, it gives the same bits in fewer, cheaper calls.
        """
        import torch

        dtype = x.dtype
        if dtype != torch.float32:
            x = x.to(torch.float32)
        width, eps = self._rms_constants
        scale = x.pow(2).sum(-1, keepdim=True).div_(width).add_(eps).rsqrt_()
        x = x * scale
        return weight * (x if dtype == torch.float32 else x.to(dtype))

    def _rotary(self, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cos, sin and signed sin tables (positions, head_dim) covering [0, end).

        cos and sin as transformers computes them; the signed table is sin with its first half
        negated, for the rotation in `_run`.
        """
        import torch

        tables = self._tables
        if tables[0].shape[0] >= end:
            return tables
        with self._lock:  # several sessions may grow it at once; each gets a complete table
            tables = self._tables
            if tables[0].shape[0] < end:
                positions = torch.arange(max(256, 2 * end), device=self.device)
                freqs = positions[:, None].float() * self.inv_freq.float()[None, :]
                emb = torch.cat((freqs, freqs), dim=-1)
                cos = (emb.cos() * self.rope_scale).to(self.dtype)
                sin = (emb.sin() * self.rope_scale).to(self.dtype)
                half = self.head_dim // 2
                signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
                tables = self._tables = (cos, sin, signed)
        return tables

    def _run(
        self, session: _Session, input_ids: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        batch, steps = input_ids.shape
        h = F.embedding(input_ids, self.embed)  # (B, T, H)
        past = session.length
        end = past + steps
        # the rotary table must cover every row's position: after the first call, one more
        # than the last call's bound (each step adds one to every row's position)
        top = session.top if steps == 1 and session.top else int(positions.max()) + 1
        session.top = top + 1
        cos, _, signed = self._rotary(top)
        cos = cos[positions][:, :, None, None, :]  # (B, T, 1, 1, head_dim)
        sin = signed[positions][:, :, None, None, :]
        half = self.head_dim // 2
        width = self.heads * self.head_dim
        mask = None  # no padding: a prompt on an empty cache, or one new token: SDPA's causal rule
        if session.padded:
            if session.valid.shape[1] < end:  # the new tokens are real tokens
                ones = session.valid.new_ones((batch, end - session.valid.shape[1]))
                session.valid = torch.cat([session.valid, ones], dim=1)
            # row b, query t sees its own non-padding keys up to its position; a padding query
            # sees itself too, so no row of the softmax is empty
            keys = torch.arange(end, device=self.device)
            queries = past + torch.arange(steps, device=self.device)
            causal = keys[None, :] <= queries[:, None]  # (T, end)
            mask = (causal[None] & session.valid[:, None, :end]) | (keys == queries[:, None])
            mask = mask[:, None]  # (B, 1, T, end)
        for i, (ln1, wqkv, wo, ln2, wgu, wd) in enumerate(self.layers):
            x = self._rms(h, ln1)
            qkv = F.linear(x, wqkv).view(batch, steps, 3, self.heads, self.head_dim)
            # q and k rotated together: the same elementwise products as separately, half the
            # calls. transformers' rotate_half(x) * sin is cat(-x2, x1) * sin; rolling x by half
            # gives cat(x2, x1), and the signed table cat(-sin1, sin2) puts the minus on the other
            # factor, which rounds the same: the products are equal bit for bit, in two calls
            # instead of five.
            qk = qkv[:, :, :2]
            qk = qk * cos + qk.roll(half, -1) * sin
            q = qk[:, :, 0].transpose(1, 2)  # (B, heads, T, head_dim)
            k = qk[:, :, 1].transpose(1, 2)
            v = qkv[:, :, 2].transpose(1, 2)
            k, v = self._cache(session, i, k, v)
            a = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=0.0,
                scale=self.scaling,
                is_causal=steps > 1 and mask is None,
            )
            h = h + F.linear(a.transpose(1, 2).reshape(batch, steps, width), wo)
            x = self._rms(h, ln2)
            gate, up = F.linear(x, wgu).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, wd)
        session.length = end
        return self._rms(h, self.norm)[:, -1]


def _seed_layers(
    hits: Sequence[tuple[int, torch.Tensor | None]], start: int, capacity: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, keys and values (B, heads, capacity, head_dim) seeded from `hits`.

    `hits` holds `(n, kv)` per row, kv as `PrefixCache` keeps it: the row's first n tokens end
    right before column `start`; other columns are zeros.
    """
    kv = next(kv for _, kv in hits if kv is not None)
    layers, _, heads, _, width = kv.shape
    shape = (len(hits), heads, capacity, width)
    out = []
    for layer in range(layers):
        keys = kv.new_zeros(shape)
        values = kv.new_zeros(shape)
        for row, (n, cached) in enumerate(hits):
            if cached is not None and n:
                keys[row, :, start - n : start] = cached[layer, 0, :, :n]
                values[row, :, start - n : start] = cached[layer, 1, :, :n]
        out.append((keys, values))
    return out


def _valid(session: _Session) -> torch.Tensor:
    """Bool (B, length): the session's token columns (its mask stops growing while unpadded)."""
    import torch

    valid = session.valid
    if valid.shape[1] < session.length:
        ones = valid.new_ones((valid.shape[0], session.length - valid.shape[1]))
        valid = torch.cat([valid, ones], dim=1)
    return valid[:, : session.length]


def _first_used(valid: torch.Tensor) -> int:
    """The first column of a bool (B, length) mask that some row holds a token in."""
    return int(valid.any(0).int().argmax())


def _pad_left(x: torch.Tensor, length: int, *, dim: int = 2) -> torch.Tensor:
    """`x` with zeros before its entries along `dim`, to `length` (keys: dim 2; masks: dim 1)."""
    import torch.nn.functional as F

    missing = length - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [missing, 0]
    return F.pad(x, pad)


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
