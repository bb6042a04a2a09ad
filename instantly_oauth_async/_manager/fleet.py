"""The manager's side of the session registry: sessions registered before ``start()`` returns,
the lease of the one poller of each, the heartbeat that renews them, adoption of orphans,
outcomes written ahead of any future, and watchers that wait on the registry, not the API.

Here, the leases over time: registered, renewed, registered again, handed over, adopted and let
go. The lease table itself is in ``leases``, the outcomes written ahead in ``writeahead``, what
an entry holds in ``entries``; the poller's tasks for the fleet in ``fleetside``.

What is durable and what can still be lost: docs/FLEET.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Collection

import anyio

from .._limits.clock import Clock
from .._stores.contract import Records, data_text
from .._stores.registry import Data, Entry, MemoryRegistry, Registry, RegistryUnavailableError
from .._wire.exceptions import InstantlyError, session_key
from .._wire.models import OAuthSession
from .entries import decode_outcome, decode_session, encode_outcome, encode_session, session_data
from .leases import Leases
from .outcome import ConnectResult
from .writeahead import WriteAhead, Written

__all__ = ["Fleet", "UnknownSessionError", "decode_outcome", "decode_session",
           "encode_outcome", "encode_session"]

logger = logging.getLogger("instantly_oauth_async")


class UnknownSessionError(InstantlyError):
    """``attach()`` was given a session id the registry does not know (never registered in this
    workspace, or decided longer ago than the retention); or a session awaited through
    ``attach()`` vanished from the registry and no manager registered it again within a lease
    (its store lost its data, say a Redis restarted without persistence, while no live manager
    held the session). Either way nobody polls it: this is not an outcome of the session."""

    def __init__(self, session_id: str, detail: str = "") -> None:
        self.session_id = session_id
        super().__init__(f"no session {session_id} in this workspace's registry"
                         + (f": {detail}" if detail else ""))


class Fleet(Leases):
    """The leases this manager holds in one workspace's registry, by session id."""

    def __init__(self, registry: Registry, ns: str, owner: str, *, lease: float,
                 retention: float, read_margin: float, clock: Clock | None = None) -> None:
        super().__init__(registry, ns, owner, lease=lease, retention=retention,
                         read_margin=read_margin, clock=clock)
        self._ahead = WriteAhead(self)
        self._closed = False  # closing: it adopts nothing more
        self._adopting = anyio.Lock()  # an adoption pass; release_all waits for it to end
        # Sessions this manager handed over without an outcome (cancelled): it does not adopt
        # them back before the time given (the store's clock), their deadline.
        self._shunned: dict[str, float] = {}
        self._rng = random.Random()  # noqa: S311 - spreads claims, no secret
        #: The last renew could not reach the store (the heartbeat tries again sooner).
        self.renew_failed = False
        #: Sessions a renew registered again (the registry had lost them), for the poller.
        self.registered_again: list[str] = []
        # Hand-overs the store did not answer (slow, or away): their data, tried again by each
        # heartbeat until one reaches it, so another manager adopts them at once even then.
        self._handing: dict[str, Data] = {}

    def __repr__(self) -> str:
        return f"<Fleet leases={len(self.fences)} lease={self.lease:g}s>"

    def closed(self) -> bool:
        """Whether the manager is closing (:meth:`release_all` was called)."""
        return self._closed

    async def register(self, session: OAuthSession, expected_email: str | None,
                       records: Records | None = None) -> None:
        """Register (and hold) a new session. While the registry's store is away, the session
        is held locally and registered when the store is back (:meth:`renew` does it). The
        unanswered registration may still have reached the store, so it is read only within
        the lease that would have granted (:meth:`may_read`). ``records``: the session's handle,
        which the in-process registry keeps as its data (encoded when read)."""
        data = records if self._lazy and records is not None else \
            session_data(session, expected_email, lazy=self._lazy)
        sent = self._clock.monotonic()
        try:
            entry = await self._register(session.session_id, data)
        except RegistryUnavailableError:
            self._unanswered(session.session_id, data_text(data), sent)
            return
        if entry.owner == self.owner and not entry.decided:
            self._hold(entry, data)

    async def write(self, session_id: str, result: ConnectResult | None,
                    error: BaseException | None) -> Written:
        """Store the outcome ahead of any future; what to resolve with (the stored winner),
        or ``HOLDERS_OUTCOME`` (wait for another manager's)."""
        return await self._ahead.write(session_id, result, error)

    async def renew(self) -> list[str]:
        """One step renewing every lease held; the ids whose lease was lost.

        While the store is away, nothing is extended: a lease is good for as long as the store
        last confirmed it (by its clock), so a read starts only while the store's own view
        gives it time to spare. After an outage, or across a network split, another manager
        may find the lease lapsed and adopt the session: this one has stopped reading it by
        then. :attr:`renew_failed` tells the heartbeat to try again soon.

        A session the registry no longer knows at all (its store came back without its data: a
        Redis restarted without persistence, or failed over to a replica that had not got it)
        is registered again, as new (fence 1), and kept: nobody else can have claimed what the
        registry did not hold, and its waiters find it again.
        """
        if self._handing:
            try:
                for session_id, data in list(self._handing.items()):
                    await self._let_go(session_id, data)
                    del self._handing[session_id]
            except RegistryUnavailableError:
                self.renew_failed = True
                return []
        if not self.fences:
            self.renew_failed = False
            return []
        try:
            began: float | None = self.registry.now_at_least()
        except RegistryUnavailableError:
            began = None  # never reached: every lease held is of a session not registered yet
        try:
            await self._ahead.write_unwritten()
            for session_id, data in list(self._unregistered.items()):
                entry = await self._register(session_id, data)
                self._confirmed(session_id)
                if entry.owner != self.owner or entry.decided:
                    self.drop(session_id)
                else:
                    self._hold(entry)  # its lease, on the store's clock
            registry = self.registry
            if isinstance(registry, MemoryRegistry):  # one shared expiry, not one per lease
                lost = await registry.renew_owned(self.ns, self.owner, self.fences,
                                                  lease=self.lease)
            else:
                lost = await registry.renew(self.ns, self.owner, dict(self.fences),
                                            lease=self.lease)
        except RegistryUnavailableError:
            self.renew_failed = True
            return []
        self.renew_failed = False
        if began is not None:  # else each was just registered, and holds that lease
            self._renewed(began, lost)  # each ends no earlier than began plus a lease
        return [sid for sid in lost if not await self._register_again(sid)]

    async def _register_again(self, session_id: str) -> bool:
        """After a renew named ``session_id`` lost: True when the registry had forgotten it and
        it is ours again; else it is dropped (decided, or another manager holds it). One whose
        outcome was decided while the store was away (its write failed as this renew was on
        its way) is stored anew with that outcome, never held again undecided: its poller is
        done with it, so a lease held on it would keep every other manager from deciding it.
        Not one whose outcome is being written: that write drops it, or stores it anew."""
        if session_id in self._concluding:
            return False
        done = self._registering[session_id] = asyncio.Event()
        try:
            return await self._register_anew(session_id)
        finally:
            del self._registering[session_id]
            done.set()

    async def _register_anew(self, session_id: str) -> bool:
        data = self.data_of(session_id)
        unwritten = self._unwritten.get(session_id)
        if unwritten is not None and data is not None:
            try:
                await self._ahead.store_anew(session_id, data, *unwritten)
            except RegistryUnavailableError:
                return False  # kept, with its outcome: the next heartbeat writes it
            self.drop(session_id)
            return False
        self.drop(session_id)
        if data is None:
            return False
        try:
            entry = await self._register(session_id, data)
        except RegistryUnavailableError:
            return False  # lost for now: the poller's next step tries to register it
        if entry.owner != self.owner or entry.decided \
                or entry.lease_until - self.registry.now() <= self._read_margin:
            return False  # not made anew by this call: lost indeed
        logger.warning("session %s was missing from the registry (its store lost its data): "
                       "registered again", session_key(session_id))
        self._hold(entry)
        self.registered_again.append(session_id)
        return True

    async def hand_over(self, session_id: str, shun_for: float,
                        records: Records | None = None) -> None:
        """Let go of one session that ended here without an outcome (cancelled): another
        manager adopts it and polls it to its real outcome. This one does not adopt it back for
        ``shun_for`` seconds (until its deadline): then, if still nobody decided it, it reads
        it once more itself. A store that does not answer (slow, or away) gets it again at
        each heartbeat, until one reaches it (or its lease lapses meanwhile). ``records``: the
        session's handle, for one the poller no longer holds."""
        if session_id in self._unwritten:
            return  # it has an outcome, to be written when the store is back: kept till then
        if self._closed:
            return  # closing: release_all lets go of every lease, this one with them
        fence = self.fences.get(session_id)
        data = self.data_of(session_id)
        if data is None:
            data = records
        self._confirmed(session_id)  # never registered: nothing to hand over
        if fence is None or data is None or not self.holds(session_id):
            self.drop(session_id)  # not ours (any more): nothing to hand over
            return
        try:
            self._shunned[session_id] = self.registry.now() + shun_for
            with anyio.CancelScope(shield=True):  # bounded by the store's timeout
                await self._let_go(session_id, data)
        except RegistryUnavailableError as exc:
            logger.info("session %s not handed over yet (%s): the heartbeat tries again",
                        session_key(session_id), type(exc).__name__)
            self._handing[session_id] = data
        finally:
            self.drop(session_id)

    async def _let_go(self, session_id: str, data: Data) -> None:
        """Release the lease of a session handed over. Registered again first if the registry
        lost it (a Redis restarted empty): else nobody would ever poll it, and its waiters
        would never learn its end. Nothing when another manager holds it, or it is decided."""
        entry = await self._register(session_id, data)
        if entry.owner == self.owner and not entry.decided:
            await self.registry.release(self.ns, self.owner, {session_id: entry.fence})

    def _forget_shunned(self, now: float) -> None:
        for session_id, until in list(self._shunned.items()):
            if until <= now:
                del self._shunned[session_id]

    async def adopt(self, limit: int = 100, *, passes: int = 10) -> list[Entry]:
        """Claim the workspace's orphans (exactly one claimer wins each): ``limit`` a look, and
        another look while one found ``limit`` (at most ``passes``). Nothing once this manager
        is closing. Each manager claims them in an order of its own, so managers woken by one
        release mostly claim different sessions instead of racing for the same ones."""
        won: list[Entry] = []
        async with self._adopting:
            try:
                for _ in range(passes):
                    found = await self.registry.orphans(self.ns, limit=limit)
                    self._rng.shuffle(found)
                    now = self.registry.now()
                    self._forget_shunned(now)
                    for session_id in found:
                        if self._closed:
                            return won
                        if session_id in self._shunned:  # due ones were just forgotten
                            continue
                        entry = await self.registry.claim(self.ns, session_id, self.owner,
                                                          lease=self.lease)
                        if entry is not None:
                            self._hold(entry)
                            won.append(entry)
                    if len(found) < limit:
                        break
            except InstantlyError as exc:
                if not won:
                    raise
                # What was won is held: it must be polled, whatever cut the pass short.
                logger.info("adoption cut short after %d sessions: %s", len(won),
                            type(exc).__name__)
        return won

    async def release_all(self, busy: Collection[str] = ()) -> None:
        """Let go of every lease, as the manager closes; no adoption after this (an adoption
        pass under way ends first, and what it won is let go too). The registry tells the other
        managers, who adopt at once. A session with a read in flight (``busy``) is not let go
        yet but its lease shortened to the read margin, so nobody reads it while that read may
        still be on the wire: :meth:`release_held` lets go of those once their reads ended
        (if it never comes, their leases lapse by then)."""
        self._closed = True
        self._until.clear()  # no read starts from now on (may_read is False)
        self._common = None
        async with self._adopting:
            if self._unwritten:
                try:
                    await self._ahead.write_unwritten()
                except RegistryUnavailableError:
                    logger.warning("%d outcomes decided while the registry was unreachable "
                                   "were never stored: other managers will find those "
                                   "sessions lost", len(self._unwritten))
            handing, self._handing = self._handing, {}
            with contextlib.suppress(RegistryUnavailableError):  # else their leases lapse
                for session_id, data in handing.items():
                    await self._let_go(session_id, data)
            if not self.fences:
                return
            fences, self.fences = dict(self.fences), {}
            self._until.clear()
            held = {sid: fence for sid, fence in fences.items() if sid in busy}
            free = {sid: fence for sid, fence in fences.items() if sid not in busy}
            if held:
                self._held = held
                await self.registry.renew(self.ns, self.owner, held, lease=self._read_margin)
            await self.registry.release(self.ns, self.owner, free)

    def holding(self) -> bool:
        """Whether :meth:`release_all` kept leases for reads in flight."""
        return bool(self._held)

    async def release_held(self) -> None:
        """Let go of the leases :meth:`release_all` kept for reads in flight, now ended (one
        decided meanwhile is left as it is)."""
        held, self._held = self._held, {}
        await self.registry.release(self.ns, self.owner, held)
