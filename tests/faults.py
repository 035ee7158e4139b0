"""Helpers of the fault suite: a full filesystem, a read-only one, old timestamps, live children."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["age", "children", "full_disk", "gone", "mounted_tmpfs", "read_only_dir"]


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@contextlib.contextmanager
def mounted_tmpfs(target: Path, options: str = "size=256k") -> Iterator[bool]:
    """Mount a small tmpfs on `target` where this machine allows it; yields whether it did."""
    target.mkdir(parents=True, exist_ok=True)
    ok = _mount(target, options)
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def fill(directory: Path) -> None:
    """Write a filler file until the filesystem under `directory` has no space left."""
    fd = os.open(directory / "filler", os.O_CREAT | os.O_WRONLY)
    try:
        with pytest.raises(OSError, match="No space left") as full:
            _write_forever(fd)
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC


def _write_forever(fd: int) -> None:
    while True:
        os.write(fd, b"\0" * 4096)


def enospc(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def full_disk(target: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on a full filesystem: a tiny tmpfs filled up where mounting is allowed, else
    (a stub) every write of ours there fails with ENOSPC, as the kernel would report it."""
    with mounted_tmpfs(target, "size=64k") as ok:
        if ok:
            fill(target)
        else:
            import anygpt_core.api
            import anygpt_core.files

            monkeypatch.setattr(anygpt_core.files, "write_bytes", enospc)
            monkeypatch.setattr(anygpt_core.api, "write_bytes", enospc)
        yield target


@contextlib.contextmanager
def read_only_dir(target: Path) -> Iterator[Path]:
    """A directory no file can be written in: a read-only tmpfs (root), or mode 0500."""
    if os.geteuid() == 0:
        with mounted_tmpfs(target, "size=64k,ro") as ok:
            if not ok:
                pytest.skip("root ignores permissions and no read-only tmpfs can be mounted here")
            yield target
        return
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o500)
    try:
        yield target
    finally:
        target.chmod(0o700)


def age(path: Path, seconds: float) -> None:
    """Make `path` look untouched for `seconds`."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}
