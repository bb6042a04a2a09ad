"""The lease table: which sessions this manager holds in one workspace's registry, until when
by the store's clock, and so whether it may still decide for one, or start a read of it.

What is durable and what can still be lost: docs/FLEET.md.
"""

from __future__ import annotations

from .._stores.registry import Data, Entry, MemoryRegistry, Registry, RegistryUnavailableError

__all__ = ["Leases"]


class Leases:
    """The leases one manager holds in one workspace's registry, by session id, and the
    registry's calls made in its name."""

    def __init__(self, registry: Registry, ns: str, owner: str, *, lease: float,
                 retention: float, read_margin: float) -> None:
        self.registry = registry
        self.ns = ns
        self.owner = owner
        self.lease = lease
        self.retention = retention
        self._read_margin = read_margin
        self.fences: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self._unregistered: dict[str, str] = {}  # started while the store was away
        # Every session held, as registered (to register again): on the in-process registry
        # the same callable its entry keeps, not the JSON (see MemoryRegistry).
        self._data: dict[str, Data] = {}
        self._lazy = isinstance(registry, MemoryRegistry)
        # Outcomes decided while the store was away: (outcome, rank), written by the next renew
        # that reaches it; their leases are kept meanwhile, so nobody adopts and reads again.
        self._unwritten: dict[str, tuple[str, int]] = {}
        self._held: dict[str, int] = {}  # closing: leases kept until their reads ended

    @property
    def read_margin(self) -> float:
        """A read starts only while its lease has more than this left (seconds)."""
        return self._read_margin

    def _hold(self, entry: Entry, data: Data | None = None) -> None:
        self.fences[entry.session_id] = entry.fence
        self._until[entry.session_id] = entry.lease_until
        self._data[entry.session_id] = entry.data if data is None else data

    def drop(self, session_id: str) -> None:
        self._unwritten.pop(session_id, None)
        self.fences.pop(session_id, None)
        self._until.pop(session_id, None)
        self._unregistered.pop(session_id, None)
        self._data.pop(session_id, None)

    def holds(self, session_id: str) -> bool:
        """Whether this manager's lease on ``session_id`` is still good by the store's clock
        (always for a session the registry has not got yet, or one kept at close for its
        step). A lease that lapsed (this process was paused, say) may be another's by now:
        whoever holds none decides nothing for the fleet."""
        if session_id in self._unregistered or session_id in self._held:
            return True
        until = self._until.get(session_id)
        if until is None:
            return False
        try:
            return until > self.registry.now()
        except RegistryUnavailableError:
            return True  # never reached: every lease held is of a session not registered yet

    def may_read(self, session_id: str) -> bool:
        """True while this manager's lease has more time left than a read can take; always
        for a session the registry has not got yet (nobody else can know it, so nobody else
        reads it: not even a store never reached, whose clock is unknown, stops its reads)."""
        if session_id in self._unregistered:
            return True
        until = self._until.get(session_id)
        return until is not None and until - self.registry.now() > self._read_margin

    async def _register(self, session_id: str, data: Data) -> Entry:
        """Register ``session_id`` as this manager's (the entry already there, if any)."""
        registry = self.registry
        if isinstance(registry, MemoryRegistry):
            return await registry.register(self.ns, session_id, data, owner=self.owner,
                                           lease=self.lease, retention=self.retention)
        return await registry.register(self.ns, session_id,
                                       data if isinstance(data, str) else data(),
                                       owner=self.owner, lease=self.lease,
                                       retention=self.retention)
