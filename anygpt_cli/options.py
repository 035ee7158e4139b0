"""Options added to a command's signature, so `--help` shows exactly them.

Two kinds: the options plugins contribute (`with_codec_options`, a dict of the values given), and a
group of shared options declared once as a dataclass whose fields are Typer options (`with_group`,
one object of the group).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Collection
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, get_type_hints

import typer
from rich.markup import escape

from anygpt_core.errors import ConfigError
from anygpt_core.spec import CodecOption

__all__ = ["with_codec_options", "with_group"]

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


def _replace_parameter(
    func: Command,
    command: Callable[..., None],
    placeholder: Callable[[inspect.Parameter, Any], bool],
    added: list[inspect.Parameter],
) -> Command:
    """`command` (which wraps `func`) with func's signature, its placeholder replaced by `added`.

    `placeholder(parameter, hint)` picks the parameter. Statically the command is still `func`;
    at run time typer reads `__signature__`.
    """
    hints = get_type_hints(func, include_extras=True)
    signature = inspect.signature(func)
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        hint = hints.get(param.name, param.annotation)
        params += added if placeholder(param, hint) else [param.replace(annotation=hint)]
    command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # type: ignore[attr-defined] # typer reads the new signature
    return cast(Command, command)


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

        added = [_parameter(o, (panels or {}).get(o.name, "Plugin options")) for o in options]
        return _replace_parameter(func, command, lambda p, _: p.name == "codec_options", added)

    return decorate


def with_group(
    group: type[Any], *, leave_out: Collection[str] = ()
) -> Callable[[Command], Command]:
    """Put the options of `group` where the command has a parameter typed `group`; pass one object.

    `group` is a dataclass whose fields are Typer options (`Annotated[..., typer.Option(...)]` with
    a default): they are declared once and shown by `--help` in the command's place and order.
    Fields in `leave_out` are not offered; the object holds their defaults.
    """
    hints = get_type_hints(group, include_extras=True)
    fields = [f for f in dataclasses.fields(group) if f.name not in leave_out]
    added = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name]
        )
        for f in fields
    ]

    def decorate(func: Command) -> Command:
        name = next(n for n, hint in get_type_hints(func).items() if hint is group)

        @wraps(func)
        def command(**kwargs: Any) -> None:  # noqa: ANN401 - option values
            values = {f.name: kwargs.pop(f.name) for f in fields}
            func(**{name: group(**values)}, **kwargs)

        return _replace_parameter(func, command, lambda _, hint: hint is group, added)

    return decorate
