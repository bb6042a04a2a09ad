"""When a waiting task wakes: at the time it sleeps towards, or sooner when something due
earlier is queued (the poller's scheduler and its deadline reaper each sleep on one)."""

from __future__ import annotations

import asyncio
import math

import anyio

from .._limits.clock import Clock, SystemClock

__all__ = ["Alarm"]


def _wake(alarm: Alarm) -> None:
    alarm._timer = None
    alarm.ring()


class Alarm:
    """A sleep until a time on the manager's clock, cut short by :meth:`ring`.

    On the real clock a sleep is a bare future and one event-loop timer, kept armed from one
    sleep to the next while the time slept towards stays the same (a scheduler woken early
    sleeps again towards the same entry): no cancel scope and no ``Event`` per wake-up.
    Another clock (a test's ``FakeClock``) is slept on through its own deadline."""

    __slots__ = ("_clock", "_real", "_timer", "_timer_at", "_wakeup")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._real = type(clock) is SystemClock  # its readings are the event loop's time
        self._wakeup: anyio.Event | asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.nan

    def ring(self) -> None:
        """Wake the sleeper: an entry was queued earlier than what it sleeps towards."""
        wakeup = self._wakeup
        if wakeup is None:
            return
        if isinstance(wakeup, anyio.Event):
            wakeup.set()
        elif not wakeup.done():
            wakeup.set_result(None)

    async def sleep_until(self, at: float) -> None:
        """Until ``at`` or until rung, whichever comes first."""
        if self._real:
            await self._sleep_on_loop(at)
            return
        wakeup = anyio.Event()
        self._wakeup = wakeup
        with self._clock.deadline(max(0.0, at - self._clock.monotonic())
                                  if at < math.inf else 86400.0 * 365):
            await wakeup.wait()

    async def _sleep_on_loop(self, at: float) -> None:
        loop = asyncio.get_running_loop()
        if at != self._timer_at or self._timer is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = at
            if at < math.inf:  # timed from now: the loop's own clock may count from elsewhere
                self._timer = loop.call_later(max(0.0, at - self._clock.monotonic()), _wake,
                                              self)
        wakeup = self._wakeup = loop.create_future()
        try:
            await wakeup
        except BaseException:
            if self._timer is not None:  # cancelled: no timer left behind for a sleeper gone
                self._timer.cancel()
                self._timer = None
            raise
        finally:
            if self._wakeup is wakeup:
                self._wakeup = None
