"""The `anygpt` command: plugins are discovered first, so each command shows their options."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any

import typer

from anygpt_cli.catalogue import KNOWN_PLUGINS, install_target, package_for_flag
from anygpt_core import __version__
from anygpt_core.errors import AnyGPTError, PluginError, first_line
from anygpt_core.plugins import PluginSet, discover

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
            raise PluginError(
                f"{flag} belongs to the plugin {package}: pip install {install_target(package)}"
            )


def build_app(plugins: PluginSet) -> typer.Typer:
    """The Typer application for the given plugin set."""
    from anygpt_cli import (
        chat,
        codec_cmds,
        data_cmd,
        eval_cmd,
        model_cmd,
        plugins_cmd,
        run,
        serve,
        train_cmd,
        web,
    )

    app = typer.Typer(
        name="anygpt",
        help="AnyGPT: one language model for text, images, speech and music as discrete tokens.",
        pretty_exceptions_enable=False,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="markdown",  # docstrings' paragraphs reflow to the terminal's width
    )

    @app.callback(invoke_without_command=True)
    def root(
        ctx: typer.Context,
        version: Annotated[
            bool, typer.Option("--version", help="Print the version and exit.", is_eager=True)
        ] = False,
        block_plugin: Annotated[
            list[str] | None,
            typer.Option(
                "--block-plugin", metavar="NAME", help="Do not load this plugin (repeatable)."
            ),
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
    serve.register(app, plugins)
    model_cmd.register(app, plugins)
    data_cmd.register(app, plugins)
    train_cmd.register(app, plugins)
    eval_cmd.register(app, plugins)
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
    # libraries' warnings (torch, transformers, ...) show with -v, not beside our one-line errors;
    # transformers logs through its own handler, or through ours where CI=1 (it propagates there)
    quiet = logging.NOTSET if verbose else logging.ERROR
    for name in ("py.warnings", *_LIBRARIES):
        logging.getLogger(name).setLevel(quiet)
    if not verbose:
        # a library imported later sets its own level from its variable (a user's value stands)
        for variable in _LIBRARIES.values():
            if variable:
                os.environ.setdefault(variable, "error")


#: Libraries whose loggers warn about their own deprecations, defaults and retries, and the
#: variable each reads its level from when it is first imported.
_LIBRARIES = {
    "transformers": "TRANSFORMERS_VERBOSITY",
    "diffusers": "DIFFUSERS_VERBOSITY",
    "huggingface_hub": "HF_HUB_VERBOSITY",
    "accelerate": "",
}


def report(err: AnyGPTError) -> int:
    """Print `Error: …` on stderr and return the error's exit code.

    In a multi-process launch every rank but the first names itself: `Error: rank 3: …`.
    """
    from anygpt_cli.launch import rank_prefix

    sys.stderr.write(f"Error: {rank_prefix()}{first_line(err)}\n")
    return err.exit_code


def _click_exceptions() -> Any:  # noqa: ANN401 - a module
    """Click's exception classes: typer vendors click from 0.2x on (`typer._click`)."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:
        return importlib.import_module("click.exceptions")


def _invoke(app: typer.Typer, args: list[str]) -> int:
    """Run the app; a usage error is one line on stderr (not a panel) and exit code 2."""
    errors = _click_exceptions()
    aborts = (typer.Abort, getattr(errors, "Abort", typer.Abort))  # click's own before 0.2x
    command = typer.main.get_command(app)
    _no_flag_metavars(command)
    try:
        result = command.main(args=args, prog_name="anygpt", standalone_mode=False)
    except errors.NoArgsIsHelpError as err:  # a group without a command: its help
        sys.stderr.write(err.format_message().rstrip() + "\n")
        return 2
    except errors.UsageError as err:
        where = f" (see {err.ctx.command_path} --help)" if err.ctx is not None else ""
        sys.stderr.write(f"Error: {_one_line(err.format_message())}{where}\n")
        return 2
    except aborts:
        raise KeyboardInterrupt from None
    except errors.ClickException as err:
        sys.stderr.write(f"Error: {_one_line(err.format_message())}\n")
        return int(err.exit_code)
    return result if isinstance(result, int) else 0


def _no_flag_metavars(command: Any) -> None:  # noqa: ANN401 - a click command or group
    """Flags take no value: `--help` shows none for them (Typer would show `<bool>`)."""
    help_option = command.get_help_option(command.context_class(command))  # made once, cached
    for param in [*command.params, help_option]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _no_flag_metavars(sub)


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "usage error"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: errors become one line on stderr and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("ANYGPT_DEBUG", "") not in {"", "0"}
    logging.captureWarnings(True)  # library warnings go through logging (shown with -v)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    try:
        plugins = discover(block=_blocked_from_argv(args), known=KNOWN_PLUGINS)
        _check_plugin_flags(args, plugins)
        app = build_app(plugins)
        code = _invoke(app, args)
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
        from anygpt_cli.launch import rank_prefix

        sys.stderr.write(
            f"internal error: {rank_prefix()}{type(err).__name__}: {first} "
            "(set ANYGPT_DEBUG=1 for a traceback)\n"
        )
        raise SystemExit(1) from None
    if code:
        raise SystemExit(code)
