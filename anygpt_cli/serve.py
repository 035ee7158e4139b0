"""`anygpt serve`: the model behind an OpenAI-compatible HTTP API (the `serve` extra)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.common import (
    ConfigFile,
    Device,
    Dtype,
    EngineName,
    InstructionsFile,
    ModelPath,
    Offload,
    Quantize,
    VLLMUrl,
    check_decoding,
    check_engine,
    check_low_memory,
    load_model,
)
from anygpt_cli.options import with_codec_options
from anygpt_core.errors import ConfigError, InputError, PluginError
from anygpt_core.files import file_problem

if TYPE_CHECKING:
    from anygpt_core.plugins import PluginSet

__all__ = ["register"]

HELP = """Serve the model over HTTP with OpenAI's API: chat completions (text, images, speech and
music in and out, streaming), /v1/audio/speech, /v1/audio/transcriptions, /v1/images/generations
and /v1/audio/generations (text to music). Requests in flight are generated together.
"""


def _voices(values: list[str] | None) -> dict[str, Path]:
    voices: dict[str, Path] = {}
    for value in values or []:
        name, sep, file = value.partition("=")
        if not sep or not name.strip() or not file.strip():
            raise InputError(f"--voice {value!r}: expected NAME=FILE, e.g. --voice anna=anna.wav")
        path = Path(file.strip()).expanduser()
        problem = file_problem(path)  # missing, a directory, unreadable, ...
        if problem is not None:
            raise InputError(f"--voice {name.strip()}: {path}: {problem}")
        voices[name.strip()] = path.resolve()
    return voices


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def register(app: typer.Typer, plugins: PluginSet) -> None:
    """Add the `serve` command with the installed plugins' options."""

    @app.command("serve", help=HELP)
    @with_codec_options(plugins.options(), plugins.option_panels())
    def serve_command(
        *,
        model_name_or_path: ModelPath = None,
        device: Device = "auto",
        dtype: Dtype = "auto",
        quantize: Quantize = None,
        offload: Offload = None,
        config: ConfigFile = None,
        engine: EngineName = "local",
        vllm_url: VLLMUrl = None,
        instructions: InstructionsFile = None,
        host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")
        ] = 8000,
        api_key: Annotated[
            str | None,
            typer.Option(
                "--api-key",
                envvar="ANYGPT_API_KEY",
                help="Require 'Authorization: Bearer KEY' on /v1 (or set ANYGPT_API_KEY).",
                show_default=False,
            ),
        ] = None,
        served_model_name: Annotated[
            str | None,
            typer.Option(
                "--served-model-name",
                help="The model id clients send (default: the model path or hub id; anygpt-demo).",
            ),
        ] = None,
        voice: Annotated[
            list[str] | None,
            typer.Option(
                "--voice",
                metavar="NAME=FILE",
                help="A named voice prompt (repeatable); clients pick it by name.",
            ),
        ] = None,
        chat_template: Annotated[
            str, typer.Option("--chat-template", help="mmgpt (the reference chat) or anygpt.")
        ] = "mmgpt",
        max_batch: Annotated[
            int, typer.Option("--max-batch", min=1, max=256, help="Most rows generated together.")
        ] = 16,
        max_queue: Annotated[
            int,
            typer.Option(
                "--max-queue", min=1, help="Most requests in the server; beyond, 429 Retry-After."
            ),
        ] = 64,
        request_timeout: Annotated[
            float,
            typer.Option(
                "--request-timeout", min=1, max=86400, help="Seconds a request may take (504)."
            ),
        ] = 300.0,
        read_timeout: Annotated[
            float,
            typer.Option(
                "--read-timeout",
                min=0.1,
                max=3600,
                help="Seconds a client has to send a request's head, and then its body (408).",
            ),
        ] = 30.0,
        max_body_mb: Annotated[
            float, typer.Option("--max-body-mb", min=0.001, max=4096, help="Request body limit.")
        ] = 25.0,
        max_audio_seconds: Annotated[
            float,
            typer.Option("--max-audio-seconds", min=0.1, max=3600, help="Per audio input."),
        ] = 60.0,
        max_image_pixels: Annotated[
            int,
            typer.Option("--max-image-pixels", min=1, help="Per image input (width × height)."),
        ] = 16_777_216,
        cache_dir: Annotated[
            Path | None,
            typer.Option(
                "--cache-dir",
                help="Where request media wait while encoded (default: $ANYGPT_HOME/serve).",
            ),
        ] = None,
        codec_options: dict[str, Any],
    ) -> None:
        try:
            import fastapi  # noqa: F401
            import uvicorn
        except ImportError as err:
            raise PluginError(
                f"anygpt serve needs {err.name}: pip install fastapi uvicorn python-multipart"
            ) from None
        from anygpt_cli.server.app import create_app, wrap
        from anygpt_cli.server.media import Limits, MediaStore
        from anygpt_cli.server.protocol import with_head_deadline
        from anygpt_cli.server.service import Service, Settings
        from anygpt_core.chat import TEMPLATES
        from anygpt_core.demo import anygpt_home

        if chat_template not in TEMPLATES:
            raise ConfigError(
                f"--chat-template {chat_template!r}: choose one of {', '.join(TEMPLATES)}"
            )
        finite = {
            "max-body-mb": max_body_mb,
            "request-timeout": request_timeout,
            "read-timeout": read_timeout,
        }
        for name, value in finite.items():
            if value != value or value in (float("inf"), float("-inf")):
                raise ConfigError(f"--{name}: must be a finite number")
        voices = _voices(voice)
        check_low_memory(quantize, offload)  # an unknown mode fails before loading
        check_decoding(config, plugins=plugins)
        url = check_engine(engine, vllm_url)
        sock = _bind(host, port)  # a taken port fails before the model loads
        limits = Limits(
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_audio_seconds=max_audio_seconds,
            max_image_pixels=max_image_pixels,
            read_timeout=read_timeout,
        )
        store = MediaStore(cache_dir or anygpt_home() / "serve", limits)
        try:
            gpt = load_model(
                plugins,
                model_name_or_path,
                device=device,
                dtype=dtype,
                quantize=quantize,
                offload=offload,
                codec_options=codec_options,
                output_dir=store.dir,  # nothing is saved: media go back in the responses
                instructions=instructions,
                vllm_url=url,  # with vLLM only the tokenizer loads here; vLLM generates
            )
        except BaseException:
            store.close()
            sock.close()
            raise
        gpt.engine.max_batch = max_batch
        settings = Settings(
            model_name=served_model_name or model_name_or_path or "anygpt-demo",
            api_key=api_key or None,
            max_queue=max_queue,
            request_timeout=request_timeout,
            voices=voices,
            template=chat_template,
            config=config,
        )
        service = Service(gpt, settings, store)
        application = wrap(create_app(service), service, limits)
        _log_requests()
        bound_host, bound_port = sock.getsockname()[:2]
        where = f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}"
        names = ", ".join(f"{i.name} {i.version or ''}".strip() for i in plugins.infos) or "none"
        server = uvicorn.Server(
            uvicorn.Config(
                application,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=int(request_timeout) + 5,
                http=with_head_deadline(read_timeout),
                log_level="warning",
            )
        )
        generation = f" on the vLLM server at {url}" if url else ""
        sys.stderr.write(
            f"Serving {settings.model_name}{generation} (plugins: {names}) on {where}"
            f"{' with an API key' if settings.api_key else ''}; Ctrl-C or SIGTERM stops it\n"
        )
        sys.stderr.flush()
        # uvicorn stops taking requests on SIGTERM, finishes those in flight, then raises the
        # signal again for the handler it found: this one, so the cache is cleaned and we exit 0
        previous = signal.signal(signal.SIGTERM, _stopped)
        try:
            server.run(sockets=[sock])
        except _Stop:
            sys.stderr.write("Stopped (SIGTERM) after the requests in flight finished\n")
        finally:
            signal.signal(signal.SIGTERM, previous)
            store.close()
            sock.close()


class _Stop(Exception):
    """SIGTERM arrived (and uvicorn has shut down gracefully)."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stop


def _log_requests() -> None:
    """One line per request on stderr (`anygpt.serve`), whatever the CLI's log level."""
    logger = logging.getLogger("anygpt.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
