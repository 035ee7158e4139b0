"""The seed's instruction format (`source|target|payload[|condition]`) and safe output names."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from anygpt_core.errors import InputError, OutputError
from anygpt_core.files import write_failure

__all__ = [
    "Task",
    "atomic_output",
    "atomic_write",
    "output_name",
    "parse_instruction",
    "require_utf8",
]

_MODALITY = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Task:
    """One request: turn `payload` (text, or a file path) of `source` into `target`.

    `condition` is an optional file steering the target's decoder (a voice prompt for speech).
    """

    source: str
    target: str
    payload: str
    condition: str | None = None

    @property
    def instruction(self) -> str:
        """The task in the seed's format."""
        parts = [self.source, self.target, self.payload]
        return "|".join([*parts, self.condition] if self.condition else parts)


def parse_instruction(line: str) -> Task:
    """Parse `source|target|payload[|condition]`, e.g. `text|image|a red bus`, `speech|text|a.wav`.

    Text payloads may contain `|` when source and target are given: a text-to-speech line keeps its
    last field as a voice prompt if it names an existing file; one that looks like a path (a
    folder in it, or a file suffix such as `.wav`) and does not exist is an error, not text.

    Raises:
        InputError: fewer than three fields, a malformed modality name, an empty payload, bytes
            that are not UTF-8, or a voice prompt that does not exist.
    """
    require_utf8(line)
    fields = line.strip().split("|")
    if len(fields) < 3:
        raise InputError(
            f"cannot parse {line.strip()[:60]!r}: expected source|target|input, e.g. 'text|image|a red bus'"
        )
    source, target = fields[0].strip().lower(), fields[1].strip().lower()
    for name in (source, target):
        if not _MODALITY.match(name):
            raise InputError(f"cannot parse {line.strip()[:60]!r}: {name!r} is not a modality name")
    rest = fields[2:]
    condition = None
    if source != "text":
        if len(rest) > 2:
            raise InputError(
                f"cannot parse {line.strip()[:60]!r}: too many fields for a file input"
            )
        payload = rest[0].strip()
        condition = rest[1].strip() or None if len(rest) == 2 else None
    elif len(rest) > 1 and target != "text" and Path(rest[-1].strip()).expanduser().is_file():
        payload, condition = "|".join(rest[:-1]).strip(), rest[-1].strip()
    elif len(rest) > 1 and target != "text" and _looks_like_path(rest[-1].strip()):
        raise InputError(
            f"{rest[-1].strip()}: no such file (the voice prompt of {line.strip()[:60]!r})"
        )
    elif len(rest) > 1 and target != "text" and rest[-1].strip() == "":
        payload = "|".join(rest[:-1]).strip()
    else:
        payload = "|".join(rest).strip()
    if not payload:
        raise InputError(f"cannot parse {line.strip()[:60]!r}: the input field is empty")
    return Task(source, target, payload, condition)


_PATH_LIKE = re.compile(r"^\S*\.[A-Za-z][A-Za-z0-9]{1,4}$")


def _looks_like_path(field: str) -> bool:
    """`voic.wav`, `~/v.flac`, `a/b`: a field meant as a file, not words of text."""
    if not field or any(c.isspace() for c in field):
        return False
    return "/" in field or os.sep in field or field.startswith("~") or bool(_PATH_LIKE.match(field))


def require_utf8(text: str, *, what: str = "") -> str:
    """`text` if it holds only characters; bytes that were not UTF-8 are an error.

    Python keeps such bytes of an argument or a line as lone surrogates, which a tokenizer
    cannot take; this says where the first one is instead.

    Raises:
        InputError: the first byte that is not UTF-8 and its position.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(text[err.start])  # U+DC80..U+DCFF: the byte Python could not decode
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        shown = text[: err.start][-40:]
        raise InputError(
            f"{what + ': ' if what else ''}{bad} at character {err.start + 1} is not UTF-8 "
            f"(after {shown!r}); save the text as UTF-8"
        ) from None
    return text


def output_name(payload: str, suffix: str, *, when: datetime | None = None, limit: int = 50) -> str:
    """A file name from the prompt and time (as the seed names outputs), made safe.

    Separators, `..`, control and shell-special characters become `_`; the stem is at most `limit`
    characters; the result never leaves the output directory.
    """
    stem = Path(payload).stem if os.sep in payload or Path(payload).suffix else payload
    stem = re.sub(r"[^\w\-]+", "_", stem, flags=re.UNICODE).strip("_.")[:limit] or "output"
    stamp = (when or datetime.now()).strftime("%m%d_%H%M%S")
    return f"{stem}_{stamp}{suffix}"


def atomic_output(directory: Path, name: str, write: Callable[[Path], object]) -> Path:
    """Write a new file `directory/name` atomically through `write(tmp_path)`; never overwrite.

    A clash gets `-1`, `-2`, … before the suffix. The temporary file keeps the suffix, so writers
    that pick the format from it work; it is removed if `write` fails or is interrupted.

    Raises:
        OutputError: the directory cannot be created or written (path and reason, e.g. a full disk).
    """
    base = Path(name)
    if base.name != name or name in {"", ".", ".."}:
        raise InputError(f"{name!r}: output names must not contain directories")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_failure(directory, err) from err
    claimed: list[Path] = []
    final = directory / name
    try:
        tmp = _temp_beside(directory, base.suffix, claimed)
        write(tmp)
        for attempt in range(1000):
            stem = base.stem if attempt == 0 else f"{base.stem}-{attempt}"
            final = directory / f"{stem}{base.suffix}"
            try:
                os.link(tmp, final)  # fails if `final` exists: no overwrite race
            except FileExistsError:
                continue
            except OSError as err:  # no hard links here: claim the name exclusively, then replace
                if err.errno in _FULL:
                    raise
                try:
                    os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue
                os.replace(tmp, final)
            return final
        raise InputError(f"{directory}: too many files named {name}")
    except OSError as err:
        raise write_failure(final, err) from err
    finally:
        for path in claimed:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """Write exactly `path` through `write(tmp_path)` and rename it into place atomically.

    Raises:
        InputError: `path` exists and `overwrite` is False, or its directory is missing.
        OutputError: it cannot be written (path and reason, e.g. a full disk).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; use --force to overwrite")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; name a file to write")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent}: no such output directory")
    claimed: list[Path] = []
    try:
        tmp = _temp_beside(path.parent, path.suffix, claimed)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise write_failure(path, err) from err
    finally:
        for temp in claimed:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
    return path


#: errnos a fallback must not retry: the disk is full or read-only.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _temp_beside(directory: Path, suffix: str, claimed: list[Path]) -> Path:
    """A new empty temporary file in `directory`, with the mode a new file gets (not mkstemp's 0600).

    Its path is put in `claimed` before it is created, so the caller's cleanup removes it even
    when an interrupt (Ctrl-C) lands between its creation and this function returning.
    Outputs are renamed from it, so they must be readable as any file the user creates would be:
    the file is created with mode 0666 and the kernel applies the process's umask, so nothing
    process-wide is read or changed (other threads may be writing files at the same time).
    """
    for _ in range(100):
        path = directory / f".tmp-{secrets.token_hex(8)}{suffix}"
        claimed.append(path)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            claimed.remove(path)  # someone else's: never ours to remove
            continue
        return path
    raise OutputError(f"{directory}: cannot create a temporary file")
