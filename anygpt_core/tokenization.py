"""Prompt tokenization exactly as the reference's transformers 4.34 slow `LlamaTokenizer` did it.

The published AnyGPT models were trained and evaluated with transformers 4.34's slow LLaMA
tokenizer. transformers 5 converts that tokenizer to a fast one whose whitespace handling around
added tokens differs (measured against 4.34.1 on our demo tokenizer):

- `legacy: true` (4.34's default when the key is absent): every text chunk between added tokens is
  encoded on its own, so its leading space gets SentencePiece's dummy prefix; the ` ` in
  `<eoh> [MMGPT]:` becomes `▁▁`, where transformers 5 gives `▁`;
- `legacy: false`: the text is prefixed with `▁` once, so the prompt starts `<s> ▁ [Human]`, where
  transformers 5 gives `<s> [Human]`.

`ReferencePromptEncoder` reproduces 4.34: split on added tokens (honouring their lstrip/rstrip),
encode each chunk with the SentencePiece model (`_tokenize` of 4.34.1), map pieces to ids. It needs
the model's `tokenizer.model`; without one, prompts go through the tokenizer as usual.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from numpy.typing import NDArray

__all__ = ["ReferencePromptEncoder", "ReferenceTokenizer", "longest_token"]

_UNDERLINE = "\u2581"
_SHAPED = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")


class ReferencePromptEncoder:
    """Token ids of a prompt as transformers 4.34's slow LLaMA tokenizer produced them.

    Args:
        sentencepiece_model: the bytes of `tokenizer.model`.
        tokenizer: the loaded (transformers 5) tokenizer, for its added tokens and their flags.
        legacy: the `legacy` flag of `tokenizer_config.json` (4.34 treated a missing one as True).
        add_bos: prepend the BOS token (`add_bos_token`, default True).
    """

    def __init__(
        self,
        sentencepiece_model: bytes,
        tokenizer: Any,  # noqa: ANN401 - a transformers tokenizer
        *,
        legacy: bool,
        add_bos: bool = True,
    ) -> None:
        import sentencepiece as spm

        self.legacy = legacy
        self.add_bos = add_bos
        if not legacy:  # 4.34 `get_spm_processor`: no dummy prefix outside legacy mode
            from sentencepiece import sentencepiece_model_pb2 as model_pb2

            proto = model_pb2.ModelProto.FromString(sentencepiece_model)  # type: ignore[attr-defined]
            proto.normalizer_spec.add_dummy_prefix = False
            sentencepiece_model = proto.SerializeToString()
        self.sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model)
        base = self.sp.get_piece_size()
        self.added: dict[str, int] = {
            tok: i for tok, i in tokenizer.get_vocab().items() if i >= base
        }
        for tok in tokenizer.all_special_tokens:  # <s>, </s>, <unk> in text are tokens too
            self.added[tok] = tokenizer.convert_tokens_to_ids(tok)
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.lstrip = {t.content for t in decoder.values() if getattr(t, "lstrip", False)}
        self.rstrip = {t.content for t in decoder.values() if getattr(t, "rstrip", False)}
        self.special = {"<s>", "</s>", "<unk>"} | {
            t.content for t in decoder.values() if getattr(t, "special", False)
        }
        odd = sorted((t for t in self.added if not _SHAPED.fullmatch(t)), key=len, reverse=True)
        parts = [re.escape(t) for t in odd] + [_SHAPED.pattern]
        self.pattern = re.compile("|".join(parts))
        self.bos_id = self.sp.bos_id()
        self.unk_length = len(self.sp.encode("<unk>", out_type=str))
        # SentencePiece ids whose piece is also an added token of another id: the piece's string
        # is looked up in `added` first (as 4.34 did), so such an id becomes the added token's
        self.renamed: dict[int, int] = {}
        for tok, i in self.added.items():
            piece_id = self.sp.piece_to_id(tok)
            known = piece_id != self.sp.unk_id() and self.sp.id_to_piece(piece_id) == tok
            if known and piece_id != i:
                self.renamed[piece_id] = i
        self._tables = _PieceTables.of(sentencepiece_model, self.renamed)

    @classmethod
    def from_directory(cls, directory: Path, tokenizer: Any) -> ReferencePromptEncoder | None:  # noqa: ANN401
        """The encoder for a model directory, or None when it has no SentencePiece model."""
        model_file = Path(directory) / "tokenizer.model"
        if not model_file.is_file():
            return None
        config_file = Path(directory) / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
        legacy = config.get("legacy")
        return cls(
            model_file.read_bytes(),
            tokenizer,
            legacy=True if legacy is None else bool(legacy),
            add_bos=bool(config.get("add_bos_token", True)),
        )

    def _split(self, text: str) -> list[tuple[str, int]]:
        """`text` cut into (chunk, character offset) around added tokens, strip flags applied."""
        texts: list[str] = []
        starts: list[int] = []
        position = 0
        for match in self.pattern.finditer(text):
            if match.group(0) in self.added:
                texts += [text[position : match.start()], match.group(0)]
                starts += [position, match.start()]
                position = match.end()
        texts.append(text[position:])
        starts.append(position)
        for i, chunk in enumerate(list(texts)):  # 4.34 `tokenize`: an added token's strip flags
            if chunk in self.rstrip and i + 1 < len(texts):
                stripped = texts[i + 1].lstrip()
                starts[i + 1] += len(texts[i + 1]) - len(stripped)
                texts[i + 1] = stripped
            if chunk in self.lstrip and i > 0:
                texts[i - 1] = texts[i - 1].rstrip()
        return [(c, o) for c, o in zip(texts, starts, strict=True) if c]

    def _prefix(self, chunk: str) -> str:
        """What 4.34.1 `_tokenize` put before a chunk (and then dropped the pieces of)."""
        return "<unk>" if not self.legacy and chunk.startswith((_UNDERLINE, " ")) else ""

    def _prepared(self, text: str) -> tuple[str, int]:
        """The text 4.34 split outside legacy mode (`▁` first), and the characters it added."""
        if not self.legacy and text:
            return _UNDERLINE + text.replace(_UNDERLINE, " "), 1
        return text, 0

    def _pieces(self, chunk: str) -> list[tuple[str, int, int]]:
        """4.34.1 `_tokenize`: pieces of a text chunk with their character spans in the chunk."""
        prefix = self._prefix(chunk)
        encoded = self.sp.encode(prefix + chunk, return_type="proto")
        bounds = [b for p in encoded.pieces for b in (p.begin, p.end)]  # UTF-8 byte offsets
        chars = _byte_to_char(prefix + chunk, bounds)
        pieces = [(p.piece, chars[2 * i], chars[2 * i + 1]) for i, p in enumerate(encoded.pieces)]
        if prefix:
            if len(pieces) >= self.unk_length:
                pieces = pieces[self.unk_length :]
            pieces = [
                (piece, max(0, b - len(prefix)), max(0, e - len(prefix))) for piece, b, e in pieces
            ]
        return pieces

    def _encoded(self, text: str) -> tuple[list[tuple[str, int]], list[list[int] | None]]:
        """The prepared text's chunks (with offsets) and each plain chunk's SentencePiece ids.

        An added token's entry is None. All plain chunks go to SentencePiece in one call, so no
        piece is handled one by one in Python.
        """
        chunks = self._split(text)
        plain = [self._prefix(chunk) + chunk for chunk, _ in chunks if chunk not in self.added]
        encoded = iter(self.sp.encode(plain))
        return chunks, [None if chunk in self.added else next(encoded) for chunk, _ in chunks]

    def _aligned(
        self, chunks: list[tuple[str, int]], encoded: list[list[int] | None], shift: int
    ) -> tuple[NDArray[np.int64], ...]:
        """Every token's id, span in the text, SentencePiece id and chunk, for all at once.

        Each span is SentencePiece's, worked out from the lengths of the pieces before it (see
        `_PieceTables`); right where the normalizer keeps characters and no piece is unknown.

        Returns:
            ids, begins, ends, pieces (the tables' row of each token), chunk_of (the chunk
            index of each token): int64 [T] each.
        """
        import numpy as np

        tables = self._tables
        marker = (tables.sentinel,)  # an added token's one piece: the tables' last row
        seqs = [marker if ids is None else ids for ids in encoded]
        counts = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(counts.sum()))
        # per chunk: where it starts in the text, what SentencePiece saw before it (the dummy
        # prefix `▁`, `_prefix`), an added token's id and length
        offset = np.array([o for _, o in chunks], dtype=np.int64)
        is_plain = np.array([ids is not None for ids in encoded], dtype=bool)
        dummy = is_plain * int(tables.dummy_prefix)
        prefix = is_plain * np.array([len(self._prefix(c)) for c, _ in chunks], dtype=np.int64)
        added_id = np.array([self.added.get(c, 0) for c, _ in chunks], dtype=np.int64)
        added_len = np.where(is_plain, 0, [len(c) for c, _ in chunks])
        chunk_of = np.repeat(np.arange(len(seqs)), counts)
        first = (np.cumsum(counts) - counts)[chunk_of]  # index of the token's chunk's first
        is_added = flat == tables.sentinel
        # characters of the normalized text each piece covers; a byte piece covers its whole
        # character when it is the character's last byte, none before (SentencePiece gives
        # the first bytes of a character an empty span at its start)
        lengths = tables.lengths[flat] if tables.lengths is not None else np.zeros_like(flat)
        continued = np.zeros(len(flat), dtype=bool)
        continued[:-1] = tables.continuation[flat[1:]]
        lengths = np.where(tables.byte[flat], ~continued, lengths)
        lengths = np.where(is_added, added_len[chunk_of], lengths)
        totals = np.concatenate(([0], np.cumsum(lengths)))
        ends = totals[1:] - totals[first]  # in the chunk's normalized text

        # a position in a chunk's normalized text as a character of `text`, as 4.34 had it: the
        # dummy prefix stands at character 0, what `_prefix` put first is dropped
        def in_text(position: NDArray[np.int64]) -> NDArray[np.int64]:
            position = np.maximum(position - dummy[chunk_of], 0)
            position = np.maximum(position - prefix[chunk_of], 0) + offset[chunk_of]
            return np.maximum(position - shift, 0)

        begins, ends = in_text(ends - lengths), in_text(ends)
        ids = np.where(is_added, added_id[chunk_of], tables.renamed[flat])
        dropped = (  # 4.34 dropped the pieces of `_prefix`
            (prefix[chunk_of] > 0)
            & (counts[chunk_of] >= self.unk_length)
            & (np.arange(len(flat)) - first < self.unk_length)
        )
        return tuple(a[~dropped] for a in (ids, begins, ends, flat, chunk_of))

    def ids_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids (BOS first when the tokenizer adds it) and each token's character span.

        The spans are SentencePiece's own (4.34 took them from its pieces), found for all tokens
        at once (`_aligned`) where the model's normalizer keeps characters as they are (LLaMA's
        "identity"). A chunk holding an unknown piece, or every chunk under another normalizer,
        takes them from SentencePiece piece by piece.
        """
        import numpy as np

        prepared, shift = self._prepared(text)
        chunks, encoded = self._encoded(prepared)
        unk = self.sp.unk_id()
        exact = {  # chunk index -> its pieces with SentencePiece's spans
            j: self._pieces(chunk)
            for j, ((chunk, _), ids) in enumerate(zip(chunks, encoded, strict=True))
            if ids is not None and (self._tables.lengths is None or unk in ids)
        }
        ids, begins, ends, pieces, chunk_of = self._aligned(chunks, encoded, shift)
        chunk_first = np.searchsorted(chunk_of, np.arange(len(chunks)))
        for j, exact_pieces in exact.items():
            at = slice(int(chunk_first[j]), int(chunk_first[j]) + len(exact_pieces))
            ids[at] = [self._id(piece) for piece, _, _ in exact_pieces]
            begins[at] = [max(0, chunks[j][1] + b - shift) for _, b, _ in exact_pieces]
            ends[at] = [max(0, chunks[j][1] + e - shift) for _, _, e in exact_pieces]

        def token(k: int) -> str:  # the string of the k-th token
            j = int(chunk_of[k])
            if j in exact:
                return exact[j][k - int(chunk_first[j])][0]
            return chunks[j][0] if encoded[j] is None else str(self.sp.id_to_piece(int(pieces[k])))

        start = 0
        if not self.legacy and len(ids) > 1 and token(0) == _UNDERLINE and token(1) in self.special:
            start = 1
        out: list[int] = ids[start:].tolist()
        spans = list(zip(begins[start:].tolist(), ends[start:].tolist(), strict=True))
        if self.add_bos:
            return [self.bos_id, *out], [(0, 0), *spans]
        return out, spans

    def ids(self, text: str) -> list[int]:
        """The ids of `ids_with_offsets` without the spans, a few times faster.

        A chunk holding an unknown piece (a model without byte fallback) is looked up by its
        pieces' strings, as 4.34 did.
        """
        chunks, encoded = self._encoded(self._prepared(text)[0])
        unk = self.sp.unk_id()
        out: list[int] = []
        heads: list[str] = []  # the first two tokens' strings, for the rule below
        for (chunk, _), ids in zip(chunks, encoded, strict=True):
            if ids is None:
                out.append(self.added[chunk])
                heads.append(chunk)
                continue
            if self._prefix(chunk) and len(ids) >= self.unk_length:
                ids = ids[self.unk_length :]
            if unk in ids:
                pieces = [piece for piece, _, _ in self._pieces(chunk)]
                out += [self._id(piece) for piece in pieces]
                heads += pieces[:2]
                continue
            heads += [self.sp.id_to_piece(i) for i in ids[: max(0, 2 - len(heads))]]
            out += [self.renamed.get(i, i) for i in ids] if self.renamed else ids
        if not self.legacy and len(out) > 1 and heads[0] == _UNDERLINE and heads[1] in self.special:
            out = out[1:]
        return [self.bos_id, *out] if self.add_bos else out

    def _id(self, token: str) -> int:
        return self.added[token] if token in self.added else int(self.sp.piece_to_id(token))

    def encode(self, text: str) -> torch.Tensor:
        """Token ids int64 [1, T] of a prompt, BOS first as the model was trained."""
        import torch

        return torch.tensor([self.ids(text)], dtype=torch.long)


@functools.lru_cache(maxsize=4)
def longest_token(tokenizer: Any) -> int:  # noqa: ANN401 - a transformers tokenizer
    """Characters of the tokenizer's longest token string: the most text one token can cover.

    A SentencePiece piece stands for its own characters (`▁` for a space; a byte piece such as
    `<0x0A>` for less than one), an added token for itself; so a text of more than
    `n * longest_token(tokenizer)` characters takes more than `n` tokens.
    """
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


def _byte_to_char(text: str, positions: list[int]) -> list[int]:
    """Characters of `text` whose UTF-8 bytes end at or before each byte position.

    What `len(text.encode()[:position].decode(errors="ignore"))` gives (a position inside a
    character counts the characters before it), for all positions in one linear pass.
    """
    import numpy as np

    if text.isascii():
        return positions
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    ends = np.cumsum(widths)  # byte offset where each character ends
    found = np.searchsorted(ends, np.asarray(positions, dtype=np.int64), side="right")
    return [int(n) for n in found]


@dataclass(frozen=True)
class _PieceTables:
    """What `ReferencePromptEncoder.ids_with_offsets` looks up per SentencePiece id.

    Each table has a last row, `sentinel`, standing for an added token.

    Attributes:
        sentinel: the number of SentencePiece ids.
        renamed: int64 [sentinel + 1], the id 4.34 gave each piece (an added token's id where
            the piece's string is one).
        lengths: int64 [sentinel + 1], characters of the normalized text each piece stands for;
            None when the normalizer may change or drop characters (positions in the
            normalized text are then no positions in the text).
        byte: bool [sentinel + 1], a byte-fallback piece `<0xNN>`.
        continuation: bool [sentinel + 1], a byte piece of a UTF-8 continuation byte.
        dummy_prefix: SentencePiece puts `▁` before each text it encodes.
    """

    sentinel: int
    renamed: NDArray[np.int64]
    lengths: NDArray[np.int64] | None
    byte: NDArray[np.bool_]
    continuation: NDArray[np.bool_]
    dummy_prefix: bool

    @classmethod
    def of(cls, model: bytes, renamed: dict[int, int]) -> _PieceTables:
        """The tables of a SentencePiece model (`tokenizer.model` as the encoder loaded it)."""
        import numpy as np
        from sentencepiece import sentencepiece_model_pb2 as model_pb2

        proto = model_pb2.ModelProto.FromString(model)  # type: ignore[attr-defined]
        spec = proto.normalizer_spec
        # LLaMA's normalizer: each character kept, a space written `▁`, nothing removed, so the
        # k-th character of the normalized text is the text's k-th (after the dummy prefix)
        identity = (
            spec.name == "identity"
            and not spec.precompiled_charsmap
            and not spec.normalization_rule_tsv
            and not spec.remove_extra_whitespaces
            and spec.escape_whitespaces
            and not proto.trainer_spec.treat_whitespace_as_suffix
        )
        byte_type = model_pb2.ModelProto.SentencePiece.BYTE  # type: ignore[attr-defined]
        pieces = [(p.piece, p.type == byte_type) for p in proto.pieces]
        size = len(pieces)
        ids = np.arange(size + 1, dtype=np.int64)
        ids[size] = 0
        for piece_id, added_id in renamed.items():
            ids[piece_id] = added_id
        byte = np.array([is_byte for _, is_byte in pieces] + [False], dtype=bool)
        value = np.array([int(p[3:5], 16) if b else 0 for p, b in pieces] + [0], dtype=np.int64)
        lengths = np.array([len(p) for p, _ in pieces] + [0], dtype=np.int64)
        return cls(
            sentinel=size,
            renamed=ids,
            lengths=lengths if identity else None,
            byte=byte,
            continuation=byte & (value >= 0x80) & (value < 0xC0),
            dummy_prefix=bool(spec.add_dummy_prefix),
        )


class ReferenceTokenizer:
    """A tokenizer whose calls encode text as transformers 4.34 did (for training data).

    Everything else (ids of special tokens, saving, padding) is the wrapped tokenizer's.

    Args:
        tokenizer: the loaded transformers tokenizer.
        encoder: the model directory's `ReferencePromptEncoder`.
    """

    def __init__(self, tokenizer: Any, encoder: ReferencePromptEncoder) -> None:  # noqa: ANN401
        self.tokenizer = tokenizer
        self.encoder = encoder

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - the wrapped tokenizer's attributes
        return getattr(self.tokenizer, name)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(
        self,
        text: str,
        *,
        truncation: bool = False,
        max_length: int | None = None,
        return_offsets_mapping: bool = False,
    ) -> SimpleNamespace:
        """`input_ids` (and `offset_mapping`, character spans) of one text."""
        cut = max_length if truncation else None
        if not return_offsets_mapping:
            return SimpleNamespace(input_ids=self.encoder.ids(text)[:cut])
        ids, offsets = self.encoder.ids_with_offsets(text)
        return SimpleNamespace(input_ids=ids[:cut], offset_mapping=offsets[:cut])

    @classmethod
    def wrap(cls, directory: Path, tokenizer: Any) -> Any:  # noqa: ANN401
        """The reference tokenizer for a model directory, or `tokenizer` itself without a `.model`."""
        encoder = ReferencePromptEncoder.from_directory(directory, tokenizer)
        return tokenizer if encoder is None else cls(tokenizer, encoder)
