"""Loading SEED-2 weights: the published `seed_quantizer.pt` plus, where it lacks them, EVA-ViT-g.

The published tokenizer file is a flat state dict without the ViT (the reference builds the ViT from
LAVIS `eva_vit_g.pth` first, then loads `seed_quantizer.pt` with `strict=False`). Here every key the
inference path reads must be present with the right shape, or loading fails naming the first
missing or mismatched keys (`anygpt_core.checkpoints.check_state_dict`); keys we do not know are
ignored with a log line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from anygpt_core.checkpoints import check_state_dict, read_state_dict
from anygpt_core.errors import CheckpointError
from anygpt_image.config import CONFIG_NAME, SeedConfig
from anygpt_image.options import SEED_HUB_ID
from anygpt_image.seed import DECODE_PREFIXES, INFERENCE_UNUSED_PREFIXES, SeedTokenizer

__all__ = [
    "SEED_FILE",
    "SEED_HUB_ID",
    "VIT_FILE",
    "VIT_PREFIX",
    "load_seed",
    "seed_config",
]

logger = logging.getLogger(__name__)

SEED_FILE = "seed_quantizer.pt"
VIT_FILE = "eva_vit_g.pth"
VIT_PREFIX = "visual_encoder."


def _required(key: str) -> bool:
    return not key.startswith(INFERENCE_UNUSED_PREFIXES)


def _merge(
    seed: dict[str, torch.Tensor], seed_path: Path, vit_path: Path | None
) -> dict[str, torch.Tensor]:
    if vit_path is not None:
        vit = read_state_dict(vit_path)
        for key, value in vit.items():
            name = key if key.startswith(VIT_PREFIX) else VIT_PREFIX + key
            seed[name] = value
    elif not any(k.startswith(VIT_PREFIX) for k in seed):
        raise CheckpointError(
            f"{seed_path}: holds no EVA-ViT-g weights ({VIT_PREFIX}*), as the published file; pass "
            f"LAVIS {VIT_FILE} with --image-vit-path"
        )
    return seed


def _check(
    model: SeedTokenizer, state: dict[str, torch.Tensor], source: str, *, decode_only: bool = False
) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    if decode_only:
        expected = {k: v for k, v in expected.items() if k.startswith(DECODE_PREFIXES)}
    check_state_dict(
        state,
        expected,
        source=source,
        what="the SEED-2 model",
        optional=lambda key: not _required(key),
        ignore_unexpected=True,
        hint=f"is this {SEED_FILE} (with --image-vit-path for the ViT)?",
    )
    return {k: state[k] for k in expected if k in state}


def seed_config(seed_path: Path) -> SeedConfig:
    """Sizes from `seed_config.json` beside the checkpoint when present, else the published ones."""
    sizes = seed_path.parent / CONFIG_NAME
    return SeedConfig.load(sizes) if sizes.is_file() else SeedConfig.published()


def load_seed(
    seed_path: Path,
    vit_path: Path | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    decode_only: bool = False,
    config: SeedConfig | None = None,
) -> SeedTokenizer:
    """Build `SeedTokenizer` and load its weights strictly over the keys inference reads.

    Training-only keys (`pos_embed`, `blocks.*`) load when present and are zero otherwise. With
    `decode_only`, only what `embed` reads is loaded (`DECODE_PREFIXES`): no ViT file is needed
    and the encoder stays on the meta device, unallocated, so `encode` cannot run. `config` gives the
    sizes when the caller has read them already.

    Raises:
        CheckpointError: unreadable file, missing ViT, missing keys or wrong shapes.
    """
    config = config or seed_config(seed_path)
    state = read_state_dict(seed_path)
    if not decode_only:
        state = _merge(state, seed_path, vit_path)
    with torch.device("meta"):
        model = SeedTokenizer(config)
    source = str(seed_path) if vit_path is None or decode_only else f"{seed_path} + {vit_path}"
    state = _check(model, state, source, decode_only=decode_only)
    loaded: dict[str, torch.Tensor] = {}
    for key, reference in model.state_dict().items():
        if decode_only and not key.startswith(DECODE_PREFIXES):
            continue
        value = state.get(key)
        if value is None:
            value = torch.zeros(reference.shape, dtype=reference.dtype)
            if key.endswith("position_ids"):
                value = torch.arange(reference.shape[-1]).expand(reference.shape).clone()
        target = dtype if value.is_floating_point() else torch.long
        loaded[key] = value.to(device=device, dtype=target)
    model.load_state_dict(loaded, strict=not decode_only, assign=True)
    return model.requires_grad_(False).eval()
