"""The fleet's session registry in Redis (:class:`RedisRegistry`, issue 14): one Lua step per
decision, every key of a namespace under one hash tag, Redis ``TIME`` for every lease, and one
pub/sub subscription (one per master on a cluster) to wake waiters. Made by
``RedisStore.registry``; see docs/FLEET.md."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._limits.clock import Clock, SystemClock
from .._stores.registry import Entry, RegistryUnavailableError
from .._stores.waiters import Waiters, waiting
from .._wire.exceptions import ClientStateError, ConfigurationError
from ._batch import Batcher
from ._client import RedisClient
from ._errors import FAILURES as _FAILURES
from ._errors import outage as _outage
from ._errors import store_error as _store_error
from ._subscriptions import Subscription, Subscriptions
from ._subscriptions import text as _text

__all__ = ["RedisRegistry"]

#: ``orphans`` looks at this many lapsed sessions at most (longest lapsed first), then returns the
#: oldest of them: one script stays short however many sessions a dead process left behind.
_ORPHAN_SCAN = 1000


def _entry(session_id: str, reply: Sequence[Any]) -> Entry | None:
    """The entry in a script's reply (after the time), or None when the reply holds none."""
    if len(reply) < 9:
        return None
    data, created, owner, fence, lease, decided, outcome, rank = (_text(x) for x in reply[1:9])
    return Entry(session_id, data, float(created), owner or None, int(fence), float(lease),
                 outcome if decided == "1" else None, int(rank))


class RedisRegistry:
    """The session registry of a fleet (see the ``Registry`` contract in ``_stores.registry``)
    in Redis: use ``RedisStore(...).registry``, which closes it with the store.

    Each step is one Lua script on the keys of one namespace, timed by Redis ``TIME``. Every key
    of a namespace ``ns`` carries it as a hash tag, ``iox:reg:{ns}:...``, or the one tag ``ns``
    holds (``iox:reg:{server}:ws``): the scripts work on Redis Cluster, each in one slot. An
    entry is a hash that expires on its own ``retention`` after it is registered, and again after
    it is decided; the undecided ones are also indexed by lease end (for :meth:`orphans`).

    :meth:`now` is the last reading of Redis's clock (each script returns the time it used)
    advanced by this process's monotonic clock since, the reading taken to be halfway through
    its round trip. It is only for judging leases against the store's clock: it is not a wall
    clock, and it raises ``RegistryUnavailableError`` before any step has reached Redis.

    :meth:`wait` listens on one subscription per registry (one connection): the first step in a
    namespace subscribes to the namespace's channel, on which ``claim``, ``release`` and
    ``decide`` publish the session's id, and waits (up to 2 s) for Redis to confirm; from then on
    every change in that namespace wakes its waiters. A ``release`` that let go of a lease also
    publishes an empty message (:data:`~.registry.RELEASED`), which wakes
    the waiters for orphans and is counted (:meth:`releases`). Pub/sub may drop messages (a
    reconnect, a slow consumer): the waiters of a namespace wake whenever its subscription is
    confirmed again, and a lost message otherwise costs a waiter its ``within``.

    On Redis Cluster (a ``RedisCluster`` client, 7.0 or later) the channel carries the
    namespace's hash tag too, and the scripts publish with ``SPUBLISH``: the message stays on
    the master holding the namespace's slot, where the registry listens with ``SSUBSCRIBE``,
    one connection per master that holds a subscribed namespace. When a slot moves (its master
    ends the subscription, or answers ``MOVED``), the registry refreshes its map of the cluster
    and subscribes on the new master; its waiters wake to re-read, as after any reconnection.

    Errors: when Redis cannot be reached every step raises
    :class:`~.registry.RegistryUnavailableError` (retry it), never falling
    back to memory; an error waiting will not cure raises :class:`StoreError`, also from the
    subscription (an ACL without the ``iox:reg:*`` channels). ``wait`` does not raise for an
    outage: it returns after ``within``, and the subscription is tried again every
    ``retry_interval`` seconds.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        clock: Clock | None = None,
        retry_interval: float = 1.0,
        prefix: str = "iox:reg:",
        batcher: Batcher | None = None,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ConfigurationError("the registry's key prefix may not hold braces")
        self._clock: Clock = clock or SystemClock()
        self._prefix = prefix
        self._batch = batcher or Batcher(client)
        # Redis's time at its last step, and our clock when that step was sent and answered.
        self._reading: tuple[float, float, float] | None = None
        self._names: dict[str, tuple[str, str, str, str]] = {}
        # Its pub/sub subscriptions, and the waiters they wake.
        self._listening = Subscriptions(client, clock=self._clock,
                                        retry_interval=float(retry_interval))
        self._closed = False
        #: ``None`` in production; tests set it to drive the scripts' clock (seconds).
        self.time_source: Callable[[], float] | None = None

    @property
    def round_trips(self) -> int:
        """Round trips to Redis so far (shared with the store when made by ``store.registry``)."""
        return self._batch.round_trips

    def __repr__(self) -> str:
        return f"<RedisRegistry namespaces={len(self._listening.channels)}>"

    # What the tests look at, where they look for it (the subscriptions hold it).

    @property
    def _failures(self) -> int:
        """Failures in a row of the subscriptions, since each last worked (for the tests)."""
        return self._listening.failures

    @property
    def _subscriptions(self) -> dict[str, Subscription]:
        return self._listening.by_node

    @property
    def _waiters(self) -> Waiters:
        return self._listening.waiters

    @property
    def _refused(self) -> tuple[str, str | None] | None:
        return self._listening.refused

    def now(self) -> float:
        store_time, sent, _ = self._last_reading()
        return store_time + (self._clock.monotonic() - sent)

    def now_at_least(self) -> float:
        store_time, _, answered = self._last_reading()
        return store_time + (self._clock.monotonic() - answered)

    def _last_reading(self) -> tuple[float, float, float]:
        if self._reading is None:
            raise RegistryUnavailableError(
                "Redis's clock has not been read yet: no step has reached Redis so far")
        return self._reading

    # -- plumbing ----------------------------------------------------------------------------

    def _ns(self, ns: str) -> tuple[str, str, str, str]:
        """Entry key prefix, lapse index, meta hash and channel of a namespace."""
        names = self._names.get(ns)
        if names is None:
            if not ns or ns.count("{") != ns.count("}") or ns.count("{") > 1 or (
                    "{" in ns and not 0 < ns.index("{") + 1 < ns.index("}")):
                raise ConfigurationError(
                    "a registry namespace is a non-empty string with at most one {hash tag}")
            # Its own hash tag, or the one it names (the manager names its API server's, so the
            # registry's steps and the budgets' share a slot, and a trip).
            tag = f"{self._prefix}{ns}" if "{" in ns else f"{self._prefix}{{{ns}}}"
            names = self._names[ns] = (f"{tag}:e:", f"{tag}:lapse", f"{tag}:meta",
                                       f"{tag}:events")
        return names

    async def _run(self, ns: str, name: str, keys: Sequence[str], args: Sequence[str]
                   ) -> list[Any]:
        await self._watch(ns)
        now_arg = "" if self.time_source is None else repr(float(self.time_source()))
        sent = self._clock.monotonic()
        try:
            reply = await self._batch.run(name, keys, [*args, now_arg])
        except _FAILURES as exc:
            if not _outage(exc):
                raise _store_error(f"the registry's {name} script", exc) from exc
            raise RegistryUnavailableError(
                f"Redis could not be reached for the registry's {name} step "
                f"({type(exc).__name__}); it may or may not have happened: retry it") from exc
        # Redis read its clock between the two: paired with the send, a later reading is never
        # behind Redis's clock (now()); with the answer, never ahead of it (now_at_least()).
        self._reading = (float(reply[0]), sent, self._clock.monotonic())
        return list(reply)

    async def _watch(self, ns: str) -> None:
        """Subscribe to the namespace's channel at its first step; raise a refused subscription."""
        if self._closed:
            raise ClientStateError("the registry is closed (its store was closed)")
        await self._listening.watch(ns, self._ns(ns)[3])

    async def aclose(self) -> None:
        """Stop listening and close the subscriptions' connections (``RedisStore.aclose`` does
        this); waiters wake, and later steps raise ``ClientStateError``."""
        self._closed = True
        await self._listening.aclose()

    # -- the steps ---------------------------------------------------------------------------

    async def register(self, ns: str, session_id: str, data: str, *, owner: str, lease: float,
                       retention: float) -> Entry:
        entry_key, lapse, meta, _ = self._ns(ns)
        reply = await self._run(ns, "REG_REGISTER", [lapse, meta, entry_key + session_id],
                                [session_id, data, _owner(owner), _seconds(lease),
                                 _seconds(retention)])
        entry = _entry(session_id, reply)
        assert entry is not None  # noqa: S101 - the script always answers with one
        return entry

    async def get(self, ns: str, session_id: str) -> Entry | None:
        entry_key, lapse, meta, _ = self._ns(ns)
        reply = await self._run(ns, "REG_GET", [lapse, meta, entry_key + session_id],
                                [session_id])
        return _entry(session_id, reply)

    async def claim(self, ns: str, session_id: str, owner: str, *, lease: float) -> Entry | None:
        entry_key, lapse, meta, channel = self._ns(ns)
        reply = await self._run(ns, "REG_CLAIM", [lapse, meta, entry_key + session_id],
                                [session_id, _owner(owner), _seconds(lease), channel])
        return _entry(session_id, reply)

    async def renew(self, ns: str, owner: str, fences: Mapping[str, int], *, lease: float
                    ) -> list[str]:
        """All of ``owner``'s leases in ``ns`` in one script: a heartbeat per process."""
        if not fences:
            return []
        entry_key, lapse, meta, _ = self._ns(ns)
        args = [_owner(owner), _seconds(lease)]
        for session_id, fence in fences.items():
            args += [session_id, str(int(fence))]
        reply = await self._run(ns, "REG_RENEW",
                                [lapse, meta, *(entry_key + sid for sid in fences)], args)
        return [_text(sid) for sid in reply[1:]]

    async def release(self, ns: str, owner: str, fences: Mapping[str, int]) -> None:
        if not fences:
            return
        entry_key, lapse, meta, channel = self._ns(ns)
        args = [_owner(owner), channel]
        for session_id, fence in fences.items():
            args += [session_id, str(int(fence))]
        await self._run(ns, "REG_RELEASE", [lapse, meta, *(entry_key + sid for sid in fences)],
                        args)

    async def decide(self, ns: str, session_id: str, outcome: str, rank: int, *,
                     fence: int | None, retention: float) -> Entry | None:
        entry_key, lapse, meta, channel = self._ns(ns)
        reply = await self._run(
            ns, "REG_DECIDE", [lapse, meta, entry_key + session_id],
            [session_id, outcome, str(int(rank)), "" if fence is None else str(int(fence)),
             _seconds(retention), channel])
        return _entry(session_id, reply)

    async def orphans(self, ns: str, *, limit: int = 100) -> list[str]:
        """Undecided sessions whose lease ran out, oldest first (among the longest-lapsed
        thousand, when more lapsed)."""
        if limit <= 0:
            return []
        _, lapse, meta, _ = self._ns(ns)
        reply = await self._run(ns, "REG_ORPHANS", [lapse, meta],
                                [str(int(limit)), str(max(int(limit), _ORPHAN_SCAN))])
        return [_text(sid) for sid in reply[1:]]

    def releases(self, ns: str) -> int:
        return self._listening.releases[ns]

    async def wait(self, ns: str, session_id: str, within: float) -> None:
        with waiting(self._listening.waiters, ns, session_id) as event, \
                self._clock.deadline(within if within < math.inf else 86400.0):
            await self._watch(ns)
            await event.wait()


def _owner(owner: str) -> str:
    if not owner:
        raise ConfigurationError("a registry owner is a non-empty string")
    return owner


def _seconds(seconds: float) -> str:
    if not 0 < seconds < math.inf:
        raise ConfigurationError("leases and retention are a positive, finite number of seconds")
    return repr(float(seconds))
