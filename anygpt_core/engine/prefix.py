"""Keys and values of token sequences already run, reused by prompts that start with them.

A chat sends its whole history with every turn, and a server's requests share its system line;
without this the backend runs every prompt from its first token. `PrefixCache` keeps, per
sequence of token ids, each layer's keys and values of those tokens (`Backend.prefill` stores every
prompt; `Batch` stores a finished answer, prompt and generated tokens together). A new prompt takes
the longest start it shares with any entry and runs only the rest. Entries are dropped least
recently used first once their bytes pass the budget.

Entries are found by blocks of 16 tokens: each entry is indexed under a chained hash of each of its
whole blocks (as vLLM's prefix caching does), so a lookup costs one hash per block of the prompt and
one comparison with the entry found, however many entries there are.

Keys and values of a prefix do not depend on what follows it (attention is causal), so a prompt
computed after a cached prefix attends to the same values as one run from its first token; the
floating-point sums may be grouped differently (another batch shape), as between a prompt run
alone and in a batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = ["BLOCK", "DEFAULT_BYTES", "MIN_REUSE", "PrefixCache"]

#: The default budget: 256 MiB (512 tokens of a 7B LLaMA in float16, far more for small models).
DEFAULT_BYTES = 256 * 2**20

#: Tokens per indexed block; a prompt reuses an entry only when they share a whole block or more.
BLOCK = 16

#: The shortest start worth reusing (shorter ones cost about what they save to fit into a batch).
MIN_REUSE = BLOCK

#: How many of the newest entries holding a new sequence's blocks `add` compares it with.
_HELD_CHECKS = 8


class _Entry(NamedTuple):
    ids: tuple[int, ...]
    kv: torch.Tensor
    #: the chained hash after each whole block of `ids`
    chain: tuple[int, ...]


def _chain(ids: tuple[int, ...], blocks: int) -> tuple[int, ...]:
    """Chained hashes of the first `blocks` whole blocks of `ids`: each covers all before it."""
    out, value = [], 0
    for k in range(blocks):
        value = hash((value, ids[k * BLOCK : (k + 1) * BLOCK]))
        out.append(value)
    return tuple(out)


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
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        #: chained block hash -> the entries holding those blocks (oldest first)
        self._index: dict[int, dict[int, None]] = {}
        #: chained block hash -> the entries whose last whole block it is
        self._ends: dict[int, dict[int, None]] = {}
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
            self._index.clear()
            self._ends.clear()
            self._bytes = 0

    def match(self, tokens: torch.Tensor) -> tuple[int, torch.Tensor | None]:
        """`(n, kv)`: the first `n` of `tokens` (int64 [T]) are cached, `kv` holds them.

        `kv` is (layers, 2, heads, at least n, head_dim); n leaves at least one token to run and
        is 0 (kv None) when they share less than a whole block.
        """
        ids = tuple(tokens.reshape(-1).tolist())
        usable = len(ids) - 1
        chain = _chain(ids, usable // BLOCK)
        with self._lock:
            found, blocks = None, 0
            for value in chain:
                holders = self._index.get(value)
                if not holders:
                    break
                found = next(reversed(holders))  # the newest entry with these blocks
                blocks += 1
            if found is None:
                return 0, None
            entry = self._entries[found]
            length = min(len(entry.ids), usable)
            shared = _shared(entry.ids, ids, length, blocks * BLOCK)
            if shared < MIN_REUSE:  # only a hash collision gets here
                return 0, None
            self._entries.move_to_end(found)
            return shared, entry.kv

    def wants(self, tokens: torch.Tensor, size: int) -> bool:
        """Whether `add` would keep `size` bytes for `tokens` (int64 [T]): ask before copying them.

        No when they pass the budget, are shorter than a block, or an entry holds them already.
        """
        if size > self.budget or tokens.numel() < MIN_REUSE:
            return False
        ids = tuple(tokens.reshape(-1).tolist())
        chain = _chain(ids, len(ids) // BLOCK)
        with self._lock:
            return self._holder(ids, chain) is None

    def _holder(self, ids: tuple[int, ...], chain: tuple[int, ...]) -> int | None:
        """An entry that starts with `ids` (among the newest holding its blocks), or None."""
        holders = list(self._index.get(chain[-1], ()))[-_HELD_CHECKS:]
        for key in reversed(holders):
            held = self._entries[key].ids
            if len(held) >= len(ids) and held[: len(ids)] == ids:
                return key
        return None

    def add(self, tokens: torch.Tensor, kv: torch.Tensor) -> None:
        """Keep `kv` (layers, 2, heads, T, head_dim) for `tokens` (int64 [T]).

        Entries whose tokens start the new one are dropped (it holds them); nothing is added
        when an entry already starts with `tokens`, or when `kv` alone passes the budget.
        """
        size = kv.numel() * kv.element_size()
        if size > self.budget or tokens.numel() < MIN_REUSE:
            return
        ids = tuple(tokens.reshape(-1).tolist())
        chain = _chain(ids, len(ids) // BLOCK)
        with self._lock:
            holder = self._holder(ids, chain)
            if holder is not None:
                self._entries.move_to_end(holder)
                return
            for value in chain:
                for key in list(self._ends.get(value, ())):
                    held = self._entries[key].ids
                    if len(held) <= len(ids) and ids[: len(held)] == held:
                        self._drop(key)
            key = self._next
            self._next += 1
            self._entries[key] = _Entry(ids, kv, chain)
            for value in chain:
                self._index.setdefault(value, {})[key] = None
            self._ends.setdefault(chain[-1], {})[key] = None
            self._bytes += size
            while self._bytes > self.budget:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.kv.numel() * entry.kv.element_size()
        for value in entry.chain:
            holders = self._index[value]
            del holders[key]
            if not holders:
                del self._index[value]
        ends = self._ends[entry.chain[-1]]
        del ends[key]
        if not ends:
            del self._ends[entry.chain[-1]]

    def count(self, reused: int, computed: int) -> None:
        """Record a prefill's prompt tokens taken from the cache and run."""
        with self._lock:
            self.reused += reused
            self.computed += computed


def _shared(held: tuple[int, ...], ids: tuple[int, ...], length: int, checked: int) -> int:
    """How many of the first `length` tokens `held` and `ids` share, from the start.

    Their first `checked` tokens have equal block hashes: compared at once, then token by token.
    """
    if held[:length] == ids[:length]:
        return length
    low = checked if held[:checked] == ids[:checked] else 0  # else: a hash collision
    while low < length and held[low] == ids[low]:
        low += 1
    return low
