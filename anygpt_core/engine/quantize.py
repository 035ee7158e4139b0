"""Weight-only int8 and int4 quantisation of the language model, applied while it loads.

The transformer layers' linear weights are quantised from the checkpoint (float16 when published)
one tensor at a time, so the float model never sits in memory whole: a 7B model loads in about
the memory its quantised copy needs (7 GB with int8, 4 GB with int4). Embeddings, norms and the
output layer keep the compute dtype (bfloat16 by default). Products run on PyTorch's own
weight-only kernels (`_weight_int8pack_mm`; tinygemm's `_weight_int4pack_mm` on CUDA and
`_weight_int4pack_mm_for_cpu`); a mode whose kernel this machine lacks is refused before loading.

torchao 0.18 wraps the same int4 kernels, but its int8 weight-only path converts the whole weight
to the activation dtype on every call: 5x slower per token than `_weight_int8pack_mm` on a 2-core
AVX2 CPU (a 4096 x 11008 layer, bfloat16: 94 ms vs 17 ms), too slow for a 7B model there.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from anygpt_core.checkpoints import mismatch_error
from anygpt_core.errors import CheckpointError, ConfigError

__all__ = [
    "QUANTIZE_MODES",
    "QuantizedLinear",
    "check_quantize",
    "dequantized",
    "load_quantized",
    "quantize_model",
    "quantized_bytes",
    "rebuild_meta_buffers",
    "working_modes",
]

logger = logging.getLogger(__name__)

#: The `--quantize` modes.
QUANTIZE_MODES = ("int8", "int4")
#: int4 group sizes tried in turn: the largest that divides a layer's input width is used.
_GROUPS = (128, 64, 32)
#: Above this many rows (a long prompt), int8 dequantises the weight once and runs one dense
#: product. On a 2-core AVX2 CPU, one 4096 x 11008 layer: the int8 kernel 37 ms for one row and
#: 265-430 ms for 55; dequantising and one float32 product 750-1000 ms for 55 rows.
_KERNEL_ROWS = 96
#: Bytes per quantised weight, scales included (int4: bfloat16 scale and zero per 128 weights).
_WEIGHT_BYTES = {"int8": 1.0, "int4": 0.5 + 4 / 128}


def _int4_layout(
    out_features: int, in_features: int, device: torch.device
) -> tuple[int, int] | None:
    """(group size, inner k tiles) for an int4 layer of this shape; None if none fits.

    tinygemm packs output rows by 16 on the CPU and by 8 on CUDA.
    """
    if out_features % (16 if device.type == "cpu" else 8):
        return None
    for group in _GROUPS:
        if in_features % group:
            continue
        if device.type == "cpu":
            return group, 1
        for tiles in (8, 4, 2):  # tinygemm on CUDA: K a multiple of tiles * 16
            if in_features % (tiles * 16) == 0:
                return group, tiles
    return None


class QuantizedLinear(torch.nn.Module):
    """A bias-free linear layer holding int8 or int4 weights and their scales.

    Buffers: int8 `qweight` int8 [N, K] and `scales` [N] (symmetric, per output row); int4
    `qweight` packed for tinygemm and `scales_zeros` [K / group, N, 2] (asymmetric, per group of
    `group` inputs).

    Args:
        weight: float [N, K] on the device the layer runs on.
        mode: int8 or int4.
        dtype: the compute dtype of activations (and of scales).

    Raises:
        ValueError: int4 for an input width no group size divides.
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    scales_zeros: torch.Tensor

    def __init__(self, weight: torch.Tensor, mode: str, *, dtype: torch.dtype) -> None:
        super().__init__()
        self.mode = mode
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        self.dtype = dtype
        w = weight.detach().to(torch.float32)
        self.group = 0
        if mode == "int8":
            scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127
            q = torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8)
            self.register_buffer("qweight", q)
            self.register_buffer("scales", scales.to(dtype))
            return
        layout = _int4_layout(self.out_features, self.in_features, weight.device)
        if layout is None:
            raise ValueError(
                f"int4 needs inputs by 32 and outputs by 16, not {self.in_features} -> "
                f"{self.out_features}"
            )
        self.group, tiles = layout
        grouped = w.reshape(self.out_features, -1, self.group)
        low = grouped.amin(dim=-1, keepdim=True)
        scale = ((grouped.amax(dim=-1, keepdim=True) - low) / 15).clamp(min=1e-6)
        q = torch.round((grouped - low) / scale).clamp(0, 15).to(torch.int32)
        q = q.reshape(self.out_features, self.in_features)
        zero = low + 8 * scale  # tinygemm dequantises (q - 8) * scale + zero
        if weight.device.type == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        else:
            pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs.contiguous(), tiles)
        scales_zeros = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("qweight", packed)
        self.register_buffer("scales_zeros", scales_zeros.to(dtype))  # (groups, N, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X [..., K] -> [..., N] in x's dtype (computed in the layer's dtype)."""
        rows = x.reshape(-1, self.in_features).to(self.dtype)
        cpu = x.device.type == "cpu"
        if self.mode == "int8" and cpu and rows.shape[0] <= _KERNEL_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales)
        elif self.mode == "int8":
            work = torch.float32 if cpu else self.dtype  # CPUs without bf16 units: float32 GEMM
            # per output row scales: applied to the product, not to the N x K weight
            out = F.linear(rows.to(work), self.qweight.to(work)) * self.scales.to(work)
        elif cpu:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                rows.contiguous(), self.qweight, self.group, self.scales_zeros
            )
        else:
            out = torch.ops.aten._weight_int4pack_mm(
                rows.contiguous(), self.qweight, self.group, self.scales_zeros
            )
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        """`in, out, mode` in the module's repr."""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.mode}"


def dequantized(weight: torch.Tensor, mode: str, *, group: int = 128) -> torch.Tensor:
    """float32 [N, K]: `weight` quantised as `QuantizedLinear` quantises it, and dequantised.

    What the layer's kernel multiplies by, up to the order of its sums; `group` is int4's group
    size (`QuantizedLinear.group`).
    """
    w = weight.float()
    if mode == "int8":
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127
        return torch.round(w / scales[:, None]).clamp(-128, 127) * scales[:, None]
    grouped = w.reshape(w.shape[0], -1, group)
    low = grouped.amin(dim=-1, keepdim=True)
    scale = ((grouped.amax(dim=-1, keepdim=True) - low) / 15).clamp(min=1e-6)
    return (torch.round((grouped - low) / scale).clamp(0, 15) * scale + low).reshape(w.shape)


@cache
def working_modes(device: str, dtype: str) -> tuple[str, ...]:
    """The quantisation modes whose kernels run, and give the right numbers, on this device.

    Each mode quantises a small seeded layer and compares one row and a prompt's worth of rows
    with the dequantised weights in float32 (a missing kernel raises; a wrong one disagrees).

    Args:
        device: a torch device string (`cpu`, `cuda:0`).
        dtype: the compute dtype's name (`bfloat16`, `float16`, `float32`).
    """
    torch_device, torch_dtype = torch.device(device), getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn((256, 256), generator=generator).to(torch_device)
    works = []
    for mode in QUANTIZE_MODES:
        try:
            layer = QuantizedLinear(weight, mode, dtype=torch_dtype)
            good = True
            for rows in (1, 2 * _KERNEL_ROWS):
                x = torch.randn((rows, 256), generator=generator).to(torch_device, torch_dtype)
                want = x.float() @ dequantized(weight, mode, group=layer.group).T
                got = layer(x).float()
                good &= bool(((got - want).abs().max() <= 0.02 * want.abs().max() + 0.05).item())
        except (RuntimeError, NotImplementedError, ValueError) as err:
            logger.info("--quantize %s does not run on %s %s: %s", mode, device, dtype, err)
            continue
        if good:
            works.append(mode)
        else:
            logger.info("--quantize %s gives wrong numbers on %s %s", mode, device, dtype)
    return tuple(works)


def check_quantize(mode: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a mode that is unknown or whose kernel this device lacks, naming those that work.

    Raises:
        ConfigError: `--quantize int4: no working int4 kernel on cpu with bfloat16; modes that
            work here: none, int8` (exit code 6).
    """
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize {mode}: expected one of {', '.join(QUANTIZE_MODES)}")
    dtype_name = str(dtype).removeprefix("torch.")
    works = working_modes(str(device), dtype_name)
    if mode not in works:
        raise ConfigError(
            f"--quantize {mode}: no working {mode} kernel on {device.type} with {dtype_name}; "
            f"modes that work here: {', '.join(('none', *works))}"
        )


def _quantizable(name: str, module: torch.nn.Module) -> bool:
    """A bias-free linear layer inside the transformer body (not the embeddings, not the head)."""
    bias = getattr(module, "bias", None)
    return isinstance(module, torch.nn.Linear) and bias is None and ".layers." in f".{name}"


def quantize_model(model: torch.nn.Module, mode: str) -> int:
    """Replace the transformer layers' linear layers of a loaded model by quantised ones.

    Returns:
        The number of layers quantised (an int4 layer no group size fits stays as it was).
    """
    count = 0
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if _quantizable(name, module) and not module.weight.is_meta:
                replaced = _quantized(module.weight, mode, module.weight.dtype, name)
                if replaced is not None:
                    model.set_submodule(name, replaced)
                    count += 1
    return count


def _quantized(
    weight: torch.Tensor, mode: str, dtype: torch.dtype, name: str
) -> QuantizedLinear | None:
    try:
        return QuantizedLinear(weight, mode, dtype=dtype)
    except ValueError as err:
        logger.info("%s stays %s: %s", name, dtype, err)
        return None


def quantized_bytes(directory: Path, mode: str, *, stored_bytes: int, itemsize: int) -> int:
    """Memory a model needs once quantised: its layers in `mode`, the rest in 2-byte floats.

    The embeddings and the output layer (vocabulary x width each, one when tied) stay unquantised;
    everything else is counted as quantised weights. Sizes come from config.json.
    """
    elements = stored_bytes / itemsize
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        width = int(config.get("hidden_size") or 0) * int(config.get("vocab_size") or 0)
        tied = bool(config.get("tie_word_embeddings", False))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        width, tied = 0, False
    kept = min(elements, width * (1 if tied else 2))
    return int((elements - kept) * _WEIGHT_BYTES[mode] + kept * 2)


def load_quantized(
    directory: Path, mode: str, *, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """A transformers causal LM from safetensors files, its layers quantised tensor by tensor.

    The model is built on the meta device; each tensor of the files is read, moved to `device`
    in `dtype`, quantised if it is a layer's linear weight, and put in place, so memory holds
    the quantised model plus one float tensor.

    Raises:
        CheckpointError: no safetensors files, or tensors missing, unexpected or of other shapes
            than config.json says.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{directory}: --quantize reads safetensors weights and finds none; convert the "
            "checkpoint with save_pretrained(safe_serialization=True)"
        )
    try:
        config = AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except Exception as err:
        raise CheckpointError(f"{directory}: cannot build the model ({err})") from err
    expected = dict(model.state_dict())
    unexpected: list[str] = []
    shapes: list[str] = []
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework="pt") as reader:
                for key in reader.keys():  # noqa: SIM118 - a safetensors reader, not a dict
                    target = expected.pop(key, None)
                    if target is None:
                        unexpected.append(key)
                        continue
                    tensor = reader.get_tensor(key)
                    if tuple(tensor.shape) != tuple(target.shape):
                        shapes.append(f"{key} {tuple(tensor.shape)} vs {tuple(target.shape)}")
                        continue
                    _place(model, key, tensor.to(device, dtype), mode)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        expected.pop("lm_head.weight", None)
    if expected or unexpected or shapes:
        raise mismatch_error(
            directory,
            what="the model its config.json describes",
            missing=sorted(expected),
            unexpected=sorted(unexpected),
            shapes=shapes,
        )
    rebuild_meta_buffers(model, device)
    return model.eval()


def _place(model: torch.nn.Module, key: str, tensor: torch.Tensor, mode: str) -> None:
    """Put one checkpoint tensor in the meta-built model, quantising a layer's linear weight."""
    owner_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    if attr == "weight" and _quantizable(owner_name, owner):
        replaced = _quantized(tensor, mode, tensor.dtype, owner_name)
        if replaced is not None:
            model.set_submodule(owner_name, replaced)
            return
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attr] = tensor


def rebuild_meta_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Recompute buffers no checkpoint holds (rotary frequencies), built on the meta device."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        try:
            fresh = type(module)(config=model.config).to(device)  # built on the CPU
        except TypeError as err:
            raise CheckpointError(
                f"{name}: buffers that no checkpoint holds and that cannot be rebuilt ({err})"
            ) from err
        model.set_submodule(name, fresh)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"model tensors left unloaded: {', '.join(left[:3])}")
