"""`anygpt web`: the chat and the one-shot tasks in a browser page (Gradio), on one loaded model."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.common import (
    ConfigFile,
    Device,
    Dtype,
    MaxNewTokens,
    ModelPath,
    NumBeams,
    Offload,
    OutputDir,
    Quantize,
    Seed,
    Temperature,
    TopK,
    TopP,
    check_decoding,
    check_low_memory,
    load_model,
)
from anygpt_cli.options import with_codec_options
from anygpt_core.errors import InputError

if TYPE_CHECKING:
    from anygpt_core.plugins import PluginSet

__all__ = ["register"]

HELP = """Serve a page where a person chats with the model and runs one-shot tasks.

The chat tab takes typed text, a spoken instruction (recorded from the microphone or uploaded),
images, music and other installed modalities' files; the answer comes back as text, speech, an
image or music, shown and played in the page. The tasks tab runs the base model's one-shot tasks
(text to image, captioning, text to speech with an optional voice prompt, speech recognition, text
to music, music captioning) with their decoding settings and a seed. Every browser tab keeps its
own conversation; all of them share the loaded model, whose engine batches their generations.
Nothing is fetched from outside the machine. Needs Gradio 6 (the `web` extra):
pip install 'gradio>=6,<7'.
"""


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `web` command with the installed plugins' options."""

    @app.command("web", help=HELP)
    @with_codec_options(plugins.options(), plugins.option_panels())
    def web_command(
        *,
        model_name_or_path: ModelPath = None,
        device: Device = "auto",
        dtype: Dtype = "auto",
        quantize: Quantize = None,
        offload: Offload = None,
        output_dir: OutputDir = Path("anygpt_output"),
        host: Annotated[
            str, typer.Option("--host", help="Address to serve on (0.0.0.0: every interface).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 7860,
        chat_template: Annotated[
            str,
            typer.Option(
                "--chat-template",
                help="mmgpt (the seed chat tool's template) or anygpt (the SFT template).",
            ),
        ] = "mmgpt",
        config: ConfigFile = None,
        seed: Seed = None,
        max_new_tokens: MaxNewTokens = None,
        temperature: Temperature = None,
        top_p: TopP = None,
        top_k: TopK = None,
        num_beams: NumBeams = None,
        codec_options: dict[str, Any],
    ) -> None:
        from anygpt_cli.console import stderr
        from anygpt_cli.web_app import WebApp, import_gradio
        from anygpt_core.chat import TEMPLATES

        if chat_template not in TEMPLATES:
            raise InputError(
                f"--chat-template {chat_template}: choose one of {', '.join(TEMPLATES)}"
            )
        if not host.strip():
            raise InputError("--host: give an address, e.g. 127.0.0.1")
        overrides: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "num_beams": num_beams,
        }
        # a bad file, seed or flag value fails before loading
        check_low_memory(quantize, offload)  # an unknown mode fails before loading
        check_decoding(config, plugins=plugins, seed=seed, **overrides)
        # uploads and the copies Gradio serves stay in the output directory, like the answers
        os.environ.setdefault("GRADIO_TEMP_DIR", str((output_dir / ".gradio").resolve()))
        import_gradio()  # a missing extra fails before the model loads
        gpt = load_model(
            plugins,
            model_name_or_path,
            device=device,
            dtype=dtype,
            quantize=quantize,
            offload=offload,
            codec_options=codec_options,
            output_dir=output_dir,
        )
        page = WebApp(
            gpt,
            output_dir=output_dir,
            template=chat_template,
            config=config,
            seed=seed,
            overrides=overrides,
        )
        url = page.launch(host=host, port=port, block=False)
        stderr.print(f"anygpt web: [bold]{url}[/bold] (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            stderr.print("stopping")
        finally:
            page.close()
