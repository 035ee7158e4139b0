"""The span rules of a request as JSON, for an engine in another process (vLLM's logits processor).

An external engine has the model's tokenizer but not our plugins (their codecs' dependencies do
not belong in its environment), so the gateway sends, with each request, what `SpanConstraint`
needs: the token space's layout (role ids, and per modality its sizes, length rules and token ids,
runs of consecutive ids) and the request's `Row`. `constraint_from_layout` rebuilds the same
`SpanConstraint` on the other side from that alone; nothing there needs a plugin or a tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from anygpt_core.config import DecodingConfig
from anygpt_core.engine.constraint import Row, SpanConstraint
from anygpt_core.errors import ConfigError, PluginError
from anygpt_core.spec import Codec, Instructions, ModalitySpec
from anygpt_core.tokens import ROLE_TOKENS, TokenSpace

__all__ = [
    "LAYOUT_VERSION",
    "constraint_from_layout",
    "decode_payload",
    "encode_payload",
    "row_from_json",
    "row_to_json",
    "space_layout",
]

#: Bumped when the layout's fields change; a processor refuses a layout of another version.
LAYOUT_VERSION = 1

#: What a layout keeps of each `ModalitySpec`: the fields the span rules read.
_SPEC_FIELDS = (
    "name",
    "prefix",
    "start",
    "end",
    "codebook_size",
    "num_codebooks",
    "fixed_frames",
    "max_frames",
)


def _runs(ids: Sequence[int]) -> list[list[int]]:
    """`[[first, count], ...]` runs of consecutive ids, in order."""
    runs: list[list[int]] = []
    for i in ids:
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, 1])
    return runs


def _ids(runs: Sequence[Sequence[int]]) -> list[int]:
    return [first + i for first, count in runs for i in range(count)]


def space_layout(space: TokenSpace, *, vocab_size: int, mask_stray: bool = True) -> dict[str, Any]:
    """The JSON-able layout of `space` that `constraint_from_layout` turns back into the rules.

    Args:
        space: the gateway's token space (its tokenizer and installed modalities).
        vocab_size: width of the engine's logits (the model's output rows).
        mask_stray: as `SpanConstraint`'s.
    """
    modalities = []
    for name in space.names:
        tokens = space.modalities[name]
        spec = {field: getattr(tokens.spec, field) for field in _SPEC_FIELDS}
        modalities.append(
            {
                **spec,
                "code_ids": _runs(tokens.code_ids.tolist()),
                "start_id": tokens.start_id,
                "end_id": tokens.end_id,
            }
        )
    eos = [i for i in space.stop_ids if i != space.eos_id]
    return {
        "version": LAYOUT_VERSION,
        "size": space.size,
        "vocab_size": vocab_size,
        "mask_stray": mask_stray,
        "roles": [space.human_id, space.mmgpt_id, space.eoh_id, space.eos_id],
        "eos_token_id": eos[0] if eos else None,
        "modalities": modalities,
    }


@dataclass(frozen=True)
class _Vocabulary:
    """What `TokenSpace` reads of a tokenizer, rebuilt from a layout."""

    vocab: Mapping[str, int]
    size: int
    eos_token_id: int | None

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def __len__(self) -> int:
        return self.size


def _no_codec(options: Mapping[str, Any]) -> Codec:
    raise PluginError("a modality rebuilt from a span layout has no codec; decode in the gateway")


def constraint_from_layout(layout: Mapping[str, Any], *, device: str = "cpu") -> SpanConstraint:
    """The `SpanConstraint` that `space_layout` described, built without plugins or tokenizer.

    Raises:
        ConfigError: a layout of another version, or one whose fields do not fit together.
    """
    if layout.get("version") != LAYOUT_VERSION:
        raise ConfigError(
            f"span layout version {layout.get('version')!r}; this processor reads version "
            f"{LAYOUT_VERSION}: install the same anygpt version in the gateway and the engine"
        )
    try:
        vocab = dict(zip(ROLE_TOKENS, layout["roles"], strict=True))
        specs: dict[str, ModalitySpec] = {}
        for entry in layout["modalities"]:
            spec = ModalitySpec(
                **{field: entry[field] for field in _SPEC_FIELDS},
                decoding=DecodingConfig(),
                output_extension="",
                instructions=Instructions(to_text=(), from_text=()),
                codec_factory=_no_codec,
            )
            code_ids = _ids(entry["code_ids"])
            if len(code_ids) != spec.vocab_size:
                raise ValueError(f"{spec.name}: {len(code_ids)} code ids for {spec.vocab_size}")
            tokens = [spec.code_token(i) for i in range(spec.vocab_size)]
            vocab.update(zip(tokens, code_ids, strict=True))
            vocab[spec.start] = entry["start_id"]
            vocab[spec.end] = entry["end_id"]
            specs[spec.name] = spec
        space = TokenSpace(_Vocabulary(vocab, layout["size"], layout["eos_token_id"]), specs)
        return SpanConstraint(
            space,
            vocab_size=layout["vocab_size"],
            mask_stray=layout["mask_stray"],
            device=device,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"span layout: {err}") from err


def _core_fields(config: DecodingConfig) -> dict[str, Any]:
    """The fields the span rules read; a plugin's own (its decoder's) stay with the gateway."""
    return config.model_dump(include=set(DecodingConfig.model_fields))


def row_to_json(row: Row) -> dict[str, Any]:
    """A `Row` as JSON-able values."""
    return {
        "text_config": _core_fields(row.text_config),
        "span_configs": {name: _core_fields(c) for name, c in row.span_configs.items()},
        "max_new_tokens": row.max_new_tokens,
        "open_span": row.open_span,
        "stop_after_span": row.stop_after_span,
        "allow_spans": row.allow_spans,
    }


def row_from_json(data: Mapping[str, Any]) -> Row:
    """The `Row` that `row_to_json` wrote.

    Raises:
        ConfigError: a missing or invalid field.
    """
    try:
        return Row(
            DecodingConfig(**data["text_config"]),
            {name: DecodingConfig(**c) for name, c in data["span_configs"].items()},
            int(data["max_new_tokens"]),
            open_span=data["open_span"],
            stop_after_span=bool(data["stop_after_span"]),
            allow_spans=bool(data["allow_spans"]),
        )
    except (KeyError, TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"span row: {err}") from err


def encode_payload(layout: Mapping[str, Any], row: Row) -> str:
    """One request's span rules as a JSON string (vLLM's `vllm_xargs` values are flat)."""
    return json.dumps({"layout": layout, "row": row_to_json(row)}, ensure_ascii=False)


def decode_payload(text: str) -> tuple[dict[str, Any], Row]:
    """`(layout, row)` from `encode_payload`'s string.

    Raises:
        ConfigError: not JSON, or not a payload.
    """
    try:
        data = json.loads(text)
        layout, row = data["layout"], data["row"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"span payload: {err}") from err
    if not isinstance(layout, dict):
        raise ConfigError("span payload: layout is not an object")
    return layout, row_from_json(row)
