"""The `anygpt` command: plugins are discovered first, so each command shows their options."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from anygpt_core import __version__
from anygpt_core.errors import AnyGPTError, PluginError, first_line
from anygpt_core.plugins import PluginSet, discover, package_for_flag

__all__ = ["build_app", "main"]


def _blocked_from_argv(argv: list[str]) -> list[str]:
    blocked = []
    for i, arg in enumerate(argv):
        if arg == "--block-plugin" and i + 1 < len(argv):
            blocked.append(argv[i + 1])
        elif arg.startswith("--block-plugin="):
            blocked.append(arg.split("=", 1)[1])
    return blocked


def _check_plugin_flags(argv: list[str], plugins: PluginSet) -> None:
    """A flag that belongs to a plugin which is not installed gets an error naming the plugin."""
    installed = {o.flag for o in plugins.options()}
    for arg in argv:
        if not arg.startswith("--"):
            continue
        flag = arg.split("=", 1)[0]
        package = package_for_flag(flag)
        if package and flag not in installed and not flag.startswith("--no-"):
            raise PluginError(f"{flag} belongs to the plugin {package}: pip install {package}")


def build_app(plugins: PluginSet) -> typer.Typer:
    """The Typer application for the given plugin set."""
    from anygpt_cli import (
        chat,
        codec_cmds,
        data_cmd,
        model_cmd,
        plugins_cmd,
        run,
        train_cmd,
        web,
    )

    app = typer.Typer(
        name="anygpt",
        help="AnyGPT: one language model for text, images, speech and music as discrete tokens.",
        pretty_exceptions_enable=False,
        no_args_is_help=True,
        add_completion=False,
    )

    @app.callback(invoke_without_command=True)
    def root(
        ctx: typer.Context,
        version: Annotated[
            bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)
        ] = False,
        block_plugin: Annotated[
            list[str] | None,
            typer.Option("--block-plugin", help="Do not load this plugin (repeatable)."),
        ] = None,
        verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
    ) -> None:
        if version:
            typer.echo(f"anygpt {__version__}")
            raise typer.Exit
        del block_plugin  # applied before the app was built
        _setup_logging(verbose)
        if ctx.invoked_subcommand is None:
            typer.echo(ctx.get_help())
            raise typer.Exit

    plugins_cmd.register(app, plugins)
    run.register(app, plugins)
    codec_cmds.register(app, plugins)
    chat.register(app, plugins)
    model_cmd.register(app, plugins)
    data_cmd.register(app, plugins)
    train_cmd.register(app, plugins)
    web.register(app, plugins)
    return app


def _setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    from anygpt_cli.console import stderr

    level = os.environ.get("ANYGPT_LOG_LEVEL", "").upper() or (
        "DEBUG" if verbose > 1 else "INFO" if verbose else "WARNING"
    )
    handler = RichHandler(console=stderr, show_time=False, show_path=False)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def report(err: AnyGPTError) -> int:
    """Print `Error: …` on stderr and return the error's exit code."""
    sys.stderr.write(f"Error: {first_line(err)}\n")
    return err.exit_code


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: errors become one line on stderr and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ANYGPT_DEBUG", "") not in {"", "0"}
    try:
        plugins = discover(block=_blocked_from_argv(args))
        _check_plugin_flags(args, plugins)
        app = build_app(plugins)
        app(args=args, prog_name="anygpt", standalone_mode=True)
    except AnyGPTError as err:
        if debug:
            raise
        raise SystemExit(report(err)) from None
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted\n")
        raise SystemExit(130) from None
    except Exception as err:
        if debug:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if type(err).__name__ == "OutOfMemoryError":  # torch's, on a GPU
            sys.stderr.write(
                f"Error: out of GPU memory ({first}); try --image-low-memory, another --device "
                "or a smaller --max-new-tokens\n"
            )
            raise SystemExit(1) from None
        sys.stderr.write(
            f"internal error: {type(err).__name__}: {first} (set ANYGPT_DEBUG=1 for a traceback)\n"
        )
        raise SystemExit(1) from None
