"""The poller's side of the fleet: whose sessions this manager reads, and how it learns the
outcome of one it does not. The heartbeat renews its leases (a session whose lease was lost is
watched instead), adoption claims the workspace's orphans, a watcher waits on the registry for
an outcome another manager writes (``attach()``), each outcome is written ahead before its
awaiters get it, and a session that ends here without one is handed over to the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio.abc

from .._limits.clock import Clock
from .._stores.registry import RELEASED, Entry
from .._wire.exceptions import ClientStateError, InstantlyError, session_key
from .deadlines import Deadlines
from .entries import decode_outcome
from .fleet import Fleet, UnknownSessionError
from .outcome import ConnectResult, OutcomeLostError
from .pending import PendingConnection
from .scheduler import Scheduler
from .writeahead import HOLDERS_OUTCOME

__all__ = ["FleetSide"]

logger = logging.getLogger("instantly_oauth_async")


class FleetSide:
    """The poller's tasks and decisions for the fleet, if any (without one: no task, and each
    outcome is only this manager's)."""

    def __init__(self, fleet: Fleet | None, clock: Clock, scheduler: Scheduler,
                 deadlines: Deadlines, pending: dict[str, PendingConnection], *,
                 poll_interval: float, adopted: Callable[[Entry], None]) -> None:
        self._fleet = fleet
        self._clock = clock
        self._scheduler = scheduler
        self._deadlines = deadlines
        self._pending = pending  # the poller's own sessions, by id
        self._poll_interval = poll_interval
        self._adopted = adopted  # an adopted session, for the poller to track
        self._group: anyio.abc.TaskGroup | None = None
        #: The manager is closing: no watcher starts, and nothing is handed over.
        self.closing = False
        self._registered: set[str] = set()  # resumed sessions offered to the registry
        #: attach() handles waiting on the registry, ended with the manager if still waiting.
        self.watching: set[PendingConnection] = set()

    def start(self, group: anyio.abc.TaskGroup) -> None:
        """The heartbeat and adoption, with a fleet; watchers and hand-overs start in ``group``
        from now on."""
        self._group = group
        if self._fleet is not None:
            group.start_soon(self._beat, self._fleet)
            group.start_soon(self._adopt, self._fleet)

    # -- sessions of this manager ------------------------------------------------------------

    async def register(self, pending: PendingConnection) -> None:
        """resume(): a session the registry may not know yet; it is ours if nobody's."""
        fleet, sid = self._fleet, pending.session.session_id
        if fleet is not None and sid not in fleet.fences and sid not in self._registered:
            self._registered.add(sid)
            await fleet.register(pending.session, pending.expected_email, pending)

    def forget(self, session_id: str) -> None:
        """The session ended: one resumed again is offered to the registry again."""
        self._registered.discard(session_id)

    async def conclude(self, pending: PendingConnection, result: ConnectResult | None,
                       error: BaseException | None) -> None:
        """Write the outcome ahead (first writer wins), then resolve with what was stored
        (or, for a lost outcome of a session another manager holds, with what it stores)."""
        if self._fleet is not None:
            try:
                written = await self._fleet.write(pending.session.session_id, result, error)
            except InstantlyError as exc:  # the registry is away: ours, unshared, still stands
                logger.warning("outcome of %s not stored: %s",
                               session_key(pending.session.session_id), type(exc).__name__)
            else:
                if written is HOLDERS_OUTCOME:
                    self.watch(pending)
                    return
                result, error = written
        pending._finish(result=result, error=error)

    def hand_over_if_held(self, pending: PendingConnection) -> None:
        """A session ended here with no outcome stored while its lease is still ours (it was
        cancelled, or ended with an error that is no outcome): the fleet finishes it. Not while
        closing: the manager lets go of every lease then."""
        fleet, sid = self._fleet, pending.session.session_id
        if fleet is not None and sid in fleet.fences and not self.closing \
                and self._group is not None \
                and pending._result is None and not isinstance(pending._error, OutcomeLostError):
            self._group.start_soon(
                fleet.hand_over, sid, max(0.0, pending._deadline - self._clock.monotonic()),
                pending)

    # -- heartbeat and adoption --------------------------------------------------------------

    async def _beat(self, fleet: Fleet) -> None:
        """One renew for every lease this manager holds, every third of a lease; every tenth
        while the store cannot be reached, so the leases are renewed soon after it is back
        (before they lapse, for an outage shorter than about two thirds of a lease)."""
        while True:
            failed = False
            try:
                for session_id in await fleet.renew():
                    lost = self._pending.get(session_id)
                    if lost is not None and not lost._in_step:
                        self.watch(lost)
                failed = fleet.renew_failed
                again, fleet.registered_again = fleet.registered_again, []
                for session_id in again:  # held anew: one read before any verdict of its own
                    pending = self._pending.get(session_id)
                    if pending is not None and not pending.done():
                        now = self._clock.monotonic()
                        self._deadlines.set_deadline(
                            pending, max(pending._deadline, now + 2 * self._poll_interval))
                        if not (pending._in_step or pending._due):
                            self._scheduler.schedule(pending, now)
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
                self._adopted(entry)
            if fleet.registry.releases(fleet.ns) == heard:  # none came during the pass
                await fleet.registry.wait(fleet.ns, RELEASED, within=period)
        except InstantlyError as exc:
            logger.info("adoption skipped: %s", type(exc).__name__)
            await self._clock.sleep(period)

    # -- sessions another manager polls ------------------------------------------------------

    def watch(self, pending: PendingConnection) -> None:
        """Wait on the registry for the outcome another manager writes; no API budget spent.
        A handle still waiting when the manager closes ends with ``ClientStateError``."""
        if pending.done():
            return
        if self._group is None or self._fleet is None or self.closing:
            pending._finish(error=ClientStateError("the OAuthManager closed first"))
            return
        if self._pending.get(pending.session.session_id) is not pending:
            self.watching.add(pending)  # an attach() handle: abandon_all() ends it
        self._group.start_soon(self._watch_registry, pending, self._fleet)

    async def _watch_registry(self, pending: PendingConnection, fleet: Fleet) -> None:
        """Until the outcome is stored. An entry found missing (the store lost its data) is
        waited for a lease, the time a live owner takes to register it again; then the
        awaiters get ``UnknownSessionError``: nobody polls it, so no outcome will come."""
        try:
            await self._await_outcome(pending, fleet)
        finally:
            if pending.done():
                self.watching.discard(pending)

    async def _await_outcome(self, pending: PendingConnection, fleet: Fleet) -> None:
        session_id = pending.session.session_id
        missing_since: float | None = None
        while not pending.done():
            if session_id in fleet.fences and self._pending.get(session_id) is pending:
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
            await fleet.registry.wait(fleet.ns, session_id, within=self._poll_interval)
