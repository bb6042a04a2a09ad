"""Polling: every pending session waits in one queue by when it is next due, and one scheduler
task reads the earliest due on a slot of the status budget.

No task sleeps on a pending session: it costs its records and a slot in the due queue and in the
reaper's calendar, so 10,000 of them are cheap. The scheduler takes a slot for the earliest due
session (first come, first served with account reads) and hands that one read to a worker; the
session is then rescheduled or finished. Deadlines are reckoned from the server's own ``Date``,
so a client clock minutes off changes nothing.

The poller holds its parts, each in a module of its own: the handle (``pending``), the
scheduler (``scheduler``) and its queue (``due``), the step (``step``), the deadlines and their
reaper (``deadlines``) and the fleet's side (``fleetside``).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Collection

import anyio.abc

from .._limits.clock import Clock
from .._observe.events import Outcome
from .._observe.stats import Tally
from .._stores.registry import Entry
from .._wire.exceptions import (
    ClientStateError,
    ConfigurationError,
    InstantlyError,
    SessionCancelledError,
)
from .._wire.models import OAuthSession, RetryPolicy
from .deadlines import Deadlines
from .entries import decode_session
from .fleet import Fleet, UnknownSessionError
from .fleetside import FleetSide
from .outcome import OutcomeLostError, Outcomes
from .pending import PendingConnection
from .reads import Reads
from .scheduler import Scheduler
from .step import Steps

__all__ = ["PendingConnection", "Poller"]


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
        self._outcomes = outcomes
        self._clock = clock
        self._tally = tally
        self._rng = rng
        self.poll_interval = poll_interval
        self.pending: dict[str, PendingConnection] = {}
        if fleet is not None:  # a session's records, for the in-process registry: its handle
            fleet.records_of = self.pending.get
        # one bound method for every session (``self._finished`` makes a new one each time)
        self._on_finish: Callable[[PendingConnection], None] = self._finished
        self._scheduler = Scheduler(reads, clock)
        self._deadlines = Deadlines(clock, fleet, poll_interval=poll_interval,
                                    expiry_grace=expiry_grace)
        self._side = FleetSide(fleet, clock, self._scheduler, self._deadlines, self.pending,
                               poll_interval=poll_interval, adopted=self.adopted)
        self._steps = Steps(reads, outcomes, clock, fleet=fleet, scheduler=self._scheduler,
                            deadlines=self._deadlines, side=self._side, retry=retry, rng=rng,
                            poll_interval=poll_interval)

    # -- sessions in, sessions out -----------------------------------------------------------

    def track(self, session: OAuthSession, expected_email: str | None, first_poll: float, *,
              resumed: bool = False, age: float | None = None) -> PendingConnection:
        """Register a session and queue its first poll. ``age``: how old the session is (by the
        registry's clock), for one adopted; else its life is counted from the init's ``Date``
        (and set right by the first status answer's)."""
        return self._track(self._handle(session, expected_email), first_poll, resumed=resumed,
                           age=age)

    def _handle(self, session: OAuthSession, expected_email: str | None) -> PendingConnection:
        return PendingConnection(session, expected_email, self._on_finish, clock=self._clock)

    def _track(self, pending: PendingConnection, first_poll: float, *, resumed: bool = False,
               age: float | None = None) -> PendingConnection:
        session = pending.session
        pending._key = self._tally.started(session.provider, session.session_id, resumed=resumed)
        self.pending[session.session_id] = pending
        self._deadlines.set_deadline(pending, self._deadlines.deadline_of(session, age))
        self._scheduler.schedule(pending, first_poll)
        return pending

    async def take_new(self, session: OAuthSession, expected_email: str | None, *,
                       closed: Callable[[], bool]) -> PendingConnection:
        """A session ``start()`` just created: registered with the fleet before the caller sees
        it, then polled from one interval on. A manager ``closed()`` meanwhile polls nothing
        more: the session is handed over to the fleet (raising ``ClientStateError`` that says
        where it went)."""
        fleet = self._fleet
        pending = self._handle(session, expected_email)
        if fleet is not None:  # known to the fleet before the caller sees it
            await fleet.register(session, expected_email, pending)
        if closed():  # closed while the init or its registration was under way
            sid = session.session_id
            if fleet is None:
                raise ClientStateError(
                    f"the OAuthManager closed while start() created session {sid}; nobody "
                    "polls it: resume() it on another manager")
            await fleet.hand_over(sid, 0.0, pending)
            raise ClientStateError(
                f"the OAuthManager closed while start() registered session {sid}; it was "
                f"handed over to the fleet: attach('{sid}') from another manager")
        return self._track(pending, self._clock.monotonic() + self.poll_interval)

    def resume(self, session: OAuthSession, expected_email: str | None) -> PendingConnection:
        """A session created elsewhere, polled at once (the handle it has here, if any)."""
        existing = self.pending.get(session.session_id)
        if existing is not None:
            return existing
        return self.track(session, expected_email, self._clock.monotonic(), resumed=True)

    async def attach(self, session_id: str) -> PendingConnection:
        """A handle on a session of the fleet (the one it has here, if any): it waits on the
        registry for the outcome. Raises ``UnknownSessionError`` for an id the registry does
        not know, ``ConfigurationError`` for a store without a registry."""
        existing = self.pending.get(session_id)
        if existing is not None:
            return existing
        if self._fleet is None:
            raise ConfigurationError("attach() needs a store with a session registry")
        entry = await self._fleet.registry.get(self._fleet.ns, str(session_id))
        if entry is None:
            raise UnknownSessionError(str(session_id))
        session, expected_email = decode_session(entry.data)
        pending = PendingConnection(session, expected_email, clock=self._clock)
        self.watch(pending)
        return pending

    def adopted(self, entry: Entry) -> None:
        """A session this manager's adoption won: polled at once (again, if it was watching)."""
        session, expected_email = decode_session(entry.data)
        age = None
        if self._fleet is not None:
            with contextlib.suppress(InstantlyError):  # never reached: counted from its Date
                age = max(0.0, self._fleet.registry.now() - entry.created_at)
        existing = self.pending.get(session.session_id)
        if existing is not None:
            if age is not None:
                self._deadlines.set_deadline(existing, self._deadlines.deadline_of(session, age))
            if not (existing.done() or existing._in_step or existing._due):
                # it was watching: poll again
                self._scheduler.schedule(existing, self._clock.monotonic())
            return
        self.track(session, expected_email, self._clock.monotonic(), resumed=True, age=age)

    def watch(self, pending: PendingConnection) -> None:
        """Wait on the registry for the outcome another manager writes; no API budget spent.
        A handle still waiting when the manager closes ends with ``ClientStateError``."""
        self._side.watch(pending)

    def _finished(self, pending: PendingConnection) -> None:
        """Bookkeeping for a session that just ended, however it ended."""
        self.pending.pop(pending.session.session_id, None)
        self._side.forget(pending.session.session_id)
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
            self._side.hand_over_if_held(pending)

    # -- running, and closing ----------------------------------------------------------------

    async def run(self, group: anyio.abc.TaskGroup) -> None:
        """The scheduler: until cancelled, a slot for the earliest due session, then its read.

        Beside it, the reaper ends sessions whose deadline passed while no read could be made.
        """
        group.start_soon(self._deadlines.reap, self._side.conclude)
        self._side.start(group)
        await self._scheduler.run(group, self._steps.step)

    def closing(self) -> None:
        """The manager is closing: no read starts, a step that ends from now on finishes its
        session, and an account read under way or to come gets ``close_fetch_wait`` seconds."""
        self._steps.closing = self._side.closing = self._scheduler.closing = True
        self._outcomes.closing(self._close_fetch_wait)

    def busy(self) -> set[str]:
        """The sessions in a step: a status read on the wire, or what follows from its answer
        (the account read, the outcome's write). Their answers are stored before they end."""
        return {sid for sid, pending in self.pending.items() if pending._in_step}

    async def settle(self, session_ids: Collection[str]) -> None:
        """Until none of these sessions is in a step."""
        await self._steps.settle(
            [p for sid in session_ids if (p := self.pending.get(sid)) is not None])

    def abandon_all(self) -> None:
        """Every session still pending, and every handle still waiting on the registry, ends
        with ``ClientStateError``."""
        for pending in [*self.pending.values(), *self._side.watching]:
            pending._finish(error=ClientStateError("the OAuthManager closed first"))
        self.pending.clear()
        self._side.watching.clear()
