"""The language-model backend behind the generation loop.

The loop needs three things from a model: run the transformer body over new tokens with a KV cache,
give the last hidden state, and project it onto any rows of the output embedding. Keeping that
interface small lets another engine (e.g. vLLM) stand in for the in-process transformers model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

__all__ = ["Backend", "TransformersBackend"]


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

    def project(self, hidden: torch.Tensor, rows: slice | torch.Tensor | None = None) -> torch.Tensor:
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

    def project(self, hidden: torch.Tensor, rows: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Logits float32 for all rows, a contiguous slice of rows, or gathered rows."""
        import torch.nn.functional as F  # noqa: N812

        if rows is None:
            weight, bias = self.weight, self.bias
        elif isinstance(rows, slice):
            weight = self.weight[rows]
            bias = None if self.bias is None else self.bias[rows]
        else:
            weight = self.rows(rows)
            bias = None if self.bias is None else self.bias[rows.to(self.device)]
        return F.linear(hidden, weight, bias).float()
