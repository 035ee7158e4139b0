"""Paths the user names: input files that must be readable, output locations that must be writable.

Every problem is one line naming the path and what is wrong with it (a directory given as a file,
a FIFO, a permission, a full or read-only disk), never "no such file" for all of them. Our own
temporary names (`.tmp-<16 hex digits><suffix>` beside outputs) left by a killed run are removed
once they are stale; nothing else is ever deleted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from anygpt_core.errors import InputError, OutputError

__all__ = [
    "STALE_SECONDS",
    "TEMP_NAME",
    "WRITE_ERRNOS",
    "check_input_file",
    "check_output_dir",
    "file_problem",
    "refuse_overwriting_input",
    "remove_stale",
    "same_file",
    "write_bytes",
    "write_failure",
]

#: The names our atomic writers give temporary files (tasks.py); nothing else is ever cleaned up.
TEMP_NAME = re.compile(r"^\.tmp-[0-9a-f]{16}(\.[A-Za-z0-9]{1,8})?$")

#: A temporary file or folder of ours untouched this long belongs to a run that was killed:
#: writers hold one for the seconds a write takes (media are encoded in memory first).
STALE_SECONDS = 600.0

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a parent is not a directory",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "name too long",
}


#: errnos that mean "this location cannot take a write": full, read-only, not permitted.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def file_problem(path: Path) -> str | None:
    """What keeps `path` from being read as a file, in a few words; None when it can be."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except NotADirectoryError:
        return "no such file (a parent is not a directory)"
    except PermissionError:
        return "permission denied"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not stat.S_ISREG(mode):
        return f"is {_kind(mode)}, not a file"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def check_input_file(path: Path | str, *, what: str = "") -> Path:
    """`path` (with `~` expanded) if it is a readable regular file.

    Raises:
        InputError: `PATH: no such file`, `PATH: is a directory, not a file`, `PATH: permission
            denied`, ... (`what` says which input it is, e.g. "voice prompt").
    """
    path = Path(path).expanduser()
    problem = file_problem(path)
    if problem is not None:
        raise InputError(f"{path}: {problem}" + (f" ({what})" if what else ""))
    return path


def write_failure(path: Path, err: OSError) -> OutputError:
    """One line for a failed write: the path and the reason (a full disk says so)."""
    reason = _REASONS.get(err.errno or 0) or err.strerror or str(err) or type(err).__name__
    return OutputError(f"{path}: cannot write ({reason})")


def check_output_dir(directory: Path) -> Path:
    """Make sure files can be written in `directory`, before any work; nothing is created.

    An existing directory gets a 4 KiB probe file, written, synced and removed, so a full or
    read-only disk or a missing permission is found before a model loads, not after generating;
    stale temporary files of our own killed runs in it are removed (`remove_stale`). A missing
    one is checked where it would be created: its nearest existing parent must be a directory
    this process may write, on a filesystem that is writable and not full.

    Raises:
        OutputError: one line naming the directory and the problem.
    """
    directory = Path(directory).expanduser()
    if directory.is_dir():
        probe = directory / f".tmp-{os.urandom(8).hex()}.probe"
        try:
            write_bytes(probe, b"\0" * 4096)
        except OSError as err:
            raise write_failure(directory, err) from err
        finally:
            with contextlib.suppress(OSError):  # a read-only disk refuses even this
                probe.unlink(missing_ok=True)
        remove_stale(directory)
        return directory
    if directory.exists():
        raise OutputError(f"{directory}: not a directory (choose another --output-dir)")
    parent = directory.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{directory}: cannot be created, {parent} is not a directory")
    problem = _unwritable(parent)
    if problem is not None:
        raise OutputError(f"{directory}: cannot be created in {parent} ({problem})")
    return directory


def _unwritable(directory: Path) -> str | None:
    """Why a new entry cannot be made in `directory`, or None, without writing anything."""
    try:
        info = os.statvfs(directory)
    except OSError as err:
        return err.strerror or str(err)
    if info.f_flag & os.ST_RDONLY:
        return _REASONS[errno.EROFS]
    if info.f_bavail * info.f_frsize < 4096:
        return _REASONS[errno.ENOSPC]
    if not os.access(directory, os.W_OK | os.X_OK):
        return _REASONS[errno.EACCES]
    return None


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` and sync it, so a full disk fails here (not at a later close)."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def remove_stale(
    directory: Path,
    *,
    matches: Callable[[str], bool] = lambda name: TEMP_NAME.match(name) is not None,
    age: float = STALE_SECONDS,
) -> list[Path]:
    """Remove entries of `directory` named as our temporaries and untouched for `age` seconds.

    Only names `matches` accepts are considered (default: `TEMP_NAME`), so nothing of the user's
    is touched; fresh ones may belong to a run in progress and are kept. Returns what was removed.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        try:
            if not matches(entry.name) or now - entry.stat(follow_symlinks=False).st_mtime < age:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
        removed.append(Path(entry.path))
    return removed


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file (the same path, a symlink to it or a hard link)."""
    try:
        return first.resolve() == second.resolve() or os.path.samefile(first, second)
    except OSError:
        return False


def refuse_overwriting_input(inputs: list[Path], out: Path) -> None:
    """Refuse an output that is one of the inputs, before anything touches it.

    Raises:
        InputError: `out` is an input (the same path, a symlink or a hard link to it).
    """
    for source in inputs:
        if same_file(source, out):
            raise InputError(f"{out}: the output is the input {source}; choose another file")
