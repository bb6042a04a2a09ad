"""The fleet's session registry in Redis (:class:`RedisRegistry`, issue 14): one Lua step per
decision, every key of a namespace under one hash tag, Redis ``TIME`` for every lease, and one
pub/sub subscription (one per master on a cluster) to wake waiters. Made by
``RedisStore.registry``; see docs/FLEET.md."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import anyio
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import AskError, RedisClusterException

from .._limits.clock import Clock, SystemClock
from .._stores.registry import RELEASED, Entry, RegistryUnavailableError
from .._stores.store import StoreError
from .._wire.exceptions import ClientStateError, ConfigurationError
from ._batch import Batcher
from ._errors import FAILURES as _FAILURES
from ._errors import outage as _outage
from ._errors import store_error as _store_error

__all__ = ["RedisClient", "RedisRegistry"]

logger = logging.getLogger("instantly_oauth_async")

#: The clients a store works on: one Redis server, or a Redis Cluster.
RedisClient: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"

#: How long the first call in a namespace waits for Redis to confirm the subscription to the
#: namespace's channel (seconds); past it the call goes on, and waiters rely on ``within``.
_CONFIRM_WITHIN = 2.0
#: The longest the listener reads without a message before it reads again (seconds).
_IDLE_READ = 30.0
#: ``orphans`` looks at this many lapsed sessions at most (longest lapsed first), then returns the
#: oldest of them: one script stays short however many sessions a dead process left behind.
_ORPHAN_SCAN = 1000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(session_id: str, reply: Sequence[Any]) -> Entry | None:
    """The entry in a script's reply (after the time), or None when the reply holds none."""
    if len(reply) < 9:
        return None
    data, created, owner, fence, lease, decided, outcome, rank = (_text(x) for x in reply[1:9])
    return Entry(session_id, data, float(created), owner or None, int(fence), float(lease),
                 outcome if decided == "1" else None, int(rank))


class _Subscription:
    """One pub/sub connection of a registry and its listener task: on one Redis server the only
    one; on a cluster one per master holding the slot of a subscribed namespace (``node`` is the
    master's ``host:port``; ``""`` holds the channels not routed yet, while the cluster could not
    be reached)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.channels: set[str] = set()
        self.unsent: set[str] = set()  # channels whose SUBSCRIBE failed: the listener sends them
        self.pubsub: PubSub | None = None
        self.pool: aioredis.ConnectionPool | None = None  # a cluster master's: ours to close
        self.listener: asyncio.Task[None] | None = None
        self.lock = anyio.Lock()
        self.failures = 0  # in a row, since the subscription last worked
        self.pinged = False  # a PING is out, and nothing came since
        self.moved = False  # a channel's slot moved: refresh the map of the cluster first

    async def close(self) -> None:
        pubsub, pool, self.pubsub, self.pool, self.pinged = self.pubsub, self.pool, None, None, \
            False
        with contextlib.suppress(*_FAILURES):
            if pubsub is not None:
                # redis-py typed PubSub.aclose only lately: a typed alias fits both sides
                aclose: Callable[[], Awaitable[None]] = pubsub.aclose
                await aclose()
            if pool is not None:
                await pool.aclose()


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
        self._redis = client
        self._cluster = client if isinstance(client, aioredis.RedisCluster) else None
        self._clock: Clock = clock or SystemClock()
        self._retry_interval = float(retry_interval)
        self._prefix = prefix
        self._batch = batcher or Batcher(client)
        self._reading: tuple[float, float] | None = None  # (Redis's time, our clock then)
        self._names: dict[str, tuple[str, str, str, str]] = {}
        # The subscriptions: channel -> namespace, set once Redis first confirmed it (or gave
        # up); on a cluster, one subscription per master (by its name), else one named "".
        self._channels: dict[str, str] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._moves: list[tuple[str, str]] = []  # (channel, master) found on another master
        self._waiters: dict[str, dict[str, set[anyio.Event]]] = {}
        self._releases: collections.Counter[str] = collections.Counter()
        self._refused: tuple[str, str | None] | None = None  # the subscription's error, if any
        self._closed = False
        #: ``None`` in production; tests set it to drive the scripts' clock (seconds).
        self.time_source: Callable[[], float] | None = None

    @property
    def round_trips(self) -> int:
        """Round trips to Redis so far (shared with the store when made by ``store.registry``)."""
        return self._batch.round_trips

    def __repr__(self) -> str:
        return f"<RedisRegistry namespaces={len(self._channels)}>"

    @property
    def _failures(self) -> int:
        """Failures in a row of the subscriptions, since each last worked (for the tests)."""
        return sum(sub.failures for sub in self._subscriptions.values())

    def now(self) -> float:
        if self._reading is None:
            raise RegistryUnavailableError(
                "Redis's clock has not been read yet: no step has reached Redis so far")
        store_time, local = self._reading
        return store_time + (self._clock.monotonic() - local)

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
        self._reading = (float(reply[0]), (sent + self._clock.monotonic()) / 2)
        return list(reply)

    async def _watch(self, ns: str) -> None:
        """Subscribe to the namespace's channel at its first step; raise a refused subscription."""
        if self._closed:
            raise ClientStateError("the registry is closed (its store was closed)")
        channel = self._ns(ns)[3]
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = self._confirmed[channel] = anyio.Event()
            self._channels[channel] = ns
            try:
                await self._subscribe(channel, await self._route(channel))
            except BaseException:
                # Cut short (a waiter's ``within`` while the cluster is mapped) or refused before
                # any subscription took the channel: the next step subscribes again, instead of
                # waiting for a confirmation that is not coming (and no message ever wakes).
                if not any(channel in sub.channels for sub in self._subscriptions.values()):
                    confirmed.set()
                    del self._confirmed[channel], self._channels[channel]
                raise
        if not confirmed.is_set():
            with anyio.move_on_after(_CONFIRM_WITHIN):
                await confirmed.wait()
        if self._refused is not None:
            detail, code = self._refused
            raise StoreError(detail, code=code)

    async def _route(self, channel: str) -> str:
        """The subscription a channel belongs to: its master's on a cluster ("" while the
        cluster cannot be reached: that subscription's listener routes it later)."""
        if self._cluster is None:
            return ""
        try:
            await self._cluster.initialize()  # at once when done: it maps the cluster once
            return self._master(channel)
        except _FAILURES as exc:
            if not _outage(exc):
                raise _store_error("the registry's map of the cluster", exc) from exc
            return ""

    async def _subscribe(self, channel: str, node: str) -> None:
        sub = self._subscriptions.get(node)
        if sub is None:
            sub = self._subscriptions[node] = _Subscription(node)
        async with sub.lock:  # the listener ends under it, when none of its channels are left
            sub.channels.add(channel)
            if sub.listener is None:  # it connects, and subscribes to every channel wanted
                sub.listener = asyncio.get_running_loop().create_task(
                    self._listen(sub), name="instantly-oauth-async registry listener")
                return
            if sub.pubsub is None:  # the listener connects: it subscribes to this one too,
                if sub.failures:  # but Redis is away: no confirmation to wait for
                    self._confirmed[channel].set()
                return
            try:
                await self._send_subscribe(sub.pubsub, [channel])
            except _FAILURES:
                # The listener will find the connection broken, or send it after its next read.
                sub.unsent.add(channel)
                self._confirmed[channel].set()

    def _master(self, channel: str) -> str:
        """The name of the master holding a channel's slot, by the client's map of the cluster."""
        assert self._cluster is not None  # noqa: S101 - only called on a cluster
        master = self._cluster.get_node_from_key(channel)
        if master is None:
            raise RedisClusterException(f"no master holds the slot of {channel}")
        return master.name

    async def _send_subscribe(self, pubsub: PubSub, channels: Iterable[str]) -> None:
        if self._cluster is None:
            await pubsub.subscribe(*channels)
        else:  # SSUBSCRIBE takes channels of one slot only: one command each
            for channel in channels:
                await pubsub.ssubscribe(channel)

    async def _connect(self, sub: _Subscription) -> None:
        """Open the subscription's connection (and subscribe to its channels): to the one
        server, or to the master of its slots, having first moved the channels whose slots
        another master holds now to that master's subscription."""
        if self._cluster is None:
            sub.pubsub = self._redis.pubsub()
        else:
            if sub.moved:  # a slot moved: ask the cluster which master holds what
                await self._cluster.nodes_manager.initialize()
                sub.moved = False
            else:
                await self._cluster.initialize()
            for channel in list(sub.channels):
                node = self._master(channel)
                if node != sub.node:
                    sub.channels.discard(channel)
                    sub.unsent.discard(channel)
                    self._moves.append((channel, node))
            if not sub.channels:  # all moved (always so for "", the channels not routed yet)
                return
            master = self._cluster.get_node(node_name=sub.node)
            if master is None:
                return
            sub.pool = aioredis.ConnectionPool(connection_class=master.connection_class,
                                               **master.connection_kwargs)
            sub.pubsub = PubSub(sub.pool)
        sub.unsent.clear()
        await self._send_subscribe(sub.pubsub, sub.channels)

    async def _listen(self, sub: _Subscription) -> None:
        """The one reader of a subscription: wakes waiters, and reconnects after a failure.

        After ``_IDLE_READ`` seconds without a message it sends a PING; a second silence in a
        row means a connection that died without a word (no reset): it connects again. On a
        cluster it ends once none of its channels' slots are on its master any more."""
        while True:
            try:
                async with sub.lock:
                    if sub.pubsub is None:
                        await self._connect(sub)
                        if sub.pubsub is None:  # every channel moved to another master's
                            sub.listener = None
                    elif sub.unsent:
                        unsent, sub.unsent = sub.unsent, set()
                        await self._send_subscribe(sub.pubsub, unsent)
                    pubsub = sub.pubsub
                await self._move()
                if pubsub is None:
                    return
                message = await pubsub.get_message(timeout=_IDLE_READ)
                silent = message is None and sub.pinged
                if message is None and not sub.pinged:
                    sub.pinged = True
                    await pubsub.ping()
            except _FAILURES as exc:
                await self._lost(sub, exc)
                continue
            if silent:
                await self._lost(sub, TimeoutError("no answer to a PING on the subscription"))
                continue
            if message is None:
                continue
            sub.failures, sub.pinged = 0, False
            if not self._dispatch(message):
                sub.moved = True  # the master let go of a channel: its slot moved
                await self._lost(sub, None)

    async def _move(self) -> None:
        """Subscribe the channels found on another master, on that master's subscription."""
        while self._moves:
            channel, node = self._moves.pop()
            await self._subscribe(channel, node)

    async def _lost(self, sub: _Subscription, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, AskError):  # MOVED or ASK: the slot moves
            sub.moved = True
            logger.debug("registry subscription: a slot moved to another master")
        elif _outage(exc):
            logger.debug("registry subscription lost (%s)", type(exc).__name__)
        else:
            error = _store_error("the registry's subscription", exc)
            if self._refused is None:
                logger.warning("%s; waiters fall back to their timeout", error)
            self._refused = (str(error), error.code)
        for channel in sub.channels:
            self._confirmed[channel].set()  # nobody waits for a confirmation that is not coming
        await sub.close()
        sub.failures += 1
        if sub.failures > 1:  # the first time straight away: a cut connection, Redis still up
            await self._clock.sleep(self._retry_interval)

    def _dispatch(self, message: dict[str, Any]) -> bool:
        """Wake the waiters a message concerns; False when the server ended a subscription
        (on a cluster: the channel's slot moved to another master)."""
        kind, channel = _text(message.get("type")), _text(message.get("channel"))
        ns = self._channels.get(channel)
        if ns is None:
            return True
        if kind in ("subscribe", "ssubscribe"):  # first subscribed, or again after a reconnect
            self._refused = None
            self._confirmed[channel].set()
            self._releases[ns] += 1  # a release may have come while nobody listened
            self._wake(ns, None)  # all re-read
        elif kind in ("message", "smessage"):
            session_id = _text(message.get("data"))
            if session_id == RELEASED:
                self._releases[ns] += 1
            self._wake(ns, session_id)
        elif kind in ("unsubscribe", "sunsubscribe"):  # we never unsubscribe: the server did
            self._wake(ns, None)
            return False
        return True

    def _wake(self, ns: str, session_id: str | None) -> None:
        sessions = self._waiters.get(ns)
        if not sessions:
            return
        for sid in list(sessions) if session_id is None else [session_id]:
            for event in sessions.pop(sid, ()):
                event.set()
        if not sessions:
            del self._waiters[ns]

    async def aclose(self) -> None:
        """Stop listening and close the subscriptions' connections (``RedisStore.aclose`` does
        this); waiters wake, and later steps raise ``ClientStateError``."""
        self._closed = True
        listeners = []
        for sub in self._subscriptions.values():
            listener, sub.listener = sub.listener, None
            if listener is not None:
                listener.cancel()
                await asyncio.wait({listener})
                listeners.append(listener)
            await sub.close()
        for ns in list(self._waiters):
            self._wake(ns, None)
        for listener in listeners:
            if not listener.cancelled():
                listener.result()  # it only ends by cancellation: anything else is a bug to show

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
        return self._releases[ns]

    async def wait(self, ns: str, session_id: str, within: float) -> None:
        event = anyio.Event()
        self._waiters.setdefault(ns, {}).setdefault(session_id, set()).add(event)
        try:
            with self._clock.deadline(within if within < math.inf else 86400.0):
                await self._watch(ns)
                await event.wait()
        finally:
            sessions = self._waiters.get(ns, {})
            waiting = sessions.get(session_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del sessions[session_id]
            if not sessions:
                self._waiters.pop(ns, None)


def _owner(owner: str) -> str:
    if not owner:
        raise ConfigurationError("a registry owner is a non-empty string")
    return owner


def _seconds(seconds: float) -> str:
    if not 0 < seconds < math.inf:
        raise ConfigurationError("leases and retention are a positive, finite number of seconds")
    return repr(float(seconds))
