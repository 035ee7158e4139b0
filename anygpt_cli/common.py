"""Options shared by commands that load a model, declared once as groups, and the loader.

A command takes a group as one parameter (`model: ModelChoice`) and the group's decorator
(`@ModelChoice.options()`) puts the group's options in that parameter's place, so `--help` lists
them where the command declares it:

```python
@app.command("run")
@ModelChoice.options(output_dir=True)
@DecodingFlags.options()
def run_command(*, model: ModelChoice, decoding: DecodingFlags) -> None: ...
```
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.options import Command, with_group

if TYPE_CHECKING:
    from anygpt_core.api import AnyGPT
    from anygpt_core.plugins import PluginSet

__all__ = [
    "ChatTemplate",
    "DecodingFlags",
    "EngineChoice",
    "InstructionsFile",
    "ModelChoice",
    "check_template",
    "load_model",
    "stdin_lines",
]


@dataclass(frozen=True)
class ModelChoice:
    """Which model a command loads, on what and how."""

    model_name_or_path: Annotated[
        str | None,
        typer.Option(
            "--model-name-or-path",
            help="Model directory or hub id (e.g. fnlp/AnyGPT-base). Default: the embedded demo.",
        ),
    ] = None
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "auto"
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto (float16 on a GPU; on the CPU float32, or bfloat16 if that does not fit in "
            "memory), float32, float16 or bfloat16.",
        ),
    ] = "auto"
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            help="int8 or int4: quantise the language model's layers as they load (weight-only; "
            "about 7 or 4 GB for a 7B model); computes in bfloat16 unless --dtype says otherwise.",
            show_default=False,
        ),
    ] = None
    offload: Annotated[
        str | None,
        typer.Option(
            "--offload",
            help="codecs: codec models leave the device between their encodes and decodes (to "
            "the CPU from a GPU; released on the CPU); the language model stays. Composes with "
            "--image-low-memory.",
            show_default=False,
        ),
    ] = None
    prefix_cache_mb: Annotated[
        int,
        typer.Option(
            "--prefix-cache-mb",
            help="Memory for the keys and values of prompts and answers already run, which later "
            "prompts that start with them (a chat's history, a shared system line) reuse instead "
            "of running again; 0 turns it off. Local engine only.",
        ),
    ] = 256
    output_dir: Annotated[
        Path, typer.Option("--output-dir", help="Where output files are written.")
    ] = Path("anygpt_output")

    @classmethod
    def options(cls, *, output_dir: bool = False) -> Callable[[Command], Command]:
        """Put the model options (`--output-dir` too) where the command takes a `ModelChoice`."""
        return with_group(cls, leave_out=() if output_dir else ("output_dir",))

    def check(self) -> None:
        """Validate `--quantize`, `--offload` and `--prefix-cache-mb` before anything loads.

        Whether this device has the quantisation kernel is checked when the model loads, before
        its weights do.

        Raises:
            ConfigError: an unknown mode, naming the known ones (exit code 6).
        """
        from anygpt_core.engine.quantize import QUANTIZE_MODES
        from anygpt_core.errors import ConfigError

        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            modes = ", ".join(QUANTIZE_MODES)
            raise ConfigError(f"--quantize {self.quantize}: expected one of {modes}")
        if self.offload not in (None, "codecs"):
            raise ConfigError(f"--offload {self.offload}: expected codecs")
        if self.prefix_cache_mb < 0:
            raise ConfigError(f"--prefix-cache-mb {self.prefix_cache_mb}: expected 0 or more")


@dataclass(frozen=True)
class DecodingFlags:
    """A decoding config file, the seed and the decoding fields given as flags."""

    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Decoding config JSON for the answer's modality.",
            readable=False,  # the loader says what is wrong (click's check would exit 2)
        ),
    ] = None
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for reproducible output.")] = None
    max_new_tokens: Annotated[
        int | None, typer.Option("--max-new-tokens", help="Token budget.")
    ] = None
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Softmax temperature.")
    ] = None
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus probability mass.")] = None
    top_k: Annotated[int | None, typer.Option("--top-k", help="Keep the k most likely tokens.")] = (
        None
    )
    num_beams: Annotated[
        int | None,
        typer.Option(
            "--num-beams",
            help="Beam search for text answers (the seed chat used 5, sampled); the answer comes "
            "at once.",
        ),
    ] = None

    @classmethod
    def options(cls, *, seed: bool = True, flags: bool = True) -> Callable[[Command], Command]:
        """Put `--config`, `--seed` and the decoding flags where the command takes these."""
        leave_out = [] if seed else ["seed"]
        leave_out += [] if flags else list(cls().overrides)
        return with_group(cls, leave_out=leave_out)

    @property
    def overrides(self) -> dict[str, Any]:
        """The decoding fields the flags set (None: not given), by field name."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "num_beams": self.num_beams,
        }

    def check(self, plugins: PluginSet) -> None:
        """Validate the config file, the seed and the flags' values without loading anything.

        The file may hold the fields an installed modality's decoder reads (`decoding_fields`).

        Raises:
            ConfigError: a missing or bad file, or an invalid value, in one line.
        """
        from anygpt_core.config import DecodingConfig, check_seed, load_decoding_config

        if self.seed is not None:
            check_seed(self.seed)
        if self.config is not None:
            load_decoding_config(
                self.config, base=DecodingConfig(), other_fields=plugins.decoding_fields()
            )
        DecodingConfig().merged(**self.overrides)


@dataclass(frozen=True)
class EngineChoice:
    """Where generation runs: here, on a vLLM server, or (`anygpt eval`) on an `anygpt serve`."""

    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local: generate in this process; vllm: on the vLLM server at --vllm-url (only "
            "the tokenizer loads here).",
        ),
    ] = "local"
    vllm_url: Annotated[
        str | None,
        typer.Option(
            "--vllm-url",
            help="Base URL of a vLLM server serving the same model with the anygpt-vllm "
            "processor, e.g. http://127.0.0.1:8000.",
        ),
    ] = None
    server: Annotated[
        str | None,
        typer.Option("--server", help="Base URL of an `anygpt serve` to answer instead."),
    ] = None
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="ANYGPT_API_KEY", help="Key for --server."),
    ] = None

    @classmethod
    def options(cls, *, server: bool = False) -> Callable[[Command], Command]:
        """Put `--engine`, `--vllm-url` (and `--server`, `--api-key`) where the command takes these."""
        return with_group(cls, leave_out=() if server else ("server", "api_key"))

    def url(self) -> str | None:
        """The vLLM URL to generate on, or None for the local engine.

        Raises:
            ConfigError: an unknown engine, or a URL without `--engine vllm` and the reverse.
        """
        from anygpt_core.errors import ConfigError

        if self.engine not in {"local", "vllm"}:
            raise ConfigError(f"--engine {self.engine}: use local or vllm")
        if self.engine == "vllm" and not self.vllm_url:
            raise ConfigError("--engine vllm needs --vllm-url URL (a vLLM server's base URL)")
        if self.engine == "local" and self.vllm_url:
            raise ConfigError("--vllm-url is for --engine vllm")
        return self.vllm_url if self.engine == "vllm" else None


#: `--chat-template` of the commands that chat at a person (`chat`, `web`).
ChatTemplate = Annotated[
    str,
    typer.Option(
        "--chat-template",
        help="mmgpt (the seed chat tool's template) or anygpt (the SFT template).",
    ),
]
InstructionsFile = Annotated[
    Path | None,
    typer.Option(
        "--instructions",
        help="Phrasings JSON (other2text/text2other layout).",
        readable=False,  # our check says what is wrong, exit 3 (click's would exit 2)
    ),
]


def check_template(name: str) -> None:
    """`--chat-template` names a known template.

    Raises:
        InputError: an unknown name, listing the known ones.
    """
    from anygpt_core.chat import TEMPLATES
    from anygpt_core.errors import InputError

    if name not in TEMPLATES:
        raise InputError(f"--chat-template {name}: choose one of {', '.join(TEMPLATES)}")


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
    model: ModelChoice,
    *,
    codec_options: dict[str, Any],
    output_dir: Path | None = None,
    instructions: Path | None = None,
    vllm_url: str | None = None,
) -> AnyGPT:
    """Load the model (or the demo, with its one-line notice on stderr) with a spinner.

    Answers' files go to `output_dir` (default: `model.output_dir`). With `vllm_url`, only its
    tokenizer loads; generation goes to that vLLM server.
    """
    from anygpt_cli.console import stderr
    from anygpt_core.api import AnyGPT
    from anygpt_core.demo import DEMO_NOTICE

    model.check()
    if model.quantize is not None and vllm_url is not None:
        from anygpt_core.errors import ConfigError

        raise ConfigError("--quantize is for --engine local; a vLLM server loads its own model")
    if model.model_name_or_path is None:
        stderr.print(f"[yellow]{DEMO_NOTICE}[/yellow]")
    with stderr.status("Loading model…"):
        return AnyGPT.load(
            model.model_name_or_path,
            device=model.device,
            dtype=model.dtype,
            plugins=plugins,
            codec_options=codec_options,
            instructions=instructions,
            output_dir=model.output_dir if output_dir is None else output_dir,
            vllm_url=vllm_url,
            quantize=model.quantize,
            offload_codecs=model.offload == "codecs",
            prefix_cache_mb=model.prefix_cache_mb,
        )
