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
    "OutputDir",
    "Seed",
    "Temperature",
    "TopK",
    "TopP",
    "VLLMUrl",
    "check_decoding",
    "check_engine",
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
OutputDir = Annotated[Path, typer.Option("--output-dir", help="Where output files are written.")]
InstructionsFile = Annotated[
    Path | None,
    typer.Option("--instructions", help="Phrasings JSON (other2text/text2other layout)."),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="Decoding config JSON for the answer's modality."),
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
) -> AnyGPT:
    """Load the model (or the demo, with its one-line notice on stderr) with a spinner.

    With `vllm_url`, only its tokenizer loads; generation goes to that vLLM server.
    """
    from anygpt_cli.console import stderr
    from anygpt_core.api import AnyGPT
    from anygpt_core.demo import DEMO_NOTICE

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
        )
