"""The HTTP/1.1 protocol of uvicorn with a deadline on each request head.

uvicorn times out a connection that sits idle between requests, but one that sends a request's
head a byte at a time is never timed out: every byte cancels the idle timer. Such a client holds
a connection (and a file descriptor) for as long as it likes. Here each connection has
`read_timeout` seconds from its start, or from its last answer, to complete the next request's
head; then it is closed. The body's deadline is the gate's (`anygpt_cli.server.app`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

__all__ = ["with_head_deadline"]


def with_head_deadline(read_timeout: float) -> type[H11Protocol]:
    """The h11 protocol of uvicorn, closing connections whose request head is late (`http=`)."""

    class HeadDeadline(H11Protocol):
        deadline: asyncio.TimerHandle | None = None
        waiting_after: RequestResponseCycle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            self.waiting_after = self.cycle  # a new head makes a new cycle
            self.deadline = self.loop.call_later(read_timeout, self._late)

        def _late(self) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if self.cycle is self.waiting_after and idle and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadline
