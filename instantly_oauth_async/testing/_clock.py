"""A clock that moves only when told to, in the spirit of trio's ``MockClock``."""

from __future__ import annotations

import heapq
import itertools

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """Monotonic time that stands still until :meth:`advance` (or :meth:`jump`) moves it.

    Sleepers and deadlines registered through this clock wake when time passes their mark, in
    order. Pass it as ``clock=`` to ``OAuthManager`` or ``MemoryStore``.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._scopes: list[tuple[float, int, anyio.CancelScope]] = []

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.3f} sleepers={len(self._sleepers)}>"

    def monotonic(self) -> float:
        """This clock's seconds: moved only by :meth:`advance` and :meth:`jump`."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Return once this clock has been moved ``seconds`` on (at a checkpoint for 0 or less)."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), event))
        await event.wait()

    def deadline(self, seconds: float) -> anyio.CancelScope:
        """A cancel scope cancelled when this clock reaches ``seconds`` from now (at once for 0 or
        less).
        """
        scope = anyio.CancelScope()
        heapq.heappush(self._scopes, (self._now + seconds, next(self._seq), scope))
        if seconds <= 0:
            scope.cancel()
        return scope

    @property
    def next_wakeup(self) -> float | None:
        """The earliest time a sleeper or deadline is waiting for, if any."""
        marks = [h[0][0] for h in (self._sleepers, self._scopes) if h]
        return min(marks) if marks else None

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper (and cancel every deadline) now due."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()
        while self._scopes and self._scopes[0][0] <= self._now:
            heapq.heappop(self._scopes)[2].cancel()

    async def jump(self, seconds: float) -> None:
        """Advance, then let every task that woke run until all are blocked again."""
        self.advance(seconds)
        await anyio.wait_all_tasks_blocked()

    async def run_for(self, seconds: float) -> None:
        """Move time ``seconds`` on, waking each sleeper at its own time (unlike :meth:`jump`,
        which wakes everything due at the end)."""
        end = self._now + seconds
        await anyio.wait_all_tasks_blocked()
        while (mark := self.next_wakeup) is not None and mark <= end:
            await self.jump(max(0.0, mark - self._now))
        await self.jump(max(0.0, end - self._now))

    async def run_until_idle(self, *, limit: float = 3600.0) -> None:
        """Jump from wake-up to wake-up until nothing waits on this clock (or ``limit`` passes)."""
        end = self._now + limit
        await anyio.wait_all_tasks_blocked()
        while (mark := self.next_wakeup) is not None and mark <= end:
            await self.jump(max(0.0, mark - self._now))
