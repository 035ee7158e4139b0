"""`anygpt web`: the chat and the one-shot tasks in a browser page (Gradio), on one loaded model."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.common import ChatTemplate, DecodingFlags, ModelChoice, check_template, load_model
from anygpt_cli.options import with_codec_options
from anygpt_core.errors import InputError

if TYPE_CHECKING:
    from anygpt_cli.web_app import WebApp
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


_Host = Annotated[
    str, typer.Option("--host", help="Address to serve on (0.0.0.0: every interface).")
]


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `web` command with the installed plugins' options."""

    @app.command("web", help=HELP)
    @with_codec_options(plugins.options(), plugins.option_panels())
    @ModelChoice.options(output_dir=True)
    @DecodingFlags.options()
    def web_command(
        *,
        model: ModelChoice,
        host: _Host = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 7860,
        chat_template: ChatTemplate = "mmgpt",
        decoding: DecodingFlags,
        codec_options: dict[str, Any],
    ) -> None:
        from anygpt_cli.web_app import WebApp, import_gradio

        check_template(chat_template)
        if not host.strip():
            raise InputError("--host: give an address, e.g. 127.0.0.1")
        model.check()  # an unknown mode fails before loading
        decoding.check(plugins)  # a bad file, seed or flag value fails before loading
        # uploads and the copies Gradio serves stay in the output directory, like the answers
        os.environ.setdefault("GRADIO_TEMP_DIR", str((model.output_dir / ".gradio").resolve()))
        import_gradio()  # a missing extra fails before the model loads
        gpt = load_model(plugins, model, codec_options=codec_options)
        page = WebApp(
            gpt,
            output_dir=model.output_dir,
            template=chat_template,
            config=decoding.config,
            seed=decoding.seed,
            overrides=decoding.overrides,
        )
        _serve(page, host, port)


def _serve(page: WebApp, host: str, port: int) -> None:
    """Serve the page until Ctrl-C."""
    from anygpt_cli.console import stderr

    url = page.launch(host=host, port=port, block=False)
    stderr.print(f"anygpt web: [bold]{url}[/bold] (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        stderr.print("stopping")
    finally:
        page.close()
