"""The token space: which LLM token ids belong to which modality, resolved from the tokenizer by string."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anygpt_core.errors import CheckpointError, GenerationError, ModalityUnavailableError
from anygpt_core.protocol import flatten_codes, frames_from_flat
from anygpt_core.spec import ModalitySpec

if TYPE_CHECKING:
    import torch

__all__ = ["ROLE_TOKENS", "ModalityTokens", "TokenSpace"]

#: Role tokens in the order training adds them (REFERENCE.md §1).
ROLE_TOKENS = ("[Human]", "[MMGPT]", "<eoh>", "<eos>")


@dataclass(frozen=True)
class ModalityTokens:
    """A modality's ids in one tokenizer.

    Attributes:
        spec: the modality.
        code_ids: int64 [codebook_size * num_codebooks], flattened code index -> token id.
        start_id: id of the start token.
        end_id: id of the end token.
        layer_ids: per codebook k, int64 [codebook_size] token ids of that codebook's codes.
        layer_ranges: per codebook, `(first, last + 1)` when its ids are contiguous, else None.
    """

    spec: ModalitySpec
    code_ids: torch.Tensor
    start_id: int
    end_id: int
    layer_ids: tuple[torch.Tensor, ...]
    layer_ranges: tuple[tuple[int, int] | None, ...]


class TokenSpace:
    """Role and modality token ids of one tokenizer, with vectorized code <-> id lookup tables.

    Args:
        tokenizer: a transformers tokenizer (anything with `get_vocab()` and `__len__`).
        modalities: installed modalities; those whose tokens the tokenizer lacks are recorded in
            `missing` and cannot be read or written.
    """

    def __init__(self, tokenizer: Any, modalities: Mapping[str, ModalitySpec]) -> None:  # noqa: ANN401
        import torch

        vocab: dict[str, int] = tokenizer.get_vocab()
        self.size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
        absent = [t for t in ROLE_TOKENS if t not in vocab]
        if absent:
            raise CheckpointError(
                f"tokenizer lacks the AnyGPT role tokens {', '.join(absent)}: not an AnyGPT model "
                "(extend a base model with `anygpt model extend`)"
            )
        self.human_id, self.mmgpt_id, self.eoh_id, self.eos_id = (vocab[t] for t in ROLE_TOKENS)
        self.stop_ids = tuple(
            sorted(
                {self.eos_id}
                | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
            )
        )
        self.modalities: dict[str, ModalityTokens] = {}
        self.missing: dict[str, str] = {}
        #: int64 [vocab]: flattened code index of each id, -1 for ids that are no code.
        self.id_to_code = torch.full((self.size,), -1, dtype=torch.long)
        #: int64 [vocab]: modality number (position in `names`) of each code id, -1 otherwise.
        self.id_to_modality = torch.full((self.size,), -1, dtype=torch.long)
        self.names: list[str] = []
        for spec in modalities.values():
            strings = spec.token_strings()
            ids = [vocab.get(s, -1) for s in strings]
            lacking = [s for s, i in zip(strings, ids, strict=True) if i < 0]
            if lacking:
                self.missing[spec.name] = (
                    f"the model's tokenizer lacks {len(lacking)} of the {len(strings)} {spec.name} "
                    f"tokens (e.g. {lacking[0]}), so it cannot read or write {spec.name}"
                )
                continue
            code_ids = torch.tensor(ids[: spec.vocab_size], dtype=torch.long)
            layers = tuple(code_ids.view(spec.num_codebooks, spec.codebook_size).unbind(0))
            ranges = tuple(_contiguous(layer) for layer in layers)
            number = len(self.names)
            self.names.append(spec.name)
            self.id_to_code[code_ids] = torch.arange(spec.vocab_size)
            self.id_to_modality[code_ids] = number
            self.modalities[spec.name] = ModalityTokens(
                spec, code_ids, ids[-2], ids[-1], layers, ranges
            )
        self.start_ids = {m.start_id: name for name, m in self.modalities.items()}
        self.end_ids = {m.end_id: name for name, m in self.modalities.items()}

    def require(self, name: str) -> ModalityTokens:
        """The ids of a modality this model can read and write.

        Raises:
            ModalityUnavailableError: the tokenizer lacks the modality's tokens.
        """
        if name in self.modalities:
            return self.modalities[name]
        if name in self.missing:
            raise ModalityUnavailableError(self.missing[name])
        raise ModalityUnavailableError(f"modality {name!r} is not installed")

    def codes_to_ids(self, name: str, codes: torch.Tensor) -> torch.Tensor:
        """Token ids of a whole span, start and end included: codes int64 [K, T] -> int64 [T*K + 2]."""
        import torch

        tokens = self.require(name)
        flat = flatten_codes(tokens.spec, codes)
        ends = torch.tensor([tokens.start_id, tokens.end_id], dtype=torch.long)
        return torch.cat([ends[:1], tokens.code_ids[flat], ends[1:]])

    def ids_to_codes(self, name: str, ids: torch.Tensor, *, strict: bool = True) -> torch.Tensor:
        """Codes int64 [K, T] of the code ids of one span (without start and end)."""
        import torch

        tokens = self.require(name)
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.size):
            raise GenerationError(f"{name}: token id outside the vocabulary of size {self.size}")
        number = self.names.index(name)
        owner = self.id_to_modality[ids]
        flat = torch.where(owner == number, self.id_to_code[ids], tokens.spec.vocab_size)
        codes, _ = frames_from_flat(
            tokens.spec, flat.tolist(), list(range(len(flat))), strict=strict, where=f"{name} span"
        )
        return codes


def _contiguous(ids: torch.Tensor) -> tuple[int, int] | None:
    first, last = int(ids[0]), int(ids[-1])
    if last - first + 1 == len(ids) and bool((ids[1:] - ids[:-1] == 1).all()):
        return (first, last + 1)
    return None
