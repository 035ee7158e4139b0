"""`anygpt serve`: the model behind an OpenAI-compatible HTTP API (the `serve` extra)."""

from __future__ import annotations

import importlib.util
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from anygpt_cli.common import DecodingFlags, EngineChoice, InstructionsFile, ModelChoice, load_model
from anygpt_cli.options import with_codec_options, with_group
from anygpt_core.errors import ConfigError, InputError, PluginError
from anygpt_core.files import file_problem

if TYPE_CHECKING:
    from types import ModuleType

    from starlette.types import ASGIApp

    from anygpt_cli.server.media import Limits, MediaStore
    from anygpt_cli.server.service import Settings
    from anygpt_core.api import AnyGPT
    from anygpt_core.plugins import PluginSet

__all__ = ["register"]

HELP = """Serve the model over HTTP with OpenAI's API: chat completions (text, images, speech and
music in and out, streaming), /v1/audio/speech (streamed too), /v1/audio/transcriptions,
/v1/images/generations, /v1/audio/generations (text to music) and the /v1/realtime WebSocket
(spoken turns, PCM16 at 24 kHz). Requests in flight are generated together.
"""


@dataclass(frozen=True)
class ServerOptions:
    """How `anygpt serve` listens, admits and limits requests (`--host` ... `--cache-dir`)."""

    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1"
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")
    ] = 8000
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="ANYGPT_API_KEY",
            help="Require 'Authorization: Bearer KEY' on /v1, /v1/realtime too (or set "
            "ANYGPT_API_KEY).",
            show_default=False,
        ),
    ] = None
    served_model_name: Annotated[
        str | None,
        typer.Option(
            "--served-model-name",
            help="The model id clients send (default: the model path or hub id; anygpt-demo).",
        ),
    ] = None
    voice: Annotated[
        list[str] | None,
        typer.Option(
            "--voice",
            metavar="NAME=FILE",
            help="A named voice prompt (repeatable); clients pick it by name.",
        ),
    ] = None
    chat_template: Annotated[
        str, typer.Option("--chat-template", help="mmgpt (the reference chat) or anygpt.")
    ] = "mmgpt"
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, max=256, help="Most rows generated together.")
    ] = 16
    max_queue: Annotated[
        int,
        typer.Option(
            "--max-queue", min=1, help="Most requests in the server; beyond, 429 Retry-After."
        ),
    ] = 64
    request_timeout: Annotated[
        float,
        typer.Option(
            "--request-timeout", min=1, max=86400, help="Seconds a request may take (504)."
        ),
    ] = 300.0
    read_timeout: Annotated[
        float,
        typer.Option(
            "--read-timeout",
            min=0.1,
            max=3600,
            help="Seconds a client has to send a request's head, and then its body (408).",
        ),
    ] = 30.0
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", min=0.001, max=4096, help="Request body limit.")
    ] = 25.0
    max_audio_seconds: Annotated[
        float,
        typer.Option("--max-audio-seconds", min=0.1, max=3600, help="Per audio input."),
    ] = 60.0
    max_image_pixels: Annotated[
        int,
        typer.Option("--max-image-pixels", min=1, help="Per image input (width × height)."),
    ] = 16_777_216
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Where request media wait while encoded (default: $ANYGPT_HOME/serve).",
        ),
    ] = None

    def check(self) -> dict[str, Path]:
        """Validate the options before anything loads; the named voices' files.

        Raises:
            ConfigError: an unknown chat template, or a limit that is not a finite number.
            InputError: a `--voice` that is not NAME=FILE, or whose file cannot be read.
        """
        from anygpt_core.chat import TEMPLATES

        if self.chat_template not in TEMPLATES:
            raise ConfigError(
                f"--chat-template {self.chat_template!r}: choose one of {', '.join(TEMPLATES)}"
            )
        finite = {
            "max-body-mb": self.max_body_mb,
            "request-timeout": self.request_timeout,
            "read-timeout": self.read_timeout,
        }
        for name, value in finite.items():
            if value != value or value in (float("inf"), float("-inf")):
                raise ConfigError(f"--{name}: must be a finite number")
        return _voices(self.voice)

    def limits(self) -> Limits:
        """What one request may send."""
        from anygpt_cli.server.media import Limits

        return Limits(
            max_body_bytes=int(self.max_body_mb * 1024 * 1024),
            max_audio_seconds=self.max_audio_seconds,
            max_image_pixels=self.max_image_pixels,
            read_timeout=self.read_timeout,
        )


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
    @ModelChoice.options()
    @DecodingFlags.options(seed=False, flags=False)
    @EngineChoice.options()
    @with_group(ServerOptions)
    def serve_command(
        *,
        model: ModelChoice,
        decoding: DecodingFlags,
        engine: EngineChoice,
        instructions: InstructionsFile = None,
        server: ServerOptions,
        codec_options: dict[str, Any],
    ) -> None:
        uvicorn = _import_server()
        voices = server.check()
        model.check()  # an unknown mode fails before loading
        decoding.check(plugins)
        url = engine.url()
        sock = _bind(server.host, server.port)  # a taken port fails before the model loads
        limits = server.limits()
        store = _store(server, limits)
        try:
            gpt = load_model(
                plugins,
                model,
                codec_options=codec_options,
                output_dir=store.dir,  # nothing is saved: media go back in the responses
                instructions=instructions,
                vllm_url=url,  # with vLLM only the tokenizer loads here; vLLM generates
            )
        except BaseException:
            store.close()
            sock.close()
            raise
        gpt.engine.max_batch = server.max_batch
        settings = _settings(server, model, decoding, voices)
        application = _application(gpt, settings, store, limits)
        _log_requests()
        _announce(settings, plugins, sock, url)
        _run(uvicorn, application, server, sock=sock, store=store)


def _import_server() -> ModuleType:
    """uvicorn, once FastAPI and the server's modules are known to import (the `serve` extra)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise PluginError(
            f"anygpt serve needs {err.name}: pip install fastapi uvicorn python-multipart"
        ) from None
    import anygpt_cli.server.app  # noqa: F401 - the server's own imports fail before loading

    if not any(importlib.util.find_spec(name) for name in ("websockets", "wsproto")):
        sys.stderr.write("Note: /v1/realtime needs a WebSocket library: pip install websockets\n")
    return uvicorn


def _store(server: ServerOptions, limits: Limits) -> MediaStore:
    from anygpt_cli.server.media import MediaStore
    from anygpt_core.demo import anygpt_home

    return MediaStore(server.cache_dir or anygpt_home() / "serve", limits)


def _settings(
    server: ServerOptions, model: ModelChoice, decoding: DecodingFlags, voices: dict[str, Path]
) -> Settings:
    from anygpt_cli.server.service import Settings

    return Settings(
        model_name=server.served_model_name or model.model_name_or_path or "anygpt-demo",
        api_key=server.api_key or None,
        max_queue=server.max_queue,
        request_timeout=server.request_timeout,
        voices=voices,
        template=server.chat_template,
        config=decoding.config,
    )


def _application(gpt: AnyGPT, settings: Settings, store: MediaStore, limits: Limits) -> ASGIApp:
    """The HTTP API of the loaded model behind its gate."""
    from anygpt_cli.server.app import create_app, wrap
    from anygpt_cli.server.service import Service

    service = Service(gpt, settings, store)
    return wrap(create_app(service), service, limits)


def _announce(settings: Settings, plugins: PluginSet, sock: socket.socket, url: str | None) -> None:
    """One line on stderr: what is served, where, and how to stop it."""
    bound_host, bound_port = sock.getsockname()[:2]
    where = f"http://{bound_host if ':' not in bound_host else f'[{bound_host}]'}:{bound_port}"
    names = ", ".join(f"{i.name} {i.version or ''}".strip() for i in plugins.infos) or "none"
    generation = f" on the vLLM server at {url}" if url else ""
    sys.stderr.write(
        f"Serving {settings.model_name}{generation} (plugins: {names}) on {where}"
        f"{' with an API key' if settings.api_key else ''}; Ctrl-C or SIGTERM stops it\n"
    )
    sys.stderr.flush()


def _run(
    uvicorn: ModuleType,
    application: ASGIApp,
    server: ServerOptions,
    *,
    sock: socket.socket,
    store: MediaStore,
) -> None:
    """Serve on `sock` until Ctrl-C or SIGTERM; then clean the media cache."""
    from anygpt_cli.server.protocol import with_head_deadline

    config = uvicorn.Config(
        application,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(server.request_timeout) + 5,
        http=with_head_deadline(server.read_timeout),
        log_level="warning",
    )
    # uvicorn stops taking requests on SIGTERM, finishes those in flight, then raises the
    # signal again for the handler it found: this one, so the cache is cleaned and we exit 0
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        uvicorn.Server(config).run(sockets=[sock])
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
