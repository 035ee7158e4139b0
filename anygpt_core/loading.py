"""Loading the language model and its tokenizer by local directory or hub id, without pickled code."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from anygpt_core.checkpoints import mismatch_error, resolve_checkpoint
from anygpt_core.errors import CheckpointError, ConfigError, first_line

__all__ = [
    "available_memory",
    "checkpoint_bytes",
    "cpu_dtype",
    "load_causal_lm",
    "load_language_model",
    "load_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_model_dir",
]

logger = logging.getLogger(__name__)


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local directory holding a Hugging Face model, from a path or a hub id (`@revision` too).

    Raises:
        CheckpointError: no such directory, not a model directory, or a hub id that is neither
            cached nor downloadable (see `anygpt_core.checkpoints.resolve_checkpoint`).
    """
    path = resolve_checkpoint(name_or_path, flag="")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; pass the model's directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; not a Hugging Face model directory")
    return path


def pick_device(device: str = "auto", *, flag: str = "--device") -> Any:  # noqa: ANN401 - torch.device
    """`auto` -> cuda when available, else cpu; `cpu`, `cuda`, `cuda:N` as given.

    `flag` names the option in errors (plugins pass their own, e.g. `--speech-device`).
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"{flag} {device}: expected auto, cpu, cuda or cuda:N") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{flag} {device}: CUDA is not available on this machine")
    return chosen


def pick_dtype(dtype: str, device: Any) -> Any:  # noqa: ANN401 - torch types
    """`auto` -> float16 on GPU, float32 on CPU (see `cpu_dtype`); else float32, float16 or bfloat16."""
    import torch

    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise ConfigError(f"--dtype {dtype}: expected auto, {', '.join(names)}")
    return names[dtype]


#: Bytes per element of the dtype names a config.json may give.
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def checkpoint_bytes(directory: Path) -> tuple[int, int]:
    """Bytes of the weight files in `directory`, and the bytes per element they are stored in."""
    import json

    files = [*directory.glob("*.safetensors"), *directory.glob("pytorch_model*.bin")]
    size = sum(f.stat().st_size for f in files if f.is_file())
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        config = {}
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    return size, _ITEMSIZE.get(str(stored), 4)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux `MemAvailable`), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_dtype(directory: Path, available: int | None = None, *, quantize: str | None = None) -> str:
    """`auto` on the CPU: float32 when it fits in memory, else bfloat16 (with a warning).

    A 7B model is 28 GB in float32, more than many machines hold; the kernel would kill the
    process without a word. When even bfloat16 does not fit, say so instead. With `quantize`
    (int8, int4) the layers' weights count at their quantised size and the rest in bfloat16,
    the dtype quantised models compute in.

    Raises:
        CheckpointError: the model does not fit in memory in bfloat16 (or quantised) either.
    """
    size, itemsize = checkpoint_bytes(directory)
    available = available_memory() if available is None else available
    if quantize is not None:
        _check_quantized_fits(directory, quantize, size, itemsize, available)
        return "bfloat16"
    if available is None or size == 0:
        return "float32"
    elements = size / itemsize
    gib = 1024**3
    if elements * 4 <= 0.85 * available:
        return "float32"
    if elements * 2 <= 0.85 * available:
        logger.warning(
            "loading in bfloat16: float32 needs %.1f GiB and %.1f GiB of memory is available "
            "(--dtype float32 to insist)",
            elements * 4 / gib,
            available / gib,
        )
        return "bfloat16"
    raise CheckpointError(
        f"{directory}: the model needs {elements * 2 / gib:.1f} GiB even in bfloat16 and "
        f"{available / gib:.1f} GiB of memory is available; use a GPU (--device cuda) or a "
        "machine with more memory"
    )


def _check_quantized_fits(
    directory: Path, quantize: str, size: int, itemsize: int, available: int | None
) -> None:
    """Refuse a quantised load that does not fit in `available` bytes (unknown: allowed)."""
    from anygpt_core.engine.quantize import quantized_bytes

    if available is None or size == 0:
        return
    needed = quantized_bytes(directory, quantize, stored_bytes=size, itemsize=itemsize)
    if needed > 0.85 * available:
        gib = 1024**3
        raise CheckpointError(
            f"{directory}: the model needs {needed / gib:.1f} GiB even in {quantize} and "
            f"{available / gib:.1f} GiB of memory is available; use a GPU (--device cuda)"
            + (", --quantize int4" if quantize != "int4" else "")
            + " or a machine with more memory"
        )


def load_language_model(
    name_or_path: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quantize: str | None = None,
) -> tuple[Any, Any]:
    """Load a LLaMA-family causal LM and its tokenizer; weights without pickled code.

    Args:
        name_or_path: a model directory or hub id.
        device: auto, cpu, cuda or cuda:N.
        dtype: auto (see `pick_dtype`; bfloat16 with `quantize`), float32, float16, bfloat16.
        quantize: int8 or int4: the layers' weights quantised as they load
            (`anygpt_core.engine.quantize`); None keeps them as stored.

    Returns:
        `(model, tokenizer)`, the model in eval mode on the chosen device.

    Raises:
        ConfigError: a quantisation mode this device cannot run (exit code 6).
        CheckpointError: missing or mismatched weights, or a model that does not fit in memory.
    """
    directory = resolve_model_dir(name_or_path)
    torch_device = pick_device(device)
    if quantize is not None:
        from anygpt_core.engine.quantize import check_quantize, load_quantized

        # bfloat16: what the int4 kernels take, and the range float16 scales may lack
        torch_dtype = pick_dtype("bfloat16" if dtype == "auto" else dtype, torch_device)
        check_quantize(quantize, torch_device, torch_dtype)
        if torch_device.type == "cpu":
            cpu_dtype(directory, quantize=quantize)
        tokenizer = load_tokenizer(directory)
        model = load_quantized(directory, quantize, device=torch_device, dtype=torch_dtype)
        _check_finite(directory, model)
        return model, tokenizer
    if dtype == "auto" and torch_device.type == "cpu":
        dtype = cpu_dtype(directory)
    torch_dtype = pick_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(directory)
    # Straight onto the device: a 7B float16 model needs no 14 GB of host memory on the way.
    model = load_causal_lm(directory, dtype=torch_dtype, device_map=torch_device)
    if model.get_output_embeddings() is None:
        raise CheckpointError(f"{directory}: model has no output embedding; not a causal LM")
    model.to(torch_device).eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str | Path) -> Any:  # noqa: ANN401 - a transformers tokenizer
    """A model's tokenizer alone (no weights), e.g. for a gateway in front of a vLLM server.

    Raises:
        CheckpointError: the directory holds no tokenizer that loads.
    """
    from transformers import AutoTokenizer

    directory = resolve_model_dir(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(directory)
    except Exception as err:
        raise CheckpointError(
            f"{directory}: cannot load its tokenizer ({_first_line(err)})"
        ) from err


def load_causal_lm(directory: Path, **kwargs: Any) -> Any:  # noqa: ANN401 - a transformers model
    """`AutoModelForCausalLM.from_pretrained`, refusing weights that do not fill the model.

    transformers initialises tensors missing from the files randomly and only logs it; here a
    missing or unexpected tensor, or a shape that differs from config.json, is a `CheckpointError`.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would precede our one-line error
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            directory, output_loading_info=True, **kwargs
        )
    except Exception as err:
        raise CheckpointError(f"{directory}: cannot load the model ({_load_error(err)})") from err
    finally:
        hf_logging.set_verbosity(verbosity)
    model, info = loaded
    _check_loading_info(Path(directory), info)
    _check_finite(Path(directory), model)
    return model


def _check_finite(directory: Path, model: Any) -> None:  # noqa: ANN401 - a torch module
    """Refuse weights holding NaN or infinity: every answer would be garbage or fail to sample.

    One pass over the weights, on their device (a fraction of the time reading them took).
    """
    import torch

    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{directory}: tensor {name} holds NaN or infinite values; the checkpoint is "
                "damaged or was saved after training diverged"
            )


def _check_loading_info(directory: Path, info: dict[str, Any]) -> None:
    """Refuse weights that do not fill the model: transformers would initialise the gaps randomly."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    if missing or unexpected:
        raise mismatch_error(
            directory,
            what="the model its config.json describes",
            missing=missing,
            unexpected=unexpected,
        )


def _load_error(err: BaseException) -> str:
    text = str(err)
    if "ignore_mismatched_sizes" in text or "size mismatch" in text:
        return "tensor shapes differ from its config.json"
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    return first_line(err)[:200]
