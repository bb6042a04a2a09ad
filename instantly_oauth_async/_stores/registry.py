"""The session registry: every session a workspace's managers started, the lease of its one
poller, and its outcome, written ahead of any future or callback.

The registry lives behind the store (``store.registry``): :class:`MemoryRegistry` for the
managers of one process, ``RedisRegistry`` (``instantly_oauth_async.redis``) for a fleet. Every
method is one atomic step timed by the store's own clock (Redis ``TIME``), never a host's. The
registry stores opaque JSON strings; what they mean is ``_fleet``'s business.

Rules every implementation keeps (``tests/test_registry.py`` runs the same contract against
both):

- ``register`` makes an entry claimed by its starter, fence 1, before ``start()`` returns.
- ``claim`` takes an undecided entry whose lease ran out (or was released) and bumps the fence:
  of racing claimers exactly one wins.
- ``renew`` extends every lease an owner still holds with the fence it holds, in one step, and
  names the ones it lost; a stale owner (a lower fence) renews nothing.
- ``decide`` stores an outcome with a precedence rank (answer 3 > expired 2 > lost 1): the first
  writer wins, except that a higher rank replaces a lower one; a fenced write with a stale fence
  is refused. Decided entries are kept ``retention`` seconds, then forgotten.
- ``wait`` returns when the entry may have changed, or after ``within`` seconds: waiters
  re-read, so a dropped notification costs at most one ``within``.

A remote registry that cannot reach its store raises :class:`RegistryUnavailableError` (retry
the step later); one that gets an error waiting will not cure raises ``StoreError``. Neither
falls back to this process's memory: a lease or an outcome the fleet cannot see is no registry.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from typing import cast

import anyio

from .._limits.clock import Clock
from .contract import (
    ANSWER,
    EXPIRED,
    LOST,
    RELEASED,
    Data,
    Entry,
    Records,
    Registry,
    RegistryUnavailableError,
    data_text,
)
from .shared import NEVER, Held, SharedLease

__all__ = ["ANSWER", "EXPIRED", "LOST", "RELEASED", "Data", "Entry", "MemoryRegistry", "Records",
           "Registry", "RegistryUnavailableError", "data_text"]


class MemoryRegistry:
    """The registry of one process, timed by ``clock``; lost with the process.

    Entries leave ``retention`` seconds after they were registered, or decided, whichever was
    later: every step first forgets what is due, so a long-running process holds only what its
    retention asks for. An adoption pass looks through the undecided entries only. An entry's
    ``data`` may be kept as records that encode it when read (:data:`Data`); every entry handed
    out has it as text.
    The leases one owner's heartbeat renews together share one expiry (``shared``):
    :meth:`renew_owned` costs what changed since the last one, not one step per entry."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # By namespace, then session id (no (namespace, id) tuple kept an entry: 56 B)
        self._entries: dict[str, dict[str, Held]] = {}
        # When each entry leaves, and which (its namespace, itself): one queue per retention
        # asked for (a few), in the order of that time, since this clock never goes back (no
        # heap, and no tuple an entry). An entry leaves at its own ``forget_at``; an item naming
        # another time, or an entry no longer kept, is stale: decided since, or forgotten.
        self._forget: dict[float, tuple[collections.deque[float], collections.deque[str],
                                        collections.deque[Held]]] = {}
        self._open: dict[str, dict[str, None]] = {}  # undecided entries by namespace
        # Those of them on no shared lease (registered, claimed or released since the last
        # renew_owned of their owner): what an adoption pass looks through, beside the shared
        # leases that ran out.
        self._loose: dict[str, dict[str, None]] = {}
        self._changed: dict[tuple[str, str], anyio.Event] = {}
        self._releases: collections.Counter[str] = collections.Counter()
        self._shared: dict[tuple[str, str], SharedLease] = {}  # by (namespace, owner)

    def __repr__(self) -> str:
        return f"<MemoryRegistry sessions={len(self)}>"

    def __len__(self) -> int:
        """How many entries it holds (undecided, and decided within their retention)."""
        return sum(map(len, self._entries.values()))

    def now(self) -> float:
        return self._clock.monotonic()

    def now_at_least(self) -> float:
        return self._clock.monotonic()

    def _forget_due(self) -> None:
        now, entries = self.now(), self._entries
        for times, namespaces, helds in self._forget.values():
            while times and times[0] <= now:
                at, ns, held = times.popleft(), namespaces.popleft(), helds.popleft()
                kept = entries.get(ns)
                if kept is None or kept.get(held.session_id) is not held or held.forget_at != at:
                    continue  # moved later since (decided), or forgotten already
                del kept[held.session_id]
                if not kept:
                    del entries[ns]
                key = (ns, held.session_id)
                self._detach(ns, held)
                self._close(key)
                self._wake(key)  # a waiter re-reads, and finds it gone

    def _keep_until(self, key: tuple[str, str], held: Held, retention: float) -> None:
        """``held`` is forgotten ``retention`` from now (unless kept anew before)."""
        held.forget_at = at = self.now() + retention
        queue = self._forget.get(retention)
        if queue is None:
            queue = self._forget[retention] = (collections.deque(), collections.deque(),
                                               collections.deque())
        queue[0].append(at)
        queue[1].append(key[0])
        queue[2].append(held)

    def _close(self, key: tuple[str, str]) -> None:
        self._unloose(key)
        ns, session_id = key
        open_ = self._open.get(ns)
        if open_ is not None:
            open_.pop(session_id, None)
            if not open_:
                del self._open[ns]

    def _unloose(self, key: tuple[str, str]) -> None:
        ns, session_id = key
        loose = self._loose.get(ns)
        if loose is not None:
            loose.pop(session_id, None)
            if not loose:
                del self._loose[ns]

    def _live(self, key: tuple[str, str]) -> Held | None:
        self._forget_due()
        kept = self._entries.get(key[0])
        return None if kept is None else kept.get(key[1])

    @staticmethod
    def _out(held: Held) -> Entry:
        """The entry as it is handed out: its data as text (made now if kept as records)."""
        return Entry(held.session_id, data_text(held.data),
                     held.created_at, held.owner, held.fence, held.lease_until(), held.outcome,
                     held.rank)

    def _changed_now(self, key: tuple[str, str], held: Held) -> Entry:
        if held.decided:
            self._close(key)
        else:
            self._open.setdefault(key[0], {})[key[1]] = None
            self._loose.setdefault(key[0], {})[key[1]] = None  # on no shared lease (yet)
        self._wake(key)
        return self._out(held)

    def _attach(self, ns: str, held: Held, shared: SharedLease) -> None:
        held.attach(shared)
        self._unloose((ns, held.session_id))

    def _detach(self, ns: str, held: Held) -> None:
        """Off its owner's shared lease (its owner, fence or outcome is about to change)."""
        if held.shared is None:
            return
        self._loose.setdefault(ns, {})[held.session_id] = None  # (closed if decided after)
        shared = held.detach()
        if shared is not None and shared.count == 0 \
                and self._shared.get(key := (ns, cast("str", held.owner))) is shared:
            # Nothing attached: its notes go with it, and the next renew_owned of that owner
            # looks at every lease it names.
            del self._shared[key]

    def _note(self, ns: str, held: Held) -> None:
        """A new lease of ``held.owner``: the next :meth:`renew_owned` looks at it. An owner
        with no shared lease has none to note it on, and needs none: its next renew looks at
        every lease it names (a lease made here to hold the note would outlive an owner that
        never renews, and lengthen every adoption pass and that owner's first renew)."""
        shared = self._shared.get((ns, cast("str", held.owner)))
        if shared is not None:
            shared.note(held.session_id)

    def _wake(self, key: tuple[str, str]) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    async def register(self, ns: str, session_id: str, data: Data, *, owner: str, lease: float,
                       retention: float) -> Entry:
        now, key = self.now(), (ns, session_id)
        existing = self._live(key)
        if existing is not None:
            if existing.owner == owner and existing.shared is None:
                self._note(ns, existing)  # the owner may hold it again: looked at once
            return self._out(existing)
        # Kept as given (a callable stays one) until it is handed out.
        held = self._entries.setdefault(ns, {})[session_id] = Held(
            session_id, data, now, owner=owner, fence=1, until=now + lease)
        self._keep_until(key, held, retention)  # renewed when decided
        self._note(ns, held)
        return self._changed_now(key, held)

    async def get(self, ns: str, session_id: str) -> Entry | None:
        held = self._live((ns, session_id))
        return None if held is None else self._out(held)

    async def claim(self, ns: str, session_id: str, owner: str, *, lease: float) -> Entry | None:
        key, now = (ns, session_id), self.now()
        held = self._live(key)
        if held is None or held.decided:
            return None
        if held.owner is not None and held.owner != owner and held.lease_until() > now:
            return None
        self._detach(ns, held)
        held.owner, held.fence, held.until = owner, held.fence + 1, now + lease
        self._note(ns, held)
        return self._changed_now(key, held)

    def _renewable(self, held: Held | None, owner: str, fence: int, now: float) -> bool:
        return held is not None and not held.decided and held.owner == owner \
            and held.fence == fence and held.lease_until() > now

    async def renew(self, ns: str, owner: str, fences: Mapping[str, int], *, lease: float
                    ) -> list[str]:
        lost, now = [], self.now()
        for session_id, fence in fences.items():
            held = self._live((ns, session_id))
            if held is None or not self._renewable(held, owner, fence, now):
                lost.append(session_id)
                continue
            self._detach(ns, held)  # its own lease now (noted: renew_owned looks at it)
            held.until = now + lease
        return lost

    async def renew_owned(self, ns: str, owner: str, fences: Mapping[str, int], *,
                          lease: float) -> list[str]:
        """:meth:`renew` for every lease ``owner`` holds, named by ``fences`` as it should:
        the ids no longer its own. Its leases share one expiry from then on, so this step
        looks at what changed since the last one (registered, claimed, decided, released,
        forgotten), not at every lease, unless something does not add up."""
        self._forget_due()
        now, entries = self.now(), self._entries.get(ns, {})
        shared = self._shared.get((ns, owner))
        if shared is None or shared.check is None or shared.until <= now:
            return self._renew_all(ns, owner, fences, lease, now)
        check, shared.check = shared.check, []
        lost = []
        for session_id in dict.fromkeys(check):
            fence = fences.get(session_id)
            if fence is None:
                continue  # not held (a count that differs below tells if it is attached)
            held = entries.get(session_id)
            if held is not None and held.shared is shared:
                continue  # attached since it was noted (noted twice)
            if held is not None and self._renewable(held, owner, fence, now):
                self._attach(ns, held, shared)
            else:
                lost.append(session_id)
        if shared.count != len(fences) - len(lost) or shared.fences != sum(fences.values()) \
                - sum(fences[sid] for sid in lost):  # one it holds unnoticed, or a stale fence
            return self._renew_all(ns, owner, fences, lease, now)
        shared.until = now + lease
        return lost

    def _renew_all(self, ns: str, owner: str, fences: Mapping[str, int], lease: float,
                   now: float) -> list[str]:
        """:meth:`renew_owned` entry by entry: every lease ``fences`` names looked at, and any
        other still attached to the owner's shared lease taken off it (not renewed)."""
        entries, key = self._entries.get(ns, {}), (ns, owner)
        lost, keep = [], set()
        for session_id, fence in fences.items():
            held = entries.get(session_id)
            if held is not None and self._renewable(held, owner, fence, now):
                keep.add(session_id)
            else:
                lost.append(session_id)
        old = self._shared.get(key)
        if old is not None:
            for session_id in list(self._open.get(ns, ())):
                held = entries[session_id]
                if held.shared is old and session_id not in keep:
                    self._loose.setdefault(ns, {})[session_id] = None
                    held.detach()
        shared = SharedLease()
        for session_id in keep:
            held = entries[session_id]
            held.detach()
            self._attach(ns, held, shared)
        shared.check, shared.until = [], now + lease
        if shared.count:
            self._shared[key] = shared
        else:
            self._shared.pop(key, None)
        return lost

    async def release(self, ns: str, owner: str, fences: Mapping[str, int]) -> None:
        for session_id, fence in fences.items():
            key = (ns, session_id)
            held = self._live(key)
            if held is not None and held.owner == owner and held.fence == fence:
                self._detach(ns, held)
                held.owner, held.until = None, NEVER
                self._changed_now(key, held)
                self._releases[ns] += 1
                self._wake((ns, RELEASED))

    async def decide(self, ns: str, session_id: str, outcome: str, rank: int, *,
                     fence: int | None, retention: float) -> Entry | None:
        key = (ns, session_id)
        held = self._live(key)
        if held is None:
            return None
        if fence is not None and fence != held.fence:
            return self._out(held)  # a stale owner: the fence refuses its write
        if held.decided and rank <= held.rank:
            return self._out(held)  # first writer wins; only a better-founded one replaces it
        self._keep_until(key, held, retention)
        self._detach(ns, held)
        held.outcome, held.rank, held.owner, held.until = outcome, rank, None, NEVER
        return self._changed_now(key, held)

    async def orphans(self, ns: str, *, limit: int = 100) -> list[str]:
        self._forget_due()
        now, entries = self.now(), self._entries.get(ns)
        if entries is None:
            return []  # nothing kept in this namespace
        found = [held for sid in self._loose.get(ns, ())
                 if (held := entries[sid]).until <= now]
        for (in_ns, _), shared in self._shared.items():  # an owner each: few
            if in_ns == ns and shared.until <= now and shared.count:  # its owner is late
                found += [held for sid in self._open.get(ns, ())
                          if (held := entries[sid]).shared is shared]
        found.sort(key=lambda e: (e.created_at, e.session_id))  # as SQLiteStore's
        return [e.session_id for e in found[:limit]]

    def releases(self, ns: str) -> int:
        return self._releases[ns]

    async def wait(self, ns: str, session_id: str, within: float) -> None:
        key = (ns, session_id)
        event = self._changed.setdefault(key, anyio.Event())
        try:
            with self._clock.deadline(within if within < math.inf else 86400.0):
                await event.wait()
        finally:
            # Timed out or cancelled: drop the event unless another waiter still uses it (the
            # last one to leave drops it; a wake-up drops it anyway).
            if self._changed.get(key) is event and event.statistics().tasks_waiting == 0:
                del self._changed[key]
