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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["ReferencePromptEncoder"]

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

    def _split(self, text: str) -> list[str]:
        chunks: list[str] = []
        position = 0
        for match in self.pattern.finditer(text):
            if match.group(0) not in self.added:
                continue
            chunks += [text[position : match.start()], match.group(0)]
            position = match.end()
        chunks.append(text[position:])
        for i, chunk in enumerate(chunks):  # 4.34 `tokenize`: an added token's strip flags
            if chunk in self.rstrip and i + 1 < len(chunks):
                chunks[i + 1] = chunks[i + 1].lstrip()
            if chunk in self.lstrip and i > 0:
                chunks[i - 1] = chunks[i - 1].rstrip()
        return [c for c in chunks if c]

    def _pieces(self, chunk: str) -> list[str]:
        pieces: list[str] = self.sp.encode(chunk, out_type=str)
        if self.legacy or not chunk.startswith((_UNDERLINE, " ")):
            return pieces
        pieces = self.sp.encode("<unk>" + chunk, out_type=str)
        return pieces[self.unk_length :] if len(pieces) >= self.unk_length else pieces

    def tokens(self, text: str) -> list[str]:
        """The token strings of `text` (without BOS)."""
        if not self.legacy and text:
            text = _UNDERLINE + text.replace(_UNDERLINE, " ")
        out: list[str] = []
        for chunk in self._split(text):
            out += [chunk] if chunk in self.added else self._pieces(chunk)
        if not self.legacy and len(out) > 1 and out[0] == _UNDERLINE and out[1] in self.special:
            out = out[1:]
        return out

    def encode(self, text: str) -> torch.Tensor:
        """Token ids int64 [1, T] of a prompt, BOS first as the model was trained."""
        import torch

        ids = [
            self.added[t] if t in self.added else self.sp.piece_to_id(t) for t in self.tokens(text)
        ]
        if self.add_bos:
            ids = [self.bos_id, *ids]
        return torch.tensor([ids], dtype=torch.long)
