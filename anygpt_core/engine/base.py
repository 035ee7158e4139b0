"""The `Engine` protocol: what `AnyGPT` runs its requests on."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from anygpt_core.engine.batcher import Stop
    from anygpt_core.engine.events import Event, Request

__all__ = ["Engine"]


@runtime_checkable
class Engine(Protocol):
    """Runs requests under the span rules for any number of callers (threads) at once.

    `LocalEngine` (a model in this process, batched) and `VLLMEngine` (a vLLM server) satisfy it.

    Attributes:
        max_batch: the most requests it runs at once (rows of a batch, or concurrent streams).
    """

    max_batch: int

    def check(self, request: Request) -> None:
        """Raise `ConfigError` / `GenerationError` for a request that cannot run."""

    def submit(
        self, requests: Sequence[Request], *, stop: Stop | None = None
    ) -> Generator[tuple[int, Event], None, None]:
        """Queue `requests`; yield `(request index, event)` as they are generated.

        Closing the iterator early cancels what is still running; so does `stop` (its flag,
        or `DeadlineError` past its deadline).
        """
        ...
