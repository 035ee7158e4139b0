"""A thread that waits for another hands back its idle OpenMP helpers first.

PyTorch's CPU operations run on OpenMP, GNU libgomp in the Linux wheels. Every thread that runs a
parallel operation gets its own team of helper threads, and keeps it after use. While the process
holds more such threads than the machine has cores, libgomp stops letting helpers spin for the next
piece of work (its "throttled" spin): they sleep after each one, and every operation pays to wake
them. Idle teams count too. On a 2-core machine a matrix product of a small model's decode step
took 21 µs instead of 10 µs while another thread's idle team existed, and the AnyGPT-shaped model
decoded 2.6 times slower one by one after the engine's worker had run once.

The engine's threads run torch in turn: a caller encodes its inputs and waits, the worker generates
and waits for requests, a decode stage decodes spans and waits for the next. Each calls `release()`
before it waits, so a team exists only on threads that are working. `release` is libgomp's
`omp_pause_resource_all` (OpenMP 5.0), which lets the calling thread's helpers exit; the next
parallel operation on that thread starts them again, with the same thread count, so results are
unchanged. With another OpenMP runtime (LLVM's, Intel's), or none found, it does nothing: their
pause is not per thread, and their behaviour here was not measured.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["release", "take"]

T = TypeVar("T")

#: omp_pause_soft: the runtime may let go of resources it can recreate.
_PAUSE_SOFT = 1


def release() -> None:
    """Let this thread's idle OpenMP helper threads exit (libgomp only; cheap without a team).

    Call it before the thread blocks while other threads compute. Never call it between two
    operations of one computation: the helpers would start again at once.
    """
    if "torch" not in sys.modules:  # no torch, no team of its own (and no import on a wait)
        return
    pause = _libgomp_pause()
    if pause is not None:
        pause(_PAUSE_SOFT)


def take(source: queue.SimpleQueue[T]) -> T:
    """The next item of `source`; a thread that has to wait for it calls `release` first."""
    try:
        return source.get_nowait()
    except queue.Empty:
        release()
        return source.get()


@functools.cache
def _libgomp_pause() -> Callable[[int], int] | None:
    """Libgomp's `omp_pause_resource_all`, from the copy torch loaded; None where there is none."""
    import torch  # noqa: F401 - loads its OpenMP runtime, which is what is looked up

    if not hasattr(os, "RTLD_NOLOAD"):  # Windows: torch uses MSVC's OpenMP
        return None
    for candidate in _loaded_libgomp():
        try:
            lib = ctypes.CDLL(candidate, mode=os.RTLD_NOLOAD)
            pause = lib.omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes = [ctypes.c_int]
        pause.restype = ctypes.c_int
        return pause
    return None


def _loaded_libgomp() -> list[str]:
    """Paths (or the soname) of the libgomp copies mapped into this process (Linux)."""
    names = ["libgomp.so.1"]
    maps = Path("/proc/self/maps")
    if maps.is_file():
        for line in maps.read_text().splitlines():
            fields = line.split(maxsplit=5)  # address, perms, offset, device, inode[, path]
            path = fields[5] if len(fields) == 6 else ""
            if Path(path).name.startswith("libgomp") and path not in names:
                names.insert(0, path)  # the path itself: an auditwheel copy has another soname
    return names
