"""The session registry's contract: :class:`Registry`, the :class:`Entry` it hands out, the
outcome ranks and the error of a store out of reach (``registry`` says what every
implementation keeps, and holds the in-process one)."""


from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs

from .._wire.exceptions import InstantlyError

__all__ = ["ANSWER", "EXPIRED", "LOST", "RELEASED", "Data", "Entry", "Records", "Registry",
           "RegistryUnavailableError"]

LOST, EXPIRED, ANSWER = 1, 2, 3  # outcome precedence ranks
#: The id :meth:`Registry.wait` takes to wait for a release in the namespace (no session has
#: it): a manager closing lets go of its leases, and the others adopt them at once.
RELEASED = ""


class RegistryUnavailableError(InstantlyError):
    """The registry's store could not be reached: refused, reset, slower than its timeout, or
    busy for now (``BUSY``, ``LOADING``, ``MASTERDOWN``, ``TRYAGAIN``).

    The step may or may not have happened. Every step may be repeated: ``register`` returns the
    entry already there, a repeated ``claim`` by the same owner bumps the fence once more (the
    owner holds the newer one), and ``renew``, ``release`` and ``decide`` are idempotent. So
    retry it later; the registry keeps no local copy meanwhile.
    """


@attrs.frozen
class Entry:
    """One session as the registry holds it; ``data`` and ``outcome`` are opaque JSON."""

    session_id: str
    data: str
    created_at: float
    owner: str | None
    fence: int
    lease_until: float
    outcome: str | None = None
    rank: int = 0

    @property
    def decided(self) -> bool:
        return self.outcome is not None


@runtime_checkable
class Registry(Protocol):
    """The sessions of every workspace sharing the store, by namespace ``ns`` (one workspace)."""

    def now(self) -> float:
        """The store's clock, in seconds, at the latest: never behind it. A remote store's is
        its last reading advanced from when that step was sent (the store read its clock no
        earlier), so a lease compared with it lapses early rather than late, however long the
        reply took (a process paused as it waited, say).

        Raises :class:`RegistryUnavailableError` when a remote store was never reached."""
        ...

    def now_at_least(self) -> float:
        """The store's clock, in seconds, at the earliest: never ahead of it (a remote store's
        last reading advanced from when its reply came). A lease a step is about to extend
        ends no earlier than this plus the lease."""
        ...

    async def register(self, ns: str, session_id: str, data: str, *, owner: str, lease: float,
                       retention: float) -> Entry: ...

    async def get(self, ns: str, session_id: str) -> Entry | None: ...

    async def claim(self, ns: str, session_id: str, owner: str, *, lease: float) -> Entry | None:
        """The entry, now ours with a bumped fence; None when unknown, decided, or held."""
        ...

    async def renew(self, ns: str, owner: str, fences: Mapping[str, int], *, lease: float
                    ) -> list[str]:
        """Extend every lease in ``fences`` still ours; the ids no longer ours."""
        ...

    async def release(self, ns: str, owner: str, fences: Mapping[str, int]) -> None: ...

    async def decide(self, ns: str, session_id: str, outcome: str, rank: int, *,
                     fence: int | None, retention: float) -> Entry | None:
        """Store ``outcome`` by the precedence rules; the entry as it stands after (None when
        unknown)."""
        ...

    async def orphans(self, ns: str, *, limit: int = 100) -> list[str]:
        """Undecided sessions whose lease ran out, oldest first."""
        ...

    async def wait(self, ns: str, session_id: str, within: float) -> None:
        """Until the entry may have changed, or ``within`` seconds; with ``session_id``
        :data:`RELEASED`, until a lease of the namespace may have been released."""
        ...

    def releases(self, ns: str) -> int:
        """How many releases of leases in ``ns`` this registry has heard of so far: compared
        before and after an adoption pass, it tells of one that came meanwhile. (A remote store
        may miss some, as pub/sub drops messages; a reconnection counts as one.)"""
        ...


class Records(Protocol):
    """A session's records, encoded when read: ``_as_registered()`` makes the JSON."""

    def _as_registered(self) -> str: ...


#: What :meth:`MemoryRegistry.register` keeps as an entry's ``data``: the JSON itself, or
#: records that make it when it is read. A manager in this process hands in the latter (the
#: session's handle itself, encoded on demand), so a pending session costs no second copy.
Data = str | Records


def data_text(data: Data) -> str:
    """``data`` as the JSON text a registry stores."""
    return data if isinstance(data, str) else data._as_registered()
