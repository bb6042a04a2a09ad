"""Deadlines: when the poller gives up on a session (its expiry by the server's own ``Date``,
plus the grace), and the reaper, which ends one whose deadline passed with no read in flight as
lost, unless another manager may be the one polling it.

A client clock minutes off changes nothing: deadlines are reckoned from the server's ``Date``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import cast

from .._limits.clock import Clock
from .._wire.models import OAuthSession
from .alarm import Alarm
from .fleet import Fleet
from .outcome import DOCUMENTED_TTL, ConnectResult, OutcomeLostError
from .pending import PendingConnection

__all__ = ["DATE_RESOLUTION", "Conclude", "Deadlines"]

#: How precisely a deadline is known: the ``Date`` it is reckoned from counts whole seconds.
DATE_RESOLUTION = 1.0

#: Ends a session with its outcome, written ahead for the fleet (see ``FleetSide.conclude``).
Conclude = Callable[[PendingConnection, ConnectResult | None, BaseException | None],
                    Awaitable[None]]


class Deadlines:
    """The deadline of every pending session, and the reaper that watches them."""

    def __init__(self, clock: Clock, fleet: Fleet | None, *, poll_interval: float,
                 expiry_grace: float) -> None:
        self._clock = clock
        self._fleet = fleet
        self._poll_interval = poll_interval
        self._expiry_grace = expiry_grace
        # Deadlines, so that a session ends by its deadline even when no read can be made: the
        # sessions by the whole second of the time they are watched for (``_watch``), and those
        # seconds in a heap. A list slot a session, not a heap entry of its own (a 64 B tuple):
        # at 100,000 sessions a few hundred seconds hold them all. An item is live while its
        # session is watched for a time within its second and has not ended.
        self._by_second: dict[int, list[PendingConnection]] = {}
        self._seconds: list[int] = []
        self._alarm = Alarm(clock)
        self._sleeps_until = math.inf  # what the reaper last slept towards

    def deadline_of(self, session: OAuthSession, age: float | None) -> float:
        """When to give up on ``session``: at its expiry plus the grace, from its real age when
        known; never before one read could tell its outcome (an adopted session may be past
        its deadline already: its one read still decides)."""
        if age is None:
            return self.local_deadline(session.expires_at, session.server_date)
        if session.server_date is not None:
            life = (session.expires_at - session.server_date).total_seconds()
        else:
            life = DOCUMENTED_TTL
        now = self._clock.monotonic()
        return max(now + max(0.0, life - age) + self._expiry_grace, now + self._poll_interval)

    def local_deadline(self, expires_at: datetime, server_date: datetime | None) -> float:
        """When to give up on our own: the server's own lifetime figure, plus the grace."""
        reference = server_date or datetime.now(timezone.utc)
        remaining = (expires_at - reference).total_seconds()
        return self._clock.monotonic() + max(0.0, remaining) + self._expiry_grace

    def set_deadline(self, pending: PendingConnection, deadline: float) -> None:
        """Move the session's deadline. The reaper is told only when it comes more than a
        second earlier than the time it watches the session for: a later one is found when
        that time comes, and one earlier by less is the same deadline (an answer's ``Date``
        counts whole seconds: reckoned at a read just after the server's second turned, it
        comes out up to a second earlier than at one just before), reaped up to a second
        late. So the reaper holds about one item a session, however often it is read (each
        such move added one, kept until its own time: dozens a session polled for minutes)."""
        pending._deadline = deadline
        watch = pending._watch
        if watch is None or deadline < watch - DATE_RESOLUTION:
            self._watch(pending, deadline)

    def watched(self) -> int:
        """Items the reaper holds, stale ones included (the benchmarks' and tests' figure)."""
        return sum(map(len, self._by_second.values()))

    def _watch(self, pending: PendingConnection, at: float) -> None:
        pending._watch = at
        second = math.floor(at)
        bucket = self._by_second.get(second)
        if bucket is None:
            bucket = self._by_second[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append(pending)
        if at < self._sleeps_until:  # (not at every item of the earliest second: each wake-up
            self._alarm.ring()  # looks through that second's items)

    @staticmethod
    def _live(pending: PendingConnection, second: int) -> bool:
        watch = pending._watch
        return not pending.done() and watch is not None and math.floor(watch) == second

    async def reap(self, conclude: Conclude) -> None:
        """Ends every session whose deadline passed without a read in flight: the budget or the
        store gave no slot until then, so nobody can tell what the person did."""
        seconds, by_second = self._seconds, self._by_second
        while True:
            if not seconds:
                self._sleeps_until = math.inf
                await self._alarm.sleep_until(math.inf)
                continue
            second = seconds[0]
            live = [p for p in by_second[second] if self._live(p, second)]
            if not live:  # each ended, or watched for another time since
                heapq.heappop(seconds)
                del by_second[second]
                continue
            now = self._clock.monotonic()
            soonest = min(cast("float", p._watch) for p in live)
            if soonest > now:
                by_second[second] = live  # (the stale ones left out)
                self._sleeps_until = soonest
                await self._alarm.sleep_until(soonest)
                continue
            heapq.heappop(seconds)  # this second's items out: each handled or put back
            del by_second[second]
            seen: set[int] = set()  # (a session with two items here is looked at once)
            for pending in live:
                if id(pending) in seen or not self._live(pending, second):
                    continue  # watched for another second since (as another was handled)
                seen.add(id(pending))
                at = cast("float", pending._watch)
                if at > now:
                    self._watch(pending, at)  # later within this second: looked at then
                else:
                    await self._due(pending, at, now, conclude)

    async def _due(self, pending: PendingConnection, at: float, now: float,
                   conclude: Conclude) -> None:
        """``pending``'s watched time ``at`` has come: end it, or look again later."""
        fleet = self._fleet
        if pending._deadline > at:
            self._watch(pending, pending._deadline)  # moved later since
        elif pending._in_step:
            self._watch(pending, now + self._poll_interval)  # its read decides; look again
        elif fleet is not None and (not fleet.holds(pending.session.session_id)
                                    or pending.session.session_id in fleet.registered_again):
            # Not ours to decide (its lease lapsed: this process was paused, or it lost
            # it): another manager may be polling it. The heartbeat or the registry
            # tells; look again a poll interval later.
            if pending.session.session_id in fleet.fences:
                self._watch(pending, now + self._poll_interval)
        else:
            why = ("no status read could be made" if not pending._unsure else
                   "the last status reads got no clear answer (lost on the wire, 5xx)")
            await conclude(pending, None, OutcomeLostError(
                pending.session.session_id,
                f"{why} by {self._expiry_grace:g} s past the session's expiry (no slot of "
                "the status budget, or the store is unreachable); the person may have "
                "connected"))
