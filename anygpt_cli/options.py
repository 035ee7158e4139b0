"""Options contributed by plugins: added to a command's signature, so `--help` shows exactly them."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, get_type_hints

import typer
from rich.markup import escape

from anygpt_core.errors import ConfigError
from anygpt_core.spec import CodecOption

__all__ = ["with_codec_options"]

_TYPES: dict[str, type] = {"str": str, "path": Path, "int": int, "float": float, "bool": bool}


def _parameter(option: CodecOption, panel: str) -> inspect.Parameter:
    kind = _TYPES[option.type]
    if option.type == "bool":
        # One flag, no --x/--no-x pair: giving it flips the option's default (`--no-x` when the
        # default is on). The command sees True when the flag was given.
        flag = f"--no-{option.flag[2:]}" if option.default else option.flag
        info = typer.Option(flag, help=escape(option.help), rich_help_panel=panel)
        return inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, info],
        )
    # a path is checked where it is read, in its family's words (click's check would exit 2)
    info = typer.Option(
        option.flag, help=escape(option.help), rich_help_panel=panel, readable=False
    )
    return inspect.Parameter(
        option.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, info],
    )


#: A command function (returns nothing; typer reads its parameters).
Command = TypeVar("Command", bound=Callable[..., None])


def with_codec_options(
    options: list[CodecOption], panels: dict[str, str] | None = None
) -> Callable[[Command], Command]:
    """Add `options` to a command; the command receives their values as `codec_options` (a dict).

    Values the user did not give are left out, so codec defaults (or the demo's assets) apply.
    `panels` names the `--help` panel of each option (default: "Plugin options").
    """

    def decorate(func: Command) -> Command:
        names = [o.name for o in options]
        switches = {o.name: bool(o.default) for o in options if o.type == "bool"}

        @wraps(func)
        def command(**kwargs: Any) -> None:  # noqa: ANN401 - option values
            given: dict[str, Any] = {}
            for name in names:
                value = kwargs.pop(name)
                if name in switches:
                    if value:  # the flag was given: the opposite of the default
                        given[name] = not switches[name]
                elif value is not None:
                    if isinstance(value, float) and not math.isfinite(value):
                        flag = "--" + name.replace("_", "-")
                        raise ConfigError(f"{flag} {value}: expected a finite number")
                    given[name] = str(value) if isinstance(value, Path) else value
            func(codec_options=given, **kwargs)

        hints = get_type_hints(func, include_extras=True)
        signature = inspect.signature(func)
        params = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.name != "codec_options"
        ]
        params += [_parameter(o, (panels or {}).get(o.name, "Plugin options")) for o in options]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the new signature, not the wrapped one
        # Statically the same command; at run time typer reads `__signature__` (plugin options in,
        # `codec_options` out).
        return cast(Command, command)

    return decorate
