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

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["ReferencePromptEncoder", "ReferenceTokenizer"]

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

    def _pieces(self, chunk: str) -> list[tuple[str, int, int]]:
        """4.34.1 `_tokenize`: pieces of a text chunk with their character spans in the chunk."""
        prefix = ""
        if not self.legacy and chunk.startswith((_UNDERLINE, " ")):
            prefix = "<unk>"
        encoded = self.sp.encode(prefix + chunk, return_type="proto")
        data = (prefix + chunk).encode("utf-8")
        to_char = [len(data[:i].decode("utf-8", errors="ignore")) for i in range(len(data) + 1)]
        pieces = [(p.piece, to_char[p.begin], to_char[p.end]) for p in encoded.pieces]
        if prefix:
            if len(pieces) >= self.unk_length:
                pieces = pieces[self.unk_length :]
            pieces = [
                (piece, max(0, b - len(prefix)), max(0, e - len(prefix))) for piece, b, e in pieces
            ]
        return pieces

    def tokens_with_offsets(self, text: str) -> list[tuple[str, int, int]]:
        """Token strings of `text` (without BOS) with their character spans in `text`."""
        shift = 0
        if not self.legacy and text:
            text = _UNDERLINE + text.replace(_UNDERLINE, " ")
            shift = 1
        out: list[tuple[str, int, int]] = []
        for chunk, offset in self._split(text):
            if chunk in self.added:
                out.append((chunk, offset, offset + len(chunk)))
            else:
                out += [(p, offset + b, offset + e) for p, b, e in self._pieces(chunk)]
        if (
            not self.legacy
            and len(out) > 1
            and out[0][0] == _UNDERLINE
            and out[1][0] in self.special
        ):
            out = out[1:]
        return [(t, max(0, b - shift), max(0, e - shift)) for t, b, e in out]

    def ids_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids (BOS first when the tokenizer adds it) and each token's character span."""
        triples = self.tokens_with_offsets(text)
        ids = [self.added[t] if t in self.added else self.sp.piece_to_id(t) for t, _, _ in triples]
        offsets = [(b, e) for _, b, e in triples]
        if self.add_bos:
            ids, offsets = [self.bos_id, *ids], [(0, 0), *offsets]
        return ids, offsets

    def encode(self, text: str) -> torch.Tensor:
        """Token ids int64 [1, T] of a prompt, BOS first as the model was trained."""
        import torch

        return torch.tensor([self.ids_with_offsets(text)[0]], dtype=torch.long)


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
        ids, offsets = self.encoder.ids_with_offsets(text)
        if truncation and max_length is not None:
            ids, offsets = ids[:max_length], offsets[:max_length]
        if return_offsets_mapping:
            return SimpleNamespace(input_ids=ids, offset_mapping=offsets)
        return SimpleNamespace(input_ids=ids)

    @classmethod
    def wrap(cls, directory: Path, tokenizer: Any) -> Any:  # noqa: ANN401
        """The reference tokenizer for a model directory, or `tokenizer` itself without a `.model`."""
        encoder = ReferencePromptEncoder.from_directory(directory, tokenizer)
        return tokenizer if encoder is None else cls(tokenizer, encoder)
