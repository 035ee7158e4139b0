"""What codecs share: typed options that are also the CLI flags, and thread-safe lazy loading.

```python
class MusicOptions(CodecOptions):
    music_tokenizer_path: str = Field("facebook/encodec_32khz", description="EnCodec folder or hub id.")
    music_seconds: float | None = Field(20.0, gt=0, description="Longer input is cut to this.")

class MusicCodec(LazyCodec[MusicOptions]):
    Options = MusicOptions

    def _model(self) -> EncodecModel:
        return self.lazy("model", lambda: load(self.options.music_tokenizer_path))

MUSIC = ModalitySpec(..., options=MusicOptions.cli_options(), codec_factory=MusicCodec)
```

Building a codec stores its option values and does nothing else (discovery builds codecs
cheaply); they are validated on first use, so a bad value fails as one `ConfigError` line naming
its flag, before any weights load.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any, ClassVar, Generic, TypeVar, Union, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from anygpt_core.errors import ConfigError
from anygpt_core.spec import CodecOption

__all__ = ["CodecOptions", "LazyCodec"]

T = TypeVar("T")
OptionsT = TypeVar("OptionsT", bound="CodecOptions")

#: Python types of option fields -> `CodecOption.type`.
_KINDS: dict[type, str] = {str: "str", Path: "path", int: "int", float: "float", bool: "bool"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class CodecOptions(BaseModel):
    """A codec's options: each field is a command-line flag (`--` + name, `_` -> `-`).

    Subclass it per codec. A field has a `description` (its `--help` line), a default, and one of
    the types `str`, `Path`, `int`, `float`, `bool`, optionally `| None`; constraints (`gt=0`, a
    validator) are checked when the codec first reads its options.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def cli_options(cls) -> tuple[CodecOption, ...]:
        """The flags of these options, for `ModalitySpec.options`."""
        options = []
        for name, field in cls.model_fields.items():
            kind = field.annotation
            if get_origin(kind) in (Union, types.UnionType):
                kind = next(arg for arg in get_args(kind) if arg is not type(None))
            if kind not in _KINDS or not field.description:
                raise TypeError(
                    f"{cls.__name__}.{name}: an option needs a description and one of the types "
                    "str, Path, int, float, bool"
                )
            default = field.default
            options.append(
                CodecOption(
                    name=name,
                    help=field.description,
                    type=_KINDS[cast(type, kind)],
                    default=str(default) if isinstance(default, Path) else default,
                )
            )
        return tuple(options)

    @classmethod
    def parse(cls: type[OptionsT], values: Mapping[str, Any]) -> OptionsT:
        """Options from values by name; absent or None values take the field's default.

        Raises:
            ConfigError: `--music-seconds 0: Input should be greater than 0; …`, every bad value.
        """
        given = {k: v for k, v in values.items() if v is not None or k not in cls.model_fields}
        try:
            return cls.model_validate(given)
        except ValidationError as err:
            parts = []
            for item in err.errors():
                name = str(item["loc"][0]) if item["loc"] else "options"
                message = "unknown option" if item["type"] == "extra_forbidden" else item["msg"]
                parts.append(f"{_flag(name)} {given.get(name)}: {message}")
            raise ConfigError("; ".join(parts)) from err


class LazyCodec(Generic[OptionsT]):
    """Base of a codec: its options, parsed on first use, and weights loaded once per name.

    Args:
        options: option values by name (what `ModalitySpec.codec_factory` receives), or parsed
            options.
        **values: more values by name, e.g. `MusicCodec(music_tokenizer_path="tiny/")`.
    """

    #: The codec's options class.
    Options: ClassVar[type[CodecOptions]]

    def __init__(
        self,
        options: Mapping[str, Any] | CodecOptions | None = None,
        /,
        **values: Any,  # noqa: ANN401 - option values
    ) -> None:
        if isinstance(options, CodecOptions):
            options = options.model_dump()
        given = {**(options or {}), **values}
        # a path given as such is a path option's value (CLI values arrive as strings)
        self._values = {k: str(v) if isinstance(v, PurePath) else v for k, v in given.items()}
        self._parsed: OptionsT | None = None
        self._loaded: dict[str, Any] = {}
        self._lock = threading.RLock()

    @property
    def options(self) -> OptionsT:
        """The parsed options (`ConfigError` on a bad value, the first time they are read)."""
        if self._parsed is None:
            with self._lock:
                if self._parsed is None:
                    self._parsed = cast(OptionsT, self.Options.parse(self._values))
        return self._parsed

    def lazy(self, name: str, load: Callable[[], T]) -> T:
        """What `load` returns, loaded once under `name` however many threads ask at once.

        A failed load is not remembered: the next call tries again.
        """
        if name not in self._loaded:
            with self._lock:
                if name not in self._loaded:
                    self._loaded[name] = load()
        return cast(T, self._loaded[name])

    def is_loaded(self, name: str) -> bool:
        """Whether `lazy(name, ...)` has loaded its value."""
        return name in self._loaded

    def loaded_values(self) -> dict[str, Any]:
        """The values loaded so far by name (a copy), e.g. to move their modules between devices."""
        with self._lock:
            return dict(self._loaded)

    def forget(self, name: str) -> None:
        """Drop a loaded value (e.g. a part that a larger load now serves)."""
        with self._lock:
            self._loaded.pop(name, None)
