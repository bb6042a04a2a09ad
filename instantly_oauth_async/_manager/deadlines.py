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
    """The deadline of every pending session, in one heap, and the reaper that watches it."""

    def __init__(self, clock: Clock, fleet: Fleet | None, *, poll_interval: float,
                 expiry_grace: float) -> None:
        self._clock = clock
        self._fleet = fleet
        self._poll_interval = poll_interval
        self._expiry_grace = expiry_grace
        # Deadlines, so that a session ends by its deadline even when no read can be made:
        # an entry is live while it is the session's ``_watch``.
        self._deadlines: list[tuple[float, int, PendingConnection]] = []
        self._alarm = Alarm(clock)

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
        late. So the heap holds about one entry a session, however often it is read (each
        such move added one, kept until its own time: dozens a session polled for minutes)."""
        pending._deadline = deadline
        watch = pending._watch
        if watch is None or deadline < watch[0] - DATE_RESOLUTION:
            self._watch(pending, deadline)

    def _watch(self, pending: PendingConnection, at: float) -> None:
        pending._watch = entry = pending._entry(at)
        heapq.heappush(self._deadlines, entry)
        if self._deadlines[0][2] is pending:
            self._alarm.ring()

    async def reap(self, conclude: Conclude) -> None:
        """Ends every session whose deadline passed without a read in flight: the budget or the
        store gave no slot until then, so nobody can tell what the person did."""
        while True:
            heap = self._deadlines
            while heap and (heap[0][2].done() or heap[0] is not heap[0][2]._watch):
                heapq.heappop(heap)  # ended, or superseded by an earlier deadline
            if not heap:
                await self._alarm.sleep_until(math.inf)
                continue
            at, _, pending = heap[0]
            now = self._clock.monotonic()
            if at > now:
                await self._alarm.sleep_until(at)
                continue
            heapq.heappop(heap)
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
