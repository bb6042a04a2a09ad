"""The lease table: which sessions this manager holds in one workspace's registry, until when
by the store's clock, and so whether it may still decide for one, or start a read of it.

What is durable and what can still be lost: docs/FLEET.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .._limits.clock import Clock, SystemClock
from .._stores.registry import (
    Data,
    Entry,
    MemoryRegistry,
    Records,
    Registry,
    RegistryUnavailableError,
    data_text,
)

__all__ = ["Leases"]


def _none(session_id: str) -> None:
    """No records known (a manager's poller names its own: ``Leases.records_of``)."""


class Leases:
    """The leases one manager holds in one workspace's registry, by session id, and the
    registry's calls made in its name."""

    def __init__(self, registry: Registry, ns: str, owner: str, *, lease: float,
                 retention: float, read_margin: float, clock: Clock | None = None) -> None:
        self.registry = registry
        self._clock = clock or SystemClock()
        self.ns = ns
        self.owner = owner
        self.lease = lease
        self.retention = retention
        self._read_margin = read_margin
        self.fences: dict[str, int] = {}
        # Until when each lease held is good, by the store's clock: the common end of those the
        # last renew extended together (one figure, not one per session), else the session's
        # own (registered or claimed since; lost ones as they were). None: none known.
        self._common: float | None = None
        self._until: dict[str, float | None] = {}
        self._unregistered: dict[str, str] = {}  # started while the store was away
        # When each of those was sent to the registry, plus a lease (this manager's clock). The
        # step went unanswered, not surely undone: it may have reached the store, whose lease
        # then ends no earlier than this; past it another manager may hold the session.
        self._unconfirmed: dict[str, float] = {}
        # Every session held, as registered (to register again), see data_of(). On the
        # in-process registry none is kept here: the session's handle is its records, and the
        # poller holds it (``records_of``, set by the poller), so no dict entry a session.
        self._data: dict[str, Data] = {}
        self._lazy = isinstance(registry, MemoryRegistry)
        self.records_of: Callable[[str], Records | None] = _none
        # Outcomes decided while the store was away: (outcome, rank), written by the next renew
        # that reaches it; their leases are kept meanwhile, so nobody adopts and reads again.
        self._unwritten: dict[str, tuple[str, int]] = {}
        self._held: dict[str, int] = {}  # closing: leases kept until their reads ended
        # A session's outcome being written ahead, and a lost session being registered again
        # (set when done), so that neither runs inside the other for one session: a renew on
        # its way registered again a session whose outcome had just been given (found gone
        # from a wiped registry, its lease lapsed in a pause): a lease nobody read on, which
        # another manager adopted once it lapsed, and read again after the one-time answer
        # (the chaos soak, seed 2 on Redis).
        self._concluding: set[str] = set()
        self._registering: dict[str, asyncio.Event] = {}

    @property
    def read_margin(self) -> float:
        """A read starts only while its lease has more than this left (seconds)."""
        return self._read_margin

    def _hold(self, entry: Entry, data: Data | None = None) -> None:
        self.fences[entry.session_id] = entry.fence
        self._until[entry.session_id] = entry.lease_until
        if not self._lazy:
            self._data[entry.session_id] = entry.data if data is None else data

    def data_of(self, session_id: str) -> Data | None:
        """The session as registered, to register it again (None: not known here)."""
        data = self._data.get(session_id)
        if data is None and self._lazy:
            return self.records_of(session_id)
        return data

    def drop(self, session_id: str) -> None:
        self._unwritten.pop(session_id, None)
        self.fences.pop(session_id, None)
        self._until.pop(session_id, None)
        self._confirmed(session_id)
        self._data.pop(session_id, None)

    def _lease_end(self, session_id: str) -> float | None:
        """Until when the lease on ``session_id`` is good (store's clock); None: not held."""
        until = self._until
        if session_id in until:
            return until[session_id]
        return self._common if session_id in self.fences else None

    def _renewed(self, began: float, lost: list[str]) -> None:
        """A renew begun at ``began`` extended every lease held but ``lost``: each ends no
        earlier than ``began`` plus a lease."""
        self._until = {sid: self._lease_end(sid) for sid in lost if sid in self.fences}
        self._common = began + self.lease

    def _unanswered(self, session_id: str, text: str, sent: float) -> None:
        """Its registration, sent at ``sent``, went unanswered: held locally for now."""
        self._until[session_id] = None  # no lease the store confirmed
        self._unregistered[session_id] = text
        self._unconfirmed.setdefault(session_id, sent + self.lease)  # the first try's lease
        self._data[session_id] = text
        self.fences[session_id] = 1

    def _confirmed(self, session_id: str) -> None:
        """The registry answered for it at last (or it is dropped)."""
        self._unregistered.pop(session_id, None)
        self._unconfirmed.pop(session_id, None)

    def holds(self, session_id: str) -> bool:
        """Whether this manager's lease on ``session_id`` is still good by the store's clock
        (always for one kept at close for its step; for a session whose registration went
        unanswered, within the lease that registration would have granted). A lease that
        lapsed (this process was paused, say) may be another's by now: whoever holds none
        decides nothing for the fleet."""
        if session_id in self._held:
            return True
        unconfirmed = self._unconfirmed.get(session_id)
        if unconfirmed is not None:
            return unconfirmed > self._clock.monotonic()
        until = self._lease_end(session_id)
        if until is None:
            return False
        try:
            return until > self.registry.now()
        except RegistryUnavailableError:
            return True  # never reached: every lease held is of a session not registered yet

    def may_read(self, session_id: str) -> bool:
        """True while this manager's lease has more time left than a read can take. For a
        session whose registration went unanswered (the store away, or slower than its
        timeout, or this process paused as it waited), the lease is the one that registration
        would have granted, timed from when it was sent by this manager's clock: the store may
        have registered it, and then another manager adopts it once that lease lapses. Past it,
        no read until the registry answers (the heartbeat registers it)."""
        unconfirmed = self._unconfirmed.get(session_id)
        if unconfirmed is not None:
            return unconfirmed - self._clock.monotonic() > self._read_margin
        until = self._lease_end(session_id)
        return until is not None and until - self.registry.now() > self._read_margin

    async def _register(self, session_id: str, data: Data) -> Entry:
        """Register ``session_id`` as this manager's (the entry already there, if any)."""
        registry = self.registry
        if isinstance(registry, MemoryRegistry):
            return await registry.register(self.ns, session_id, data, owner=self.owner,
                                           lease=self.lease, retention=self.retention)
        return await registry.register(self.ns, session_id,
                                       data_text(data),
                                       owner=self.owner, lease=self.lease,
                                       retention=self.retention)
