"""The scheduler: which pending session reads next, and on which worker.

Every pending session waits in one queue by when it is next due (``due``). One task takes a slot
of the status budget for the earliest due (first come, first served with account reads) and
hands the step (one read, and what follows from it) to a waiting worker, with at most nine
tenths of the session's connection pool under way (``_room``; 100 on a pool with no limit): on
an ``aiohttp.ClientSession`` several managers share, of all of theirs (a :class:`_Room` each).

A worker whose step ends goes on with the next session due on the same place in the room, if a
slot is free at once, its manager holds no more than its share of the room and, while other
managers wait for room, its turn of ``_TURN`` reads is not over (``_following``; not on a pool
of one connection, which leaves none for other requests): the read's objects are freed and the
next read's made side by side. Without it, with managers sharing a room, reads ended in bursts
(their objects freed while the collector's young-generation count was at zero, which counts
nothing) and began in bursts (tens of reads' objects at once): a collection every 20 reads
instead of every 200, and the survivors of each promoted to the old generation, whose full
passes over every object of 100 managers cost more than all the rest of their bookkeeping (issue
26).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import weakref
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import anyio.lowlevel

from .._limits.clock import Clock
from .._limits.limiter import Grant
from .._wire.client import OWN_POOL
from .._wire.exceptions import InstantlyError, session_key
from .alarm import Alarm
from .due import DueQueue
from .pending import PendingConnection
from .reads import Reads

__all__ = ["Scheduler", "Step"]

logger = logging.getLogger("instantly_oauth_async")

#: Steps under way at most on a session whose pool has no limit. On a pool of N connections,
#: N less a tenth (``_room``): a read past the pool would wait for a connection while holding
#: its slot (and, by the thousand, costs the event loop and the garbage collector more than
#: it reads), and the tenth left is for the session's other requests (inits, account reads, the
#: caller's own), which a worker going on with its next read (``_following``) would otherwise
#: keep waiting: aiohttp hands a connection just given back to the next request that asks
#: for one, before a request that waits for one has run.
_MAX_STEPS = 100
#: Reads a worker goes on with (``_following``) while other managers wait for room: then its
#: place is the first waiting's, so that managers beyond the room's places get theirs in turn
#: (100 managers on 90 places). Each hand-over costs two wake-ups and a burst of allocations;
#: with 16, 100 managers at saturation spent 0.5-0.7 us a read more (``benchmarks._own``).
_TURN = 64
#: Workers kept waiting for the next step, beyond which one that runs out of steps ends: as
#: many as steps may be under way, so a manager at its cap makes no new task per read (with
#: 64, one read in five at saturation started a worker: reads end in bursts, and more than
#: 64 went idle only to be made again for the next batch).
_MAX_IDLE = _MAX_STEPS

#: One status read for a session on its slot, and what follows from it (see ``step``).
Step = Callable[[PendingConnection, Grant], Awaitable[None]]


class _Room:
    """The steps under way on one ``aiohttp.ClientSession``, and the schedulers waiting for
    fewer: 100 managers sharing one session would otherwise have 100 times ``_MAX_STEPS``
    reads under way, most waiting for a connection in its pool with their coroutines,
    futures and timers (the garbage collector's work grows with them).

    Waiting schedulers are woken one at a time, first come first served, as places come
    free, and the next not before the one woken has run (:meth:`resumed`): it takes what it
    has due, up to the cap, in one go. One woken that leaves room unused to wait for something
    else wakes the next (:meth:`wake_one`). Most places are not given back as a read ends:
    its worker goes on with its manager's next due read (``Scheduler._following``), up to the
    manager's share (``cap / members``, at least one place) and, while others wait, for a
    turn of ``_TURN`` reads. (Waking schedulers only once a quarter of the room was free, to
    save wake-ups, made reads begin in bursts; see the module's docstring.)"""

    __slots__ = ("cap", "follows", "members", "steps", "waiting", "woken")

    def __init__(self, cap: int, *, follows: bool = True) -> None:
        self.cap = cap
        self.follows = follows  # a worker may go on with its next read (``_following``)
        self.members = 0
        self.steps = 0
        # bare futures: cheaper than an Event
        self.waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.woken: asyncio.Future[None] | None = None  # woken, and not yet run

    def ended(self, count: int = 1) -> None:
        self.steps -= count
        self.wake_one()

    def wake_one(self) -> None:
        """Wake the first scheduler waiting, if a place is free and none woken is yet to run."""
        waiting = self.waiting
        while waiting and self.woken is None and self.steps < self.cap:
            wake = waiting.popleft()
            if not wake.done():  # (a scheduler cancelled as its manager closed)
                wake.set_result(None)
                self.woken = wake
                return

    def resumed(self, wake: asyncio.Future[None]) -> None:
        """The scheduler waiting on ``wake`` runs again: the next may be woken (cancelled
        instead, as its manager closes, its ``run`` gives its room back, waking the next)."""
        if self.woken is wake:
            self.woken = None


#: The room of each session managers borrow (``session=``): one for all of them.
_ROOMS: weakref.WeakKeyDictionary[object, _Room] = weakref.WeakKeyDictionary()


def _pool(connector: object) -> int:
    """The connections ``connector`` opens at most to one host (0: no limit)."""
    limits = [n for n in (getattr(connector, "limit", 0), getattr(connector, "limit_per_host", 0))
              if isinstance(n, int) and n > 0]
    return min(limits, default=0)


def _room(pool: int) -> _Room:
    """A room for a pool of ``pool`` connections (see ``_MAX_STEPS``)."""
    if pool == 0:
        return _Room(_MAX_STEPS)
    cap = max(1, pool - max(1, pool // 10))
    return _Room(cap, follows=cap < pool)


def _room_of(reads: Reads) -> _Room:
    """The room of the session ``reads`` sends on: its own when the client owns it."""
    client = reads._client
    session = client._session
    if session is None or client._owns_session:
        return _room(OWN_POOL)
    room = _ROOMS.get(session)
    if room is None:
        room = _ROOMS[session] = _room(_pool(getattr(session, "connector", None)))
    return room


class Scheduler:
    """The due queue, the slots taken for it, and the workers that run the steps."""

    def __init__(self, reads: Reads, clock: Clock) -> None:
        self._reads = reads
        self._clock = clock
        self._due = DueQueue()
        self._alarm = Alarm(clock)
        # Steps handed out by the scheduler, and the workers waiting for one (see _worker).
        self._work: collections.deque[tuple[PendingConnection, Grant]] = collections.deque()
        self._idle: list[asyncio.Future[None]] = []  # bare futures: cheaper than an Event
        self._room = _room_of(reads)  # steps handed out and not ended, on this session
        self._mine = 0  # those of them this scheduler handed out
        self._wake: asyncio.Future[None] | None = None  # its last wait in the room's queue
        #: The manager closes (or this scheduler has stopped): no worker goes on to a read.
        self.closing = False

    def schedule(self, pending: PendingConnection, at: float) -> None:
        """Queue ``pending`` for a read at ``at``. One already queued, or taken for a slot,
        keeps its place: a session is queued once at a time (every caller asks only for one
        that is neither due nor in a step)."""
        if pending._due:
            return
        pending._next_at = at
        pending._due = True
        if self._due.push(pending):
            self._alarm.ring()  # earlier than what the scheduler sleeps towards

    async def run(self, group: anyio.abc.TaskGroup, step: Step) -> None:
        """Until cancelled: a slot for the earliest due session, then its ``step``."""
        self._room.members += 1
        try:
            await self._run(group, step)
        finally:  # the manager closes: steps not begun never will, nor end (the room is shared)
            self.closing = True
            self._room.members -= 1
            left = len(self._work)
            self._work.clear()
            self._room.ended(left)

    async def _run(self, group: anyio.abc.TaskGroup, step: Step) -> None:
        dispatched, room = 0, self._room
        due = self._due
        woken = False  # by the room, whose free places are this scheduler's to take
        while True:
            pending = due.first()  # (one cancelled while it waited is left out)
            # Closing, no read starts: a slot taken now would spend the budget for nothing.
            if pending is None or self.closing:
                woken = False
                room.wake_one()  # any room left is the next waiter's
                await self._alarm.sleep_until(math.inf)
                continue
            at = pending._next_at
            if at > self._clock.monotonic():
                woken = False
                room.wake_one()
                await self._alarm.sleep_until(at)
                continue
            # A slot with no place in the room would wait for a connection, held; a place
            # while others wait for one is theirs first (else a scheduler woken by its own
            # alarm took a place from under the one the room had just woken).
            if room.steps >= room.cap or (
                    not woken and (room.waiting or room.woken is not None)):
                await self._wait_for_room()
                woken = True
                continue
            due.pop()
            # Its _due stays set while it waits for a slot: it is on its way to a step, and
            # whoever would schedule it again meanwhile (an adoption) must not make it two.
            # Its place in the room is kept meanwhile (else, the slot waited for, it was
            # dispatched into a room others had filled: one over the cap per manager).
            room.steps += 1
            try:
                grant, waited = await self._slot(pending)
            finally:
                room.steps -= 1  # (taken again by _dispatch, or given back below)
            if waited:
                woken = False  # it let the next waiting scheduler have any room left
            if grant is None:
                room.wake_one()
                continue
            while pending.done():  # cancelled meanwhile: the next one due, if any
                pending._due = False
                later = due.first()
                if later is None or later._next_at > self._clock.monotonic():
                    break
                pending = later
                due.pop()
            pending._due = False
            if pending.done():  # (its place is free: the loop wakes the next, or takes it)
                await self._reads.release(grant)  # nobody to spend it on
            else:
                pending._in_step = True  # from here cancel() leaves the ending to the step
                self._dispatch(group, step, pending, grant)
                dispatched += 1
                if dispatched % 64 == 0:  # a store that never waits: let the reads run too
                    await anyio.lowlevel.checkpoint()

    async def _slot(self, pending: PendingConnection) -> tuple[Grant | None, bool]:
        """A slot for ``pending`` (out of the queue, its place in the room kept), and whether
        it was waited for; ``None`` when the store refuses (``StoreError``: waiting won't cure
        it), ``pending`` ended with the error."""
        waited = False
        try:
            grant = await self._reads.slot_now()
            if grant is None:
                waited = True
                self._room.wake_one()  # the slot may take a while: any room left is the next's
                grant = await self._reads.slot()
        except InstantlyError as exc:
            logger.warning("no slot for session %s: %s",
                           session_key(pending.session.session_id), type(exc).__name__)
            pending._due = False
            pending._finish(error=exc)
            return None, waited
        return grant, waited

    async def _wait_for_room(self) -> None:
        """In the room's queue until woken for a place."""
        room = self._room
        wake = asyncio.get_running_loop().create_future()
        room.waiting.append(wake)
        room.wake_one()  # a place free and nobody woken: the first waiting's (a closed
        self._wake = wake  # manager's wait left in the queue wakes nobody)
        try:
            await wake
        finally:
            room.resumed(wake)

    def _others_wait(self) -> bool:
        """Whether a scheduler other than this one waits in the room's queue (its own wait
        there is its own workers' to serve)."""
        mine = self._wake
        return any(wake is not mine for wake in self._room.waiting)

    def _dispatch(self, group: anyio.abc.TaskGroup, step: Step, pending: PendingConnection,
                  grant: Grant) -> None:
        """Hand one step to an idle worker, or to a new one when none is idle: a task per
        read costs several times what waking a waiting one does (anyio's ``start_soon``)."""
        self._work.append((pending, grant))
        self._room.steps += 1
        self._mine += 1
        while self._idle:
            wake = self._idle.pop()
            if not wake.done():  # (a worker cancelled as the manager closes left it done)
                wake.set_result(None)
                return
        group.start_soon(self._worker, step)

    async def _following(self, turn: int) -> tuple[PendingConnection, Grant] | None:
        """The next session due and a slot for it, taken on the place in the room of a step
        that has just ended (the ``turn``-th in a row on it); ``None`` (the place given back)
        when the manager closes, when it holds more than its share of the room (at least one
        place), when its turn is over while others wait for room, when nothing is due, or when
        no slot is free at once (the scheduler then waits for it, in turn with account reads)."""
        room = self._room
        if self.closing or not room.follows or self._mine > max(1, room.cap // room.members) or (
                turn >= _TURN and self._others_wait()):
            return None
        pending = self._due.first()
        if pending is None or pending._next_at > self._clock.monotonic():
            return None
        try:
            grant = await self._reads.slot_now()
        except InstantlyError:  # the store refuses: the scheduler meets it and says so
            return None
        if grant is None:
            return None
        if self._due.first() is not pending:  # a store that suspended: the queue moved
            await self._reads.release(grant)
            return None
        self._due.pop()
        pending._due = False
        pending._in_step = True  # as _run does before it hands a step out
        return pending, grant

    async def _worker(self, step: Step) -> None:
        """Runs steps, one at a time, while there are any (each followed by the next due
        while ``_following`` gives one); waits for the next one while fewer than ``_MAX_IDLE``
        others wait, else ends. Each step handed out has a worker of its own (woken or new),
        so no step waits behind another's read."""
        work = self._work
        while True:
            while work:
                pending, grant = work.popleft()
                turn = 0
                try:
                    while True:
                        await step(pending, grant)
                        turn += 1
                        following = await self._following(turn)
                        if following is None:
                            break
                        pending, grant = following
                finally:
                    self._mine -= 1
                    self._room.ended()
            if len(self._idle) >= _MAX_IDLE:
                return
            wake = asyncio.get_running_loop().create_future()
            self._idle.append(wake)
            await wake
