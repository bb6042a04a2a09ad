"""When a waiting task wakes: at the time it sleeps towards, or sooner when something due
earlier is queued (the poller's scheduler and its deadline reaper each sleep on one)."""

from __future__ import annotations

import math

import anyio

from .._limits.clock import Clock

__all__ = ["Alarm"]


class Alarm:
    """A sleep until a time on the manager's clock, cut short by :meth:`ring`."""

    __slots__ = ("_clock", "_wakeup")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._wakeup: anyio.Event | None = None

    def ring(self) -> None:
        """Wake the sleeper: an entry was queued earlier than what it sleeps towards."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def sleep_until(self, at: float) -> None:
        """Until ``at`` or until rung, whichever comes first."""
        wakeup = anyio.Event()
        self._wakeup = wakeup
        with self._clock.deadline(max(0.0, at - self._clock.monotonic())
                                  if at < math.inf else 86400.0 * 365):
            await wakeup.wait()
