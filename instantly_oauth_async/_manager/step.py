"""A step: one status read of a pending session, on the slot the scheduler took for it, and
what follows from its answer: the session is rescheduled (pending, or no clear answer yet),
concluded (an answer, reconciled when the server no longer knows it), or left to the manager
that now holds its lease. ``cancel()`` never interrupts a step.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection

import anyio

from .._limits.clock import Clock
from .._limits.limiter import Grant
from .._wire.exceptions import (
    ClientStateError,
    InstantlyError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    session_key,
)
from .._wire.models import RetryPolicy, SessionStatus
from .deadlines import Deadlines
from .fleet import Fleet
from .fleetside import FleetSide
from .outcome import ConnectResult, Outcomes
from .pending import PendingConnection
from .reads import Reads
from .scheduler import Scheduler

__all__ = ["Steps"]

logger = logging.getLogger("instantly_oauth_async")


class Steps:
    """The steps of one manager's poller: each a read and what its answer decides."""

    def __init__(self, reads: Reads, outcomes: Outcomes, clock: Clock, *, fleet: Fleet | None,
                 scheduler: Scheduler, deadlines: Deadlines, side: FleetSide,
                 retry: RetryPolicy, rng: random.Random, poll_interval: float) -> None:
        self._reads = reads
        self._outcomes = outcomes
        self._clock = clock
        self._fleet = fleet
        self._scheduler = scheduler
        self._deadlines = deadlines
        self._side = side
        self._retry = retry
        self._rng = rng
        self._poll_interval = poll_interval
        #: The manager is closing: no read starts, and a step that ends finishes its session.
        self.closing = False
        self._ended: anyio.Event | None = None  # set when a step ends: settle()

    async def settle(self, steps: Collection[PendingConnection]) -> None:
        """Until none of these sessions is in a step."""
        while any(pending._in_step for pending in steps):
            if self._ended is None:
                self._ended = anyio.Event()
            await self._ended.wait()

    async def step(self, pending: PendingConnection, grant: Grant) -> None:
        """One status read for ``pending`` and what follows from it; reschedules or finishes.

        ``grant`` is the read's slot, released as soon as the read has ended, however it ended.
        ``pending.cancel()`` never interrupts a step: the read's answer may be one the server
        gives only once, so the step ends the session with it (or as cancelled when the answer
        was "pending"). Closing the manager cancels steps outright.
        """
        try:
            if self.closing:  # the manager closes: no read starts (its lease is let go)
                await self._reads.release(grant)
                return
            if pending._cancel_requested and not pending._unsure:
                await self._reads.release(grant)
                pending._finish(error=pending._cancelled())
                return
            fleet, sid = self._fleet, pending.session.session_id
            if fleet is not None and sid not in fleet.fences:  # (else held: nothing to register)
                await self._side.register(pending)
            if fleet is not None and not fleet.may_read(sid):
                await self._reads.release(grant)  # no lease with time to spare: no read
                if sid in fleet.fences:
                    self._scheduler.schedule(pending,
                                             self._clock.monotonic() + self._poll_interval)
                else:
                    self._side.watch(pending)  # another manager polls it now
                return
            result = await self._poll_once(pending, grant)
            if result is not None:
                await self._side.conclude(pending, result, None)
            elif pending._cancel_requested and not pending._unsure:
                pending._finish(error=pending._cancelled())
            else:
                self._scheduler.schedule(pending, pending._next_at)
        except InstantlyError as exc:
            logger.warning("session %s ended with %s", session_key(pending.session.session_id),
                           type(exc).__name__)
            await self._side.conclude(pending, None, exc)
        except Exception as exc:  # a bug of ours must reach the awaiter, not kill the group
            logger.exception("unexpected error polling session %s",
                             session_key(pending.session.session_id))
            pending._finish(error=exc)
        finally:
            pending._in_step = False
            if not pending.done() and self.closing:
                pending._finish(error=ClientStateError("the OAuthManager closed first"))
            elif pending.done():
                self._side.hand_over_if_held(pending)
            if self._ended is not None:
                self._ended.set()
                self._ended = None

    async def _poll_once(self, pending: PendingConnection, grant: Grant) -> ConnectResult | None:
        """Read the status once with ``grant``; None: poll again at ``_next_at``."""
        session = pending.session
        now = self._clock.monotonic()
        pending._next_at = now + self._poll_interval
        try:
            pending._polls += 1
            status = await self._reads.status(session.session_id, grant,
                                              provider=session.provider.value)
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
                self._poll_interval, self._retry.delay(pending._failures, self._rng))
            return None
        pending._failures = 0
        pending._unsure = False
        if status.server_date is not None:
            self._deadlines.set_deadline(
                pending, self._deadlines.local_deadline(session.expires_at, status.server_date))
        if status.status is SessionStatus.PENDING:
            if self._clock.monotonic() > pending._deadline:
                return self._outcomes.expired(session, pending.expected_email)
            return None
        return await self._outcomes.conclude(
            session, status, pending.expected_email, cancelled=pending._cancel_requested)
