"""Where this process stands in a multi-process launch (torchrun, accelerate launch, mpirun)."""

from __future__ import annotations

import os

__all__ = ["launch_rank", "rank_prefix"]

#: The variables launchers set to a process's global rank (accelerate reads the same ones).
_RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")


def launch_rank() -> int:
    """This process's global rank; 0 when it was not started by a launcher."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def rank_prefix() -> str:
    """`rank N: ` for a process other than the first of a launch (its errors say who failed)."""
    rank = launch_rank()
    return f"rank {rank}: " if rank else ""
