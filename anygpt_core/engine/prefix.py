"""Keys and values of token sequences already run, reused by prompts that start with them.

A chat sends its whole history with every turn, and a server's requests share its system line;
without this the backend runs every prompt from its first token. `PrefixCache` keeps, per
sequence of token ids, each layer's keys and values of those tokens (`Backend.prefill` stores every
prompt; `Batch` stores a finished answer, prompt and generated tokens together). A new prompt takes
the longest start it shares with any entry and runs only the rest. Entries are dropped least
recently used first once their bytes pass the budget.

Keys and values of a prefix do not depend on what follows it (attention is causal), so a prompt
computed after a cached prefix attends to the same values as one run from its first token; the
floating-point sums may be grouped differently (another batch shape), as between a prompt run
alone and in a batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_BYTES", "PrefixCache"]

#: The default budget: 256 MiB (512 tokens of a 7B LLaMA in float16, far more for small models).
DEFAULT_BYTES = 256 * 2**20

#: Shorter shared starts are run again: fitting them into the batch costs about what they save.
MIN_REUSE = 8


class PrefixCache:
    """Per token sequence, its keys and values; looked up by the longest shared start.

    Safe to share between threads (several sessions prefill at once).

    Args:
        budget: the most bytes of keys and values kept; 0 keeps nothing.
    """

    def __init__(self, budget: int = DEFAULT_BYTES) -> None:
        if budget < 0:
            raise ValueError("a prefix cache's budget must be >= 0 bytes")
        self.budget = budget
        self._entries: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._next = 0
        self._lock = threading.Lock()
        #: prompt tokens taken from the cache, and run, since it was made (for benchmarks, tests)
        self.reused = 0
        self.computed = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Bytes of keys and values held now."""
        return self._bytes

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def match(self, tokens: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """`(n, kv)`: the first `n` of `tokens` (int64 [T], CPU) are cached, `kv` holds them.

        `kv` is (layers, 2, heads, at least n, head_dim); n leaves at least one token to run and
        is 0 (kv None) when less than `MIN_REUSE` tokens would be reused.
        """
        best, found = 0, None
        with self._lock:
            for key, (ids, _) in self._entries.items():
                length = min(ids.numel(), tokens.numel() - 1)
                if length <= best:
                    continue
                differ = (ids[:length] != tokens[:length]).nonzero()
                shared = length if differ.numel() == 0 else int(differ[0, 0])
                if shared > best:
                    best, found = shared, key
            if found is None or best < MIN_REUSE:
                return 0, None
            self._entries.move_to_end(found)
            kv = self._entries[found][1]
        return best, kv

    def add(self, tokens: torch.Tensor, kv: torch.Tensor) -> None:
        """Keep `kv` (layers, 2, heads, T, head_dim) for `tokens` (int64 [T], CPU).

        Entries whose tokens start the new one are dropped (it holds them); nothing is added
        when an entry already starts with `tokens`, or when `kv` alone passes the budget.
        """
        size = kv.numel() * kv.element_size()
        if size > self.budget or tokens.numel() < MIN_REUSE:
            return
        with self._lock:
            for key, (ids, _) in list(self._entries.items()):
                common = min(ids.numel(), tokens.numel())
                if not bool((ids[:common] == tokens[:common]).all()):
                    continue
                if ids.numel() >= tokens.numel():  # an entry holds all of these already
                    self._entries.move_to_end(key)
                    return
                self._drop(key)
            self._entries[self._next] = (tokens, kv)
            self._next += 1
            self._bytes += size
            while self._bytes > self.budget:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        _, kv = self._entries.pop(key)
        self._bytes -= kv.numel() * kv.element_size()

    def count(self, reused: int, computed: int) -> None:
        """Record a prefill's prompt tokens taken from the cache and run."""
        with self._lock:
            self.reused += reused
            self.computed += computed
