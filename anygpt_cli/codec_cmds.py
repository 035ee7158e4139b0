"""`anygpt encode` and `anygpt decode`: check a tokenizer, prepare data, listen to a span."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.options import with_codec_options
from anygpt_core.errors import InputError
from anygpt_core.files import check_input_file

if TYPE_CHECKING:
    from anygpt_core.api import CodecSet
    from anygpt_core.plugins import PluginSet

__all__ = ["register"]


#: Said on stderr when the demo's codecs fill in the options not given (the default, as for `run`).
DEMO_CODECS_NOTICE = (
    "Using the demo codecs for options not given: their codes and media are meaningless "
    "(--no-demo: the published checkpoints)."
)


def _codecs(
    plugins: PluginSet, modality: str, codec_options: dict[str, Any], *, use_demo: bool
) -> CodecSet:
    """The codecs: the user's options over the demo's (`run` without a model does the same).

    With `use_demo` false, options not given take the codecs' defaults: the published checkpoints.
    The notice is said when the demo fills in an option of `modality`.
    """
    from anygpt_core.api import CodecSet

    options = dict(codec_options)
    if use_demo:
        from anygpt_cli.console import stderr
        from anygpt_core.demo import ensure_demo

        spec = plugins.modality(modality)  # an unknown modality fails before the demo is built
        demo = ensure_demo(plugins).options
        if {o.name for o in spec.options} & demo.keys() - options.keys():
            stderr.print(f"[yellow]{DEMO_CODECS_NOTICE}[/yellow]", highlight=False)
        options = {**demo, **options}
    return CodecSet(plugins, options)


def _read_span(span: str) -> str:
    if span == "-":
        return sys.stdin.read()
    if span.startswith("@"):
        path = Path(span[1:])
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise InputError(f"{path}: no such file") from err
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not a readable text file ({err})") from err
    return span


Demo = Annotated[
    bool,
    typer.Option(
        "--demo/--no-demo",
        help=(
            "Codec options not given: the embedded demo's tiny codecs (as `run` without a "
            "model), or the published checkpoints (--no-demo)."
        ),
    ),
]


_Modality = Annotated[str, typer.Argument(help="Modality name, e.g. music.")]


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add `encode` and `decode` with the installed plugins' options."""
    _add_encode(app, plugins)
    _add_decode(app, plugins)


def _add_encode(app: typer.Typer, plugins: PluginSet) -> None:
    @app.command("encode")
    @with_codec_options(plugins.options(), plugins.option_panels())
    def encode_command(
        modality: _Modality,
        file: Annotated[
            Path, typer.Argument(help="Media file to encode.", readable=False)  # ours: exit 3
        ],
        *,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the codes [K, T] as JSON instead.")
        ] = False,
        demo: Demo = True,
        codec_options: dict[str, Any],
    ) -> None:
        """Print the protocol string of FILE (`<somu><🎶…>…<eomu>`).

        Like `run` without a model, codec options you leave out are the embedded demo's (its codes
        are meaningless): name the codec's checkpoints, or --no-demo for the published ones.
        """
        from anygpt_core.protocol import codes_to_string

        check_input_file(file)  # a missing file fails before the demo is built
        codecs = _codecs(plugins, modality, codec_options, use_demo=demo)
        spec = codecs.spec(modality)
        codes = codecs.encode(modality, file)
        if as_json:
            typer.echo(
                json.dumps(
                    {"modality": modality, "shape": list(codes.shape), "codes": codes.tolist()}
                )
            )
        else:
            typer.echo(codes_to_string(spec, codes))


_Span = Annotated[
    str, typer.Argument(help="The span `<somu>…<eomu>`, `@file` holding it, or `-` (stdin).")
]
_VoicePrompt = Annotated[
    Path | None,
    typer.Option(
        "--voice-prompt",
        "--condition",
        help="Voice prompt (speech) or condition file.",
        readable=False,  # check_input_file says what is wrong, exit 3
    ),
]
_Seed = Annotated[int | None, typer.Option("--seed", help="Seed for sampling decoders.")]
_Lenient = Annotated[
    bool, typer.Option("--lenient", help="Repair a malformed span (with a warning).")
]


def _add_decode(app: typer.Typer, plugins: PluginSet) -> None:
    @app.command("decode")
    @with_codec_options(plugins.options(), plugins.option_panels())
    def decode_command(
        modality: _Modality,
        span: _Span,
        *,
        output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
        voice_prompt: _VoicePrompt = None,
        seed: _Seed = None,
        lenient: _Lenient = False,
        force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT.")] = False,
        demo: Demo = True,
        codec_options: dict[str, Any],
    ) -> None:
        """Decode a span into a media file.

        Like `run` without a model, codec options you leave out are the embedded demo's (its media
        are meaningless): name the codec's checkpoints, or --no-demo for the published ones.
        """
        from anygpt_core.files import write_bytes
        from anygpt_core.protocol import string_to_codes
        from anygpt_core.tasks import atomic_write

        _check_decode(output, voice_prompt, seed=seed, force=force)
        codecs = _codecs(plugins, modality, codec_options, use_demo=demo)
        spec = codecs.spec(modality)
        codes = string_to_codes(spec, _read_span(span), strict=not lenient)
        media = codecs.codec(modality).decode(
            codes, condition=voice_prompt, seed=seed, config=spec.decoding
        )
        # encoded in memory, then written and synced in one go (as `run` saves): a full disk is
        # one OutputError naming OUTPUT, whatever library encodes the format
        data = codecs.to_bytes(modality, media, suffix=output.suffix or None)
        written = atomic_write(output, lambda tmp: write_bytes(tmp, data), overwrite=force)
        typer.echo(str(written))


def _check_decode(
    output: Path, voice_prompt: Path | None, *, seed: int | None, force: bool
) -> None:
    """The seed, OUTPUT and the voice prompt, before any codec loads."""
    from anygpt_core.config import check_seed

    if seed is not None:
        check_seed(seed)
    if output.exists() and not force:
        raise InputError(f"{output}: already exists; use --force to overwrite")
    if voice_prompt is not None:
        check_input_file(voice_prompt, what="voice prompt")
