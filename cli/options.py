"""Options contributed by plugins: added to a command's signature, so `--help` shows exactly them."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.markup import escape

from anygpt_core.spec import CodecOption

__all__ = ["with_codec_options"]

_TYPES: dict[str, type] = {"str": str, "path": Path, "int": int, "float": float, "bool": bool}


def _parameter(option: CodecOption) -> inspect.Parameter:
    kind = _TYPES[option.type]
    info = typer.Option(option.flag, help=escape(option.help), rich_help_panel="Plugin options")
    if option.type == "bool":
        flag = option.flag
        info = typer.Option(
            f"{flag}/--no-{flag[2:]}", help=escape(option.help), rich_help_panel="Plugin options"
        )
        return inspect.Parameter(
            option.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=bool(option.default),
            annotation=Annotated[bool, info],
        )
    return inspect.Parameter(
        option.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[kind | None, info],  # type: ignore[valid-type]
    )


def with_codec_options(
    options: list[CodecOption],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add `options` to a command; the command receives their values as `codec_options` (a dict).

    Values the user did not give are left out, so codec defaults (or the demo's assets) apply.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        names = [o.name for o in options]
        defaults = {o.name: o.default for o in options if o.type == "bool"}

        @wraps(func)
        def command(**kwargs: Any) -> Any:  # noqa: ANN401 - whatever the command returns
            given = {}
            for name in names:
                value = kwargs.pop(name)
                if value is not None and value != defaults.get(name):
                    given[name] = str(value) if isinstance(value, Path) else value
            return func(codec_options=given, **kwargs)

        hints = get_type_hints(func, include_extras=True)
        signature = inspect.signature(func)
        params = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.name != "codec_options"
        ]
        params += [_parameter(o) for o in options]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the new signature, not the wrapped one
        return command

    return decorate
