"""State-dict key names of the EnCodec layouts, and the one table that maps between them.

Three spellings of the same 252 tensors (24 kHz model) exist:

- transformers today: `encoder.layers.0.conv.parametrizations.weight.original0` (torch's
  parametrized weight norm);
- transformers files on the hub, written before that: `encoder.layers.0.conv.weight_g` / `weight_v`;
- the `encodec` package and its original checkpoint files (`encodec_24khz-d7cc33bc.th`):
  `encoder.model.0.conv.conv.weight_g`, `decoder.model.3.convtr.convtr.weight_v`,
  `quantizer.vq.layers.0._codebook.embed`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "ENCODEC_FROM_TRANSFORMERS",
    "TRAINING_ONLY",
    "WEIGHT_NORM_NAMES",
    "to_encodec_names",
    "to_parametrized_weight_norm",
    "training_only",
]

#: Old weight-norm tensor names -> torch's parametrized names (newer transformers write the latter).
WEIGHT_NORM_NAMES = {
    ".weight_g": ".parametrizations.weight.original0",
    ".weight_v": ".parametrizations.weight.original1",
}

#: transformers key pattern -> `encodec` package key replacement, tried in order. The decoder's
#: `layers.N.conv` is a plain or a transposed convolution depending on N; both rows are listed and
#: the one whose result names a tensor of the target model wins.
ENCODEC_FROM_TRANSFORMERS: tuple[tuple[str, str], ...] = (
    (
        r"^(encoder|decoder)\.layers\.(\d+)\.block\.(\d+)\.conv\.",
        r"\1.model.\2.block.\3.conv.conv.",
    ),
    (r"^(encoder|decoder)\.layers\.(\d+)\.shortcut\.conv\.", r"\1.model.\2.shortcut.conv.conv."),
    (r"^(encoder|decoder)\.layers\.(\d+)\.lstm\.", r"\1.model.\2.lstm."),
    (r"^(encoder|decoder)\.layers\.(\d+)\.conv\.", r"\1.model.\2.conv.conv."),
    (r"^decoder\.layers\.(\d+)\.conv\.", r"decoder.model.\1.convtr.convtr."),
    (r"^quantizer\.layers\.(\d+)\.codebook\.", r"quantizer.vq.layers.\1._codebook."),
)


#: Codebook buffers that only training updates; a checkpoint may leave them out.
TRAINING_ONLY = (".inited", ".cluster_size", ".embed_avg")


def training_only(key: str) -> bool:
    """Whether a checkpoint may lack `key`: inference reads only a codebook's `embed`."""
    return key.endswith(TRAINING_ONLY)


def _old_weight_norm(key: str) -> str:
    for old, new in WEIGHT_NORM_NAMES.items():
        if key.endswith(new):
            return key[: -len(new)] + old
    return key


def to_parametrized_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `weight_g`/`weight_v` to the parametrized names transformers' `EncodecModel` uses."""
    renamed = {}
    for key, value in state.items():
        for old, new in WEIGHT_NORM_NAMES.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        renamed[key] = value
    return renamed


def to_encodec_names(
    state: Mapping[str, torch.Tensor], target_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Rename a transformers-layout state dict (either weight-norm spelling) to `encodec` names.

    Args:
        state: tensors named as in transformers' `EncodecModel` or an older hub file.
        target_keys: the state-dict keys of the `encodec` model that will receive the tensors.

    Returns:
        The same tensors under `encodec` names; a key no row maps is kept as it is, so that
        `anygpt_core.checkpoints.check_state_dict` reports it.
    """
    wanted = set(target_keys)
    renamed = {}
    for key, value in state.items():
        old_style = _old_weight_norm(key)
        candidates = [
            re.sub(pattern, replacement, old_style)
            for pattern, replacement in ENCODEC_FROM_TRANSFORMERS
            if re.match(pattern, old_style)
        ]
        hits = [c for c in candidates if c in wanted]
        renamed[hits[0] if hits else key] = value
    return renamed
