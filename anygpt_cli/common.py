"""Options shared by commands that load a model, and the loader behind them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from anygpt_core.api import AnyGPT
    from anygpt_core.plugins import PluginSet

__all__ = [
    "ConfigFile",
    "Device",
    "Dtype",
    "EngineName",
    "InstructionsFile",
    "MaxNewTokens",
    "ModelPath",
    "NumBeams",
    "Offload",
    "OutputDir",
    "Quantize",
    "Seed",
    "Temperature",
    "TopK",
    "TopP",
    "VLLMUrl",
    "check_decoding",
    "check_engine",
    "check_low_memory",
    "load_model",
    "stdin_lines",
]

ModelPath = Annotated[
    str | None,
    typer.Option(
        "--model-name-or-path",
        help="Model directory or hub id (e.g. fnlp/AnyGPT-base). Default: the embedded demo.",
    ),
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto (float16 on a GPU; on the CPU float32, or bfloat16 if that does not fit in "
        "memory), float32, float16 or bfloat16.",
    ),
]
Quantize = Annotated[
    str | None,
    typer.Option(
        "--quantize",
        help="int8 or int4: quantise the language model's layers as they load (weight-only; "
        "about 7 or 4 GB for a 7B model); computes in bfloat16 unless --dtype says otherwise.",
        show_default=False,
    ),
]
Offload = Annotated[
    str | None,
    typer.Option(
        "--offload",
        help="codecs: codec models leave the device between their encodes and decodes (to the "
        "CPU from a GPU; released on the CPU); the language model stays. Composes with "
        "--image-low-memory.",
        show_default=False,
    ),
]
OutputDir = Annotated[Path, typer.Option("--output-dir", help="Where output files are written.")]
InstructionsFile = Annotated[
    Path | None,
    typer.Option(
        "--instructions",
        help="Phrasings JSON (other2text/text2other layout).",
        readable=False,  # our check says what is wrong, exit 3 (click's would exit 2)
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Decoding config JSON for the answer's modality.",
        readable=False,  # the loader says what is wrong (click's check would exit 2)
    ),
]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed for reproducible output.")]
MaxNewTokens = Annotated[int | None, typer.Option("--max-new-tokens", help="Token budget.")]
Temperature = Annotated[float | None, typer.Option("--temperature", help="Softmax temperature.")]
TopP = Annotated[float | None, typer.Option("--top-p", help="Nucleus probability mass.")]
TopK = Annotated[int | None, typer.Option("--top-k", help="Keep the k most likely tokens.")]
NumBeams = Annotated[
    int | None,
    typer.Option(
        "--num-beams",
        help="Beam search for text answers (the seed chat used 5, sampled); the answer comes at once.",
    ),
]


EngineName = Annotated[
    str,
    typer.Option(
        "--engine",
        help="local: generate in this process; vllm: on the vLLM server at --vllm-url (only the "
        "tokenizer loads here).",
    ),
]
VLLMUrl = Annotated[
    str | None,
    typer.Option(
        "--vllm-url",
        help="Base URL of a vLLM server serving the same model with the anygpt-vllm processor, "
        "e.g. http://127.0.0.1:8000.",
    ),
]


def check_engine(engine: str, vllm_url: str | None) -> str | None:
    """The vLLM URL to generate on, or None for the local engine.

    Raises:
        ConfigError: an unknown engine, or a URL without `--engine vllm` and the reverse.
    """
    from anygpt_core.errors import ConfigError

    if engine not in {"local", "vllm"}:
        raise ConfigError(f"--engine {engine}: use local or vllm")
    if engine == "vllm" and not vllm_url:
        raise ConfigError("--engine vllm needs --vllm-url URL (a vLLM server's base URL)")
    if engine == "local" and vllm_url:
        raise ConfigError("--vllm-url is for --engine vllm")
    return vllm_url if engine == "vllm" else None


def check_low_memory(quantize: str | None, offload: str | None) -> bool:
    """Validate `--quantize` and `--offload` before anything loads; True to offload codecs.

    Whether this device has the quantisation kernel is checked when the model loads, before
    its weights do.

    Raises:
        ConfigError: an unknown mode, naming the known ones (exit code 6).
    """
    from anygpt_core.engine.quantize import QUANTIZE_MODES
    from anygpt_core.errors import ConfigError

    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZE_MODES)}")
    if offload not in (None, "codecs"):
        raise ConfigError(f"--offload {offload}: expected codecs")
    return offload == "codecs"


def check_decoding(
    config: Path | None,
    *,
    plugins: PluginSet,
    seed: int | None = None,
    **flags: Any,  # noqa: ANN401 - field values
) -> None:
    """Validate a decoding config file, the seed and flag values without loading anything.

    The file may hold the fields an installed modality's decoder reads (`decoding_fields`).

    Raises:
        ConfigError: a missing or bad file, or an invalid value, in one line.
    """
    from anygpt_core.config import DecodingConfig, check_seed, load_decoding_config

    if seed is not None:
        check_seed(seed)
    if config is not None:
        load_decoding_config(config, base=DecodingConfig(), other_fields=plugins.decoding_fields())
    DecodingConfig().merged(**flags)


def stdin_lines() -> Iterator[str]:
    """Lines of stdin; bytes that are not UTF-8 stay in their line (as surrogates) to be refused there.

    Reading stdin as text would raise on such a byte and end the whole session or batch.
    """
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream (tests): already decoded
        yield from sys.stdin
        return
    for line in raw:
        yield line.decode("utf-8", "surrogateescape")


def load_model(
    plugins: PluginSet,
    model: str | None,
    *,
    device: str,
    dtype: str,
    codec_options: dict[str, Any],
    output_dir: Path,
    instructions: Path | None = None,
    vllm_url: str | None = None,
    quantize: str | None = None,
    offload: str | None = None,
) -> AnyGPT:
    """Load the model (or the demo, with its one-line notice on stderr) with a spinner.

    With `vllm_url`, only its tokenizer loads; generation goes to that vLLM server. `quantize`
    and `offload` are the low-memory modes (`--quantize`, `--offload`).
    """
    from anygpt_cli.console import stderr
    from anygpt_core.api import AnyGPT
    from anygpt_core.demo import DEMO_NOTICE

    offload_codecs = check_low_memory(quantize, offload)
    if quantize is not None and vllm_url is not None:
        from anygpt_core.errors import ConfigError

        raise ConfigError("--quantize is for --engine local; a vLLM server loads its own model")
    if model is None:
        stderr.print(f"[yellow]{DEMO_NOTICE}[/yellow]")
    with stderr.status("Loading model…"):
        return AnyGPT.load(
            model,
            device=device,
            dtype=dtype,
            plugins=plugins,
            codec_options=codec_options,
            instructions=instructions,
            output_dir=output_dir,
            vllm_url=vllm_url,
            quantize=quantize,
            offload_codecs=offload_codecs,
        )
