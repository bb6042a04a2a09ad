"""The due queue: pending sessions by when each is next due (``_next_at``), earliest first.

A calendar of whole seconds rather than a heap of ``(time, session)`` entries: a session costs a
list slot (8 B), not a 56 B tuple, which at 100,000 pending sessions is 5 MiB. Each second's
sessions are kept in the order they were queued, sorted by time (a stable sort: equal times in
the order they were queued) when that second becomes the earliest; one queued into the second
being taken from goes to its place at once. A session is queued at most once at a time (see
``Scheduler.schedule``), so an item is stale only once its session has ended.
"""

from __future__ import annotations

import bisect
import heapq
import math
import operator
import sys

from .pending import PendingConnection

__all__ = ["DueQueue"]

_AT = operator.attrgetter("_next_at")
_FIRST, _LAST = -sys.maxsize, sys.maxsize  # the seconds of -inf ("at once") and of +inf


def _second(at: float) -> int:
    if math.isfinite(at):
        return math.floor(at)
    return _FIRST if at < 0 else _LAST


class DueQueue:
    """Pending sessions by ``_next_at``; :meth:`first` is the earliest one not ended."""

    __slots__ = ("_head", "_head_second", "_pos", "_seconds", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[int, list[PendingConnection]] = {}  # by second, as queued
        self._seconds: list[int] = []  # a heap of the seconds in _waiting
        # The earliest second's sessions, sorted by time, taken from ``_pos`` on (None: none
        # taken out of _waiting yet).
        self._head: list[PendingConnection] | None = None
        self._head_second = _FIRST
        self._pos = 0

    def __len__(self) -> int:
        """Items queued, ended sessions' included."""
        head = 0 if self._head is None else len(self._head) - self._pos
        return head + sum(map(len, self._waiting.values()))

    def push(self, pending: PendingConnection) -> bool:
        """Queue ``pending`` at its ``_next_at``; True when it is now the first."""
        second = _second(pending._next_at)
        head = self._head
        if head is not None and second <= self._head_second:
            if second < self._head_second:  # earlier than the head's second: back it goes
                self._park(head[self._pos:], self._head_second)
                self._head = None
            else:
                at = bisect.bisect_right(head, pending._next_at, self._pos, key=_AT)
                head.insert(at, pending)
                return at == self._pos
        bucket = self._waiting.get(second)
        if bucket is None:
            self._park([pending], second)
        else:
            bucket.append(pending)
        return self._head is None and self._seconds[0] == second

    def _park(self, items: list[PendingConnection], second: int) -> None:
        if not items:
            return
        bucket = self._waiting.get(second)
        if bucket is None:
            self._waiting[second] = items
            heapq.heappush(self._seconds, second)
        else:
            bucket.extend(items)

    def first(self) -> PendingConnection | None:
        """The earliest queued session that has not ended (kept queued), or None."""
        while True:
            head = self._head
            if head is not None:
                pos, end = self._pos, len(head)
                while pos < end and head[pos].done():
                    pos += 1  # ended while queued
                self._pos = pos
                if pos < end:
                    return head[pos]
                self._head = None
            if not self._seconds:
                return None
            second = heapq.heappop(self._seconds)
            head = self._waiting.pop(second)
            head.sort(key=_AT)
            self._head, self._head_second, self._pos = head, second, 0

    def pop(self) -> PendingConnection | None:
        """Takes :meth:`first` out of the queue."""
        pending = self.first()
        if pending is not None:
            self._pos += 1
        return pending
