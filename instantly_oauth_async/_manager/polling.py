"""Polling: every pending session waits in one heap by when it is next due, and one scheduler
task reads the earliest due on a slot of the status budget.

No task sleeps on a pending session: it costs its records and a heap entry, so 10,000 of them are
cheap. The scheduler takes a slot for the earliest due session (first come, first served with
account reads) and starts a short task for that one read; the session is then rescheduled or
finished. Deadlines are reckoned from the server's own ``Date``, so a client clock minutes off
changes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import math
import random
from collections.abc import Callable, Collection, Generator
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._limits.clock import Clock, SystemClock
from .._limits.limiter import Grant
from .._observe.events import Outcome
from .._observe.stats import Tally
from .._stores.registry import RELEASED, Entry
from .._wire.exceptions import (
    ClientStateError,
    InstantlyError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    SessionCancelledError,
    TransportError,
    session_key,
)
from .._wire.models import OAuthSession, RetryPolicy, SessionStatus
from .fleet import Fleet, UnknownSessionError, decode_outcome, decode_session
from .outcome import DOCUMENTED_TTL, ConnectResult, OutcomeLostError, Outcomes
from .reads import Reads

__all__ = ["PendingConnection", "Poller"]

logger = logging.getLogger("instantly_oauth_async")

#: Workers kept waiting for the next step, beyond which one that runs out of steps ends.
_MAX_IDLE = 64
#: Steps under way at most: aiohttp's connection pool holds 100 connections by default, and a
#: read past them would wait for one while holding its slot (and, by the thousand, costs the
#: event loop and the garbage collector more than it reads).
_MAX_STEPS = 100


class PendingConnection:
    """A session waiting for its person. ``await pending`` or ``await pending.result()``.

    Any number of tasks may await it; they share its one poll loop. Cancelling an awaiter
    cancels nothing else; :meth:`cancel` stops the session's polling.
    """

    __slots__ = ("_born", "_cancel_requested", "_clock", "_deadline", "_done", "_due_seq", "_error",
                 "_failures", "_finished", "_in_step", "_key", "_next_at", "_on_finish", "_polls",
                 "_reading", "_result", "_unsure", "_watch", "expected_email", "session")

    def __init__(
        self,
        session: OAuthSession,
        expected_email: str | None,
        on_finish: Callable[[PendingConnection], None] | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.session = session
        self.expected_email = expected_email
        self._clock: Clock = clock or SystemClock()
        self._born = self._clock.monotonic()
        self._polls = 0  # status reads sent
        self._key = 0  # pairs the hooks' SessionStarted with its SessionResolved
        self._finished = False
        self._done: anyio.Event | None = None  # made when someone first waits: most never do
        self._result: ConnectResult | None = None
        self._error: BaseException | None = None
        self._on_finish = on_finish
        self._cancel_requested = False
        self._in_step = False  # a read, and what follows from its answer, is under way
        self._reading = False  # a status read is on the wire
        # The last read got no clear answer (lost on the wire, 5xx, garbled): the server may
        # have given its one-time answer to it, so cancel() waits for one clear answer.
        self._unsure = False
        # Poll state, kept here between steps (no task sleeps on a pending session):
        self._next_at = -math.inf  # due at once, on any clock (its readings may be negative)
        self._due_seq = 0  # the sequence number of its live entry in the due heap; 0: none
        self._deadline = math.inf
        self._watch = 0  # the sequence number of this session's live entry in the deadline heap
        self._failures = 0

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        session = self.session
        return f"<PendingConnection {session.session_id} {session.provider.value} {state}>"

    def done(self) -> bool:
        """True once the session has an outcome (a result or an exception); never blocks."""
        return self._finished

    async def result(self, timeout: float | None = None) -> ConnectResult:  # noqa: ASYNC109
        """The outcome; raises what the caller must act on (see ``OutcomeLostError``).

        With ``timeout`` (seconds, on the manager's clock), raises the builtin ``TimeoutError``
        when the session is still pending by then; the session itself goes on.
        """
        if not self._finished:
            if self._done is None:
                self._done = anyio.Event()
            if timeout is None:
                await self._done.wait()
            else:
                with self._clock.deadline(max(0.0, float(timeout))):
                    await self._done.wait()
                if not self._finished:
                    raise TimeoutError(
                        f"session {self.session.session_id} still pending after {timeout:g} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None  # noqa: S101 - set together with _done
        return self._result

    def __await__(self) -> Generator[Any, None, ConnectResult]:
        return self.result().__await__()

    def cancel(self) -> None:
        """Stop polling this session; awaiters then get :class:`SessionCancelledError`.

        A read in flight is never interrupted, and once the server has given its one-time
        answer the session ends with that answer (the account is then not fetched): a
        connected mailbox is never reported cancelled. When the last read's answer was lost,
        one more read tells which it was. Otherwise the session ends at once, or as soon as the
        read in flight answers.
        """
        self._cancel_requested = True
        if not self.done() and not self._in_step and not self._unsure:
            self._finish(error=self._cancelled())

    def _cancelled(self) -> SessionCancelledError:
        return SessionCancelledError(f"session {self.session.session_id} cancelled")

    def _finish(
        self, *, result: ConnectResult | None = None, error: BaseException | None = None
    ) -> None:
        if self.done():
            return
        self._result, self._error, self._finished = result, error, True
        if self._done is not None:
            self._done.set()
        if self._on_finish is not None:
            on_finish, self._on_finish = self._on_finish, None
            on_finish(self)


class Poller:
    """The sessions one manager polls, and the one task that schedules their reads."""

    def __init__(
        self,
        reads: Reads,
        outcomes: Outcomes,
        clock: Clock,
        tally: Tally,
        *,
        retry: RetryPolicy,
        rng: random.Random,
        poll_interval: float,
        expiry_grace: float,
        fleet: Fleet | None = None,
        close_fetch_wait: float = 5.0,
    ) -> None:
        self._fleet = fleet
        self._close_fetch_wait = close_fetch_wait
        self._registered: set[str] = set()  # resumed sessions offered to the registry
        self._group: anyio.abc.TaskGroup | None = None
        self._reads = reads
        self._outcomes = outcomes
        self._clock = clock
        self._tally = tally
        self._retry = retry
        self._rng = rng
        self.poll_interval = poll_interval
        self._expiry_grace = expiry_grace
        self.pending: dict[str, PendingConnection] = {}
        self._due: list[tuple[float, int, PendingConnection]] = []
        # Deadlines, so that a session ends by its deadline even when no read can be made:
        # an entry is live while its sequence number is the session's ``_watch``.
        self._deadlines: list[tuple[float, int, PendingConnection]] = []
        self._seq = 0
        self._wakeup: anyio.Event | None = None
        self._reaper_wakeup: anyio.Event | None = None
        self._closing = False
        self._step_ended: anyio.Event | None = None  # set when a step ends: settle()
        # attach() handles waiting on the registry, ended with the manager if still waiting
        self._watching: set[PendingConnection] = set()
        # Steps handed out by the scheduler, and the workers waiting for one (see _worker).
        self._work: collections.deque[tuple[PendingConnection, Grant]] = collections.deque()
        self._idle: list[asyncio.Future[None]] = []  # bare futures: cheaper than an Event
        self._steps = 0  # handed out and not ended
        self._room: anyio.Event | None = None  # set when a step ends, for a scheduler at the cap

    # -- sessions in, sessions out -----------------------------------------------------------

    def track(self, session: OAuthSession, expected_email: str | None, first_poll: float, *,
              resumed: bool = False, age: float | None = None) -> PendingConnection:
        """Register a session and queue its first poll. ``age``: how old the session is (by the
        registry's clock), for one adopted; else its life is counted from the init's ``Date``
        (and set right by the first status answer's)."""
        pending = PendingConnection(session, expected_email, self._finished, clock=self._clock)
        pending._key = self._tally.started(session.provider, session.session_id, resumed=resumed)
        self.pending[session.session_id] = pending
        self._set_deadline(pending, self._deadline_of(session, age))
        self._schedule(pending, first_poll)
        return pending

    def _deadline_of(self, session: OAuthSession, age: float | None) -> float:
        """When to give up on ``session``: at its expiry plus the grace, from its real age when
        known; never before one read could tell its outcome (an adopted session may be past
        its deadline already: its one read still decides)."""
        if age is None:
            return self._local_deadline(session.expires_at, session.server_date)
        if session.server_date is not None:
            life = (session.expires_at - session.server_date).total_seconds()
        else:
            life = DOCUMENTED_TTL
        now = self._clock.monotonic()
        return max(now + max(0.0, life - age) + self._expiry_grace, now + self.poll_interval)

    def _finished(self, pending: PendingConnection) -> None:
        """Bookkeeping for a session that just ended, however it ended."""
        self.pending.pop(pending.session.session_id, None)
        self._registered.discard(pending.session.session_id)
        error, result = pending._error, pending._result
        outcome: Outcome
        label: str | None
        if result is not None:
            outcome = label = result.status.value  # type: ignore[assignment]
        elif isinstance(error, SessionCancelledError):
            outcome = label = "cancelled"
        elif isinstance(error, ClientStateError):
            outcome, label = "closed", None
        elif isinstance(error, OutcomeLostError):
            outcome, label = "lost", type(error).__name__
        else:
            outcome, label = "failed", type(error).__name__
        self._tally.resolved(
            pending.session.provider, pending.session.session_id, outcome, label,
            latency=self._clock.monotonic() - pending._born, polls=pending._polls,
            reconciled=result is not None and result.reconciled, key=pending._key)
        if not pending._in_step:  # else the step hands it over as it ends
            self._hand_over_if_held(pending)

    def closing(self) -> None:
        """The manager is closing: no read starts, a step that ends from now on finishes its
        session, and an account read under way or to come gets ``close_fetch_wait`` seconds."""
        self._closing = True
        self._outcomes.closing(self._close_fetch_wait)

    def busy(self) -> set[str]:
        """The sessions in a step: a status read on the wire, or what follows from its answer
        (the account read, the outcome's write). Their answers are stored before they end."""
        return {sid for sid, pending in self.pending.items() if pending._in_step}

    async def settle(self, session_ids: Collection[str]) -> None:
        """Until none of these sessions is in a step."""
        steps = [p for sid in session_ids if (p := self.pending.get(sid)) is not None]
        while any(pending._in_step for pending in steps):
            if self._step_ended is None:
                self._step_ended = anyio.Event()
            await self._step_ended.wait()

    def abandon_all(self) -> None:
        """Every session still pending, and every handle still waiting on the registry, ends
        with ``ClientStateError``."""
        for pending in [*self.pending.values(), *self._watching]:
            pending._finish(error=ClientStateError("the OAuthManager closed first"))
        self.pending.clear()
        self._watching.clear()

    def _local_deadline(self, expires_at: datetime, server_date: datetime | None) -> float:
        """When to give up on our own: the server's own lifetime figure, plus the grace."""
        reference = server_date or datetime.now(timezone.utc)
        remaining = (expires_at - reference).total_seconds()
        return self._clock.monotonic() + max(0.0, remaining) + self._expiry_grace

    # -- the scheduler -----------------------------------------------------------------------

    def _schedule(self, pending: PendingConnection, at: float) -> None:
        pending._next_at = at
        self._seq += 1
        pending._due_seq = self._seq  # any older entry of it is stale from now on
        heapq.heappush(self._due, (at, self._seq, pending))
        if self._due[0][2] is pending and self._wakeup is not None:
            self._wakeup.set()  # earlier than what the scheduler sleeps towards

    def _set_deadline(self, pending: PendingConnection, deadline: float) -> None:
        """Move the session's deadline; the reaper is told only when it comes earlier (a later
        one is found when the earlier entry is due), so the heap holds about one entry each."""
        earlier = deadline < pending._deadline
        pending._deadline = deadline
        if earlier or not pending._watch:
            self._watch(pending, deadline)

    def _watch(self, pending: PendingConnection, at: float) -> None:
        self._seq += 1
        pending._watch = self._seq
        heapq.heappush(self._deadlines, (at, self._seq, pending))
        if self._deadlines[0][2] is pending and self._reaper_wakeup is not None:
            self._reaper_wakeup.set()

    async def run(self, group: anyio.abc.TaskGroup) -> None:
        """The scheduler: until cancelled, a slot for the earliest due session, then its read.

        Beside it, the reaper ends sessions whose deadline passed while no read could be made.
        """
        self._group = group
        dispatched = 0
        group.start_soon(self._reap)
        if self._fleet is not None:
            group.start_soon(self._beat, self._fleet)
            group.start_soon(self._adopt, self._fleet)
        while True:
            while self._due and not self._live(self._due[0]):
                heapq.heappop(self._due)  # cancelled while it waited, or rescheduled since
            if not self._due:
                await self._sleep_until(math.inf)
                continue
            at, _, pending = self._due[0]
            if at > self._clock.monotonic():
                await self._sleep_until(at)
                continue
            if self._steps >= _MAX_STEPS:  # a slot now would wait for a connection, held
                self._room = anyio.Event()
                await self._room.wait()
                continue
            heapq.heappop(self._due)
            # Its _due_seq stays set while it waits for a slot: it is on its way to a step, and
            # whoever would schedule it again meanwhile (an adoption) must not make it two.
            try:
                grant = await self._reads.slot()
            except InstantlyError as exc:  # the store refuses (StoreError): waiting won't cure it
                logger.warning("no slot for session %s: %s",
                               session_key(pending.session.session_id), type(exc).__name__)
                pending._due_seq = 0
                pending._finish(error=exc)
                continue
            while pending.done() and self._due and self._due[0][0] <= self._clock.monotonic():
                entry = heapq.heappop(self._due)  # cancelled meanwhile: the next one due
                if self._live(entry):
                    pending = entry[2]
            pending._due_seq = 0
            if pending.done():
                await self._reads.release(grant)  # nobody to spend it on
            else:
                pending._in_step = True  # from here cancel() leaves the ending to the step
                self._dispatch(group, pending, grant)
                dispatched += 1
                if dispatched % 64 == 0:  # a store that never waits: let the reads run too
                    await anyio.lowlevel.checkpoint()

    def _dispatch(self, group: anyio.abc.TaskGroup, pending: PendingConnection, grant: Grant
                  ) -> None:
        """Hand one step to an idle worker, or to a new one when none is idle: a task per
        read costs several times what waking a waiting one does (anyio's ``start_soon``)."""
        self._work.append((pending, grant))
        self._steps += 1
        while self._idle:
            wake = self._idle.pop()
            if not wake.done():  # (a worker cancelled as the manager closes left it done)
                wake.set_result(None)
                return
        group.start_soon(self._worker)

    async def _worker(self) -> None:
        """Runs steps, one at a time, while there are any; waits for the next one while fewer
        than ``_MAX_IDLE`` others wait, else ends. Each step handed out has a worker of its own
        (woken or new), so no step waits behind another's read."""
        work = self._work
        while True:
            while work:
                pending, grant = work.popleft()
                try:
                    await self._step(pending, grant)
                finally:
                    self._steps -= 1
                    if self._room is not None and self._steps <= _MAX_STEPS * 3 // 4:
                        self._room.set()  # room for a batch: one wake-up for many reads
                        self._room = None
            if len(self._idle) >= _MAX_IDLE:
                return
            wake = asyncio.get_running_loop().create_future()
            self._idle.append(wake)
            await wake

    @staticmethod
    def _live(entry: tuple[float, int, PendingConnection]) -> bool:
        pending = entry[2]
        return not pending.done() and entry[1] == pending._due_seq

    async def _reap(self) -> None:
        """Ends every session whose deadline passed without a read in flight: the budget or the
        store gave no slot until then, so nobody can tell what the person did."""
        while True:
            heap = self._deadlines
            while heap and (heap[0][2].done() or heap[0][1] != heap[0][2]._watch):
                heapq.heappop(heap)  # ended, or superseded by an earlier deadline
            if not heap:
                await self._sleep_until(math.inf, reaper=True)
                continue
            at, _, pending = heap[0]
            now = self._clock.monotonic()
            if at > now:
                await self._sleep_until(at, reaper=True)
                continue
            heapq.heappop(heap)
            fleet = self._fleet
            if pending._deadline > at:
                self._watch(pending, pending._deadline)  # moved later since
            elif pending._in_step:
                self._watch(pending, now + self.poll_interval)  # its read decides; look again
            elif fleet is not None and (not fleet.holds(pending.session.session_id)
                                        or pending.session.session_id in fleet.registered_again):
                # Not ours to decide (its lease lapsed: this process was paused, or it lost
                # it): another manager may be polling it. The heartbeat or the registry
                # tells; look again a poll interval later.
                if pending.session.session_id in fleet.fences:
                    self._watch(pending, now + self.poll_interval)
            else:
                why = ("no status read could be made" if not pending._unsure else
                       "the last status reads got no clear answer (lost on the wire, 5xx)")
                await self._conclude(pending, None, OutcomeLostError(
                    pending.session.session_id,
                    f"{why} by {self._expiry_grace:g} s past the session's expiry (no slot of "
                    "the status budget, or the store is unreachable); the person may have "
                    "connected"))

    async def _sleep_until(self, at: float, *, reaper: bool = False) -> None:
        """Until ``at`` or until an earlier entry is queued, whichever comes first."""
        wakeup = anyio.Event()
        if reaper:
            self._reaper_wakeup = wakeup
        else:
            self._wakeup = wakeup
        with self._clock.deadline(max(0.0, at - self._clock.monotonic())
                                  if at < math.inf else 86400.0 * 365):
            await wakeup.wait()

    async def _step(self, pending: PendingConnection, grant: Grant) -> None:
        """One status read for ``pending`` and what follows from it; reschedules or finishes.

        ``grant`` is the read's slot, released as soon as the read has ended, however it ended.
        ``pending.cancel()`` never interrupts a step: the read's answer may be one the server
        gives only once, so the step ends the session with it (or as cancelled when the answer
        was "pending"). Closing the manager cancels steps outright.
        """
        try:
            if self._closing:  # the manager closes: no read starts (its lease is let go)
                await self._reads.release(grant)
                return
            if pending._cancel_requested and not pending._unsure:
                await self._reads.release(grant)
                pending._finish(error=pending._cancelled())
                return
            fleet = self._fleet
            sid = pending.session.session_id
            if fleet is not None and sid not in fleet.fences and sid not in self._registered:
                # resume(): a session the registry may not know yet; it is ours if nobody's
                self._registered.add(sid)
                await fleet.register(pending.session, pending.expected_email)
            if fleet is not None and not fleet.may_read(sid):
                await self._reads.release(grant)  # no lease with time to spare: no read
                if pending.session.session_id in fleet.fences:
                    self._schedule(pending, self._clock.monotonic() + self.poll_interval)
                else:
                    self.watch(pending)  # another manager polls it now
                return
            result = await self._poll_once(pending, grant)
            if result is not None:
                await self._conclude(pending, result, None)
            elif pending._cancel_requested and not pending._unsure:
                pending._finish(error=pending._cancelled())
            else:
                self._schedule(pending, pending._next_at)
        except InstantlyError as exc:
            logger.warning("session %s ended with %s", session_key(pending.session.session_id),
                           type(exc).__name__)
            await self._conclude(pending, None, exc)
        except Exception as exc:  # a bug of ours must reach the awaiter, not kill the group
            logger.exception("unexpected error polling session %s",
                             session_key(pending.session.session_id))
            pending._finish(error=exc)
        finally:
            pending._in_step = False
            if not pending.done() and self._closing:
                pending._finish(error=ClientStateError("the OAuthManager closed first"))
            elif pending.done():
                self._hand_over_if_held(pending)
            if self._step_ended is not None:
                self._step_ended.set()
                self._step_ended = None

    def _hand_over_if_held(self, pending: PendingConnection) -> None:
        """A session ended here with no outcome stored while its lease is still ours (it was
        cancelled, or ended with an error that is no outcome): the fleet finishes it. Not while
        closing: the manager lets go of every lease then."""
        fleet, sid = self._fleet, pending.session.session_id
        if fleet is not None and sid in fleet.fences and not self._closing \
                and self._group is not None \
                and pending._result is None and not isinstance(pending._error, OutcomeLostError):
            self._group.start_soon(
                fleet.hand_over, sid, max(0.0, pending._deadline - self._clock.monotonic()))

    async def _conclude(self, pending: PendingConnection, result: ConnectResult | None,
                        error: BaseException | None) -> None:
        """Write the outcome ahead (first writer wins), then resolve with what was stored."""
        if self._fleet is not None:
            try:
                result, error = await self._fleet.write(pending.session.session_id, result,
                                                        error)
            except InstantlyError as exc:  # the registry is away: ours, unshared, still stands
                logger.warning("outcome of %s not stored: %s",
                               session_key(pending.session.session_id), type(exc).__name__)
        pending._finish(result=result, error=error)

    # -- the fleet: heartbeat, adoption, watchers ---------------------------------------------

    async def _beat(self, fleet: Fleet) -> None:
        """One renew for every lease this manager holds, every third of a lease; every tenth
        while the store cannot be reached, so the leases are renewed soon after it is back
        (before they lapse, for an outage shorter than about two thirds of a lease)."""
        while True:
            failed = False
            try:
                for session_id in await fleet.renew():
                    lost = self.pending.get(session_id)
                    if lost is not None and not lost._in_step:
                        self.watch(lost)
                failed = fleet.renew_failed
                again, fleet.registered_again = fleet.registered_again, []
                for session_id in again:  # held anew: one read before any verdict of its own
                    pending = self.pending.get(session_id)
                    if pending is not None and not pending.done():
                        now = self._clock.monotonic()
                        self._set_deadline(pending, max(pending._deadline,
                                                        now + 2 * self.poll_interval))
                        if not (pending._in_step or pending._due_seq):
                            self._schedule(pending, now)
            except InstantlyError as exc:
                logger.warning("registry heartbeat failed: %s", type(exc).__name__)
                failed = True
            await self._clock.sleep(fleet.lease / (10 if failed else 3))

    async def _adopt(self, fleet: Fleet) -> None:
        """Adoption of the workspace's orphans: once at start, then every two thirds of a lease
        (a dead owner's lapse), and at once when another manager releases leases as it closes
        (the registry tells of it: :data:`RELEASED`), also one that came during the last pass.
        Every manager of the fleet may try; one claim wins each session."""
        while not fleet.closed():
            await self._adopt_once(fleet)

    async def _adopt_once(self, fleet: Fleet) -> None:
        period = 2 * fleet.lease / 3
        try:
            heard = fleet.registry.releases(fleet.ns)
            for entry in await fleet.adopt():
                self.adopted(entry)
            if fleet.registry.releases(fleet.ns) == heard:  # none came during the pass
                await fleet.registry.wait(fleet.ns, RELEASED, within=period)
        except InstantlyError as exc:
            logger.info("adoption skipped: %s", type(exc).__name__)
            await self._clock.sleep(period)

    def adopted(self, entry: Entry) -> None:
        session, expected_email = decode_session(entry.data)
        age = None
        if self._fleet is not None:
            with contextlib.suppress(InstantlyError):  # never reached: counted from its Date
                age = max(0.0, self._fleet.registry.now() - entry.created_at)
        existing = self.pending.get(session.session_id)
        if existing is not None:
            if age is not None:
                self._set_deadline(existing, self._deadline_of(session, age))
            if not (existing.done() or existing._in_step or existing._due_seq):
                self._schedule(existing, self._clock.monotonic())  # it was watching: poll again
            return
        self.track(session, expected_email, self._clock.monotonic(), resumed=True, age=age)

    def watch(self, pending: PendingConnection) -> None:
        """Wait on the registry for the outcome another manager writes; no API budget spent.
        A handle still waiting when the manager closes ends with ``ClientStateError``."""
        if pending.done():
            return
        if self._group is None or self._fleet is None or self._closing:
            pending._finish(error=ClientStateError("the OAuthManager closed first"))
            return
        if self.pending.get(pending.session.session_id) is not pending:
            self._watching.add(pending)  # an attach() handle: abandon_all() ends it
        self._group.start_soon(self._watch_registry, pending, self._fleet)

    async def _watch_registry(self, pending: PendingConnection, fleet: Fleet) -> None:
        """Until the outcome is stored. An entry found missing (the store lost its data) is
        waited for a lease, the time a live owner takes to register it again; then the
        awaiters get ``UnknownSessionError``: nobody polls it, so no outcome will come."""
        try:
            await self._await_outcome(pending, fleet)
        finally:
            if pending.done():
                self._watching.discard(pending)

    async def _await_outcome(self, pending: PendingConnection, fleet: Fleet) -> None:
        session_id = pending.session.session_id
        missing_since: float | None = None
        while not pending.done():
            if session_id in fleet.fences and self.pending.get(session_id) is pending:
                return  # adopted again by this manager: the scheduler has this very handle
            try:
                entry = await fleet.registry.get(fleet.ns, session_id)
            except InstantlyError:
                entry, missing_since = None, None  # the store is away: nothing is known
            else:
                now = self._clock.monotonic()
                if entry is not None:
                    missing_since = None
                elif missing_since is None:
                    missing_since = now
                if missing_since is not None and now - missing_since > fleet.lease:
                    pending._finish(error=UnknownSessionError(
                        session_id, f"it vanished from the registry and no manager registered "
                        f"it again within {fleet.lease:g} s (the store lost its data?)"))
                    return
            if entry is not None and entry.outcome is not None:
                stored = decode_outcome(entry.outcome, session_id)
                if isinstance(stored, ConnectResult):
                    pending._finish(result=stored)
                else:
                    pending._finish(error=stored)
                return
            await fleet.registry.wait(fleet.ns, session_id, within=self.poll_interval)

    async def _poll_once(self, pending: PendingConnection, grant: Grant) -> ConnectResult | None:
        """Read the status once with ``grant``; None: poll again at ``_next_at``."""
        session = pending.session
        now = self._clock.monotonic()
        pending._next_at = now + self.poll_interval
        try:
            pending._polls += 1
            pending._reading = True
            try:
                status = await self._reads.status(session.session_id, grant,
                                                  provider=session.provider.value)
            finally:
                pending._reading = False
        except NotFoundError:
            pending._unsure = False
            return await self._outcomes.reconcile(
                session, pending.expected_email, "the status read answered 404")
        except RateLimitedError as exc:
            await self._reads.hold_back(exc.retry_after)
            pending._next_at = now  # again as soon as the block allows
            return None
        except (TransportError, ServerError, MalformedResponseError) as exc:
            pending._failures += 1
            pending._unsure = True
            logger.info("status of %s failed (%s); retrying", session_key(session.session_id),
                        type(exc).__name__)
            if (self._clock.monotonic() > pending._deadline
                    and pending._failures >= self._retry.attempts):
                return await self._outcomes.reconcile(
                    session, pending.expected_email, "no answer from the server past expiry")
            pending._next_at = self._clock.monotonic() + min(
                self.poll_interval, self._retry.delay(pending._failures, self._rng))
            return None
        pending._failures = 0
        pending._unsure = False
        if status.server_date is not None:
            self._set_deadline(
                pending, self._local_deadline(session.expires_at, status.server_date))
        if status.status is SessionStatus.PENDING:
            if self._clock.monotonic() > pending._deadline:
                return self._outcomes.expired(session, pending.expected_email)
            return None
        return await self._outcomes.conclude(
            session, status, pending.expected_email, cancelled=pending._cancel_requested)
