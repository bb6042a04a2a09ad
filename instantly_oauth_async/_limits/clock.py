"""Time as a parameter: everything that waits asks a :class:`Clock`.

The library never reads ``time`` directly outside :class:`SystemClock`, so tests can hand in
``instantly_oauth_async.testing.FakeClock`` and move time by hand.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Monotonic seconds, a way to sleep on them, and a cancel scope with a deadline on them."""

    def monotonic(self) -> float:
        """Seconds of this clock now; never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock (at once for 0 or less)."""
        ...

    def deadline(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope that cancels itself ``seconds`` from now, by this clock."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` (asyncio's loop time) and ``anyio.sleep``."""

    #: ``time.monotonic()`` itself: no frame of ours around it (several calls a read).
    monotonic = staticmethod(time.monotonic)

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep(seconds)``; at once for 0 or less."""
        await anyio.sleep(max(0.0, seconds))

    def deadline(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope that cancels itself ``seconds`` from now, on the event loop's clock."""
        return anyio.CancelScope(deadline=anyio.current_time() + seconds)

    def __repr__(self) -> str:
        return "SystemClock()"
