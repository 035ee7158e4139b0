"""Loading SEED-2 weights: the published `seed_quantizer.pt` plus, where it lacks them, EVA-ViT-g.

The published tokenizer file is a flat state dict without the ViT (the reference builds the ViT from
LAVIS `eva_vit_g.pth` first, then loads `seed_quantizer.pt` with `strict=False`). Here every key the
inference path reads must be present with the right shape, or loading fails naming the first
missing or mismatched keys; keys we do not know are ignored with a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from anygpt_core.errors import CheckpointError, first_line
from anygpt_image.config import CONFIG_NAME, SeedConfig
from anygpt_image.seed import DECODE_PREFIXES, INFERENCE_UNUSED_PREFIXES, SeedTokenizer

__all__ = [
    "SEED_FILE",
    "SEED_HUB_ID",
    "VIT_FILE",
    "VIT_PREFIX",
    "load_seed",
    "read_state_dict",
    "resolve_file",
    "seed_config",
]

logger = logging.getLogger(__name__)

SEED_HUB_ID = "AILab-CVC/seed-tokenizer-2"
SEED_FILE = "seed_quantizer.pt"
VIT_FILE = "eva_vit_g.pth"
VIT_PREFIX = "visual_encoder."
_SHOW = 5


def resolve_file(location: str | Path, filename: str, *, what: str, flag: str) -> Path:
    """Find a weights file given as a file, a directory holding `filename`, or a hub repo id.

    Hub ids resolve only from the local Hugging Face cache (`local_files_only`); nothing downloads.

    Raises:
        CheckpointError: nothing found; the message says where to put the file.
    """
    path = Path(location).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise CheckpointError(
            f"{path}: no {filename} in this directory ({what}); pass the file with {flag}"
        )
    text = str(location)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HFValidationError

        try:
            return Path(hf_hub_download(text, filename, local_files_only=True))
        except (EntryNotFoundError, HFValidationError, OSError, ValueError) as err:
            raise CheckpointError(
                f"{text}/{filename} ({what}) is not in the local Hugging Face cache; run "
                f"`hf download {text} {filename}` or pass a local file with {flag}"
            ) from err
    raise CheckpointError(f"{path}: no such file ({what}); pass an existing file with {flag}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a flat state dict from safetensors or a torch pickle, without running pickled code.

    Raises:
        CheckpointError: the file is empty, corrupt, or not a flat mapping of names to tensors.
    """
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip, torch and safetensors each raise their own types
        raise CheckpointError(f"{path}: not a readable checkpoint ({first_line(err)})") from err
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]  # LAVIS-style {"model": state_dict}
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors")
    return dict(data)


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
    missing = [k for k in expected if k not in state and _required(k)]
    if missing:
        shown = ", ".join(missing[:_SHOW]) + (" ..." if len(missing) > _SHOW else "")
        raise CheckpointError(
            f"{source}: {len(missing)} SEED-2 keys missing ({shown}); is this seed_quantizer.pt "
            "(with --image-vit-path for the ViT)?"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong:
        shown = "; ".join(wrong[:_SHOW]) + (" ..." if len(wrong) > _SHOW else "")
        raise CheckpointError(
            f"{source}: {len(wrong)} SEED-2 tensors have the wrong shape ({shown})"
        )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        logger.info(
            "%s: ignoring %d keys SEED-2 does not use (e.g. %s)",
            source,
            len(unexpected),
            unexpected[0],
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
