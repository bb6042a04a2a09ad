"""How a ``RedisRegistry`` hears of changes in its namespaces (see the registry's docstring):
which pub/sub connection each namespace's channel is subscribed on (one Redis server's only one;
on a cluster the one of the master holding the channel's slot, and the one named ``""`` for the
channels not routed yet while the cluster cannot be reached), the one listener of each
connection, its reconnection after a failure, a silence or a slot that moved, and which waiters
a message wakes (and the releases it counts)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import AskError, RedisClusterException

from .._limits.clock import Clock
from .._stores.registry import RELEASED
from .._stores.store import StoreError
from .._stores.waiters import Waiters, wake
from ._client import RedisClient
from ._errors import FAILURES as _FAILURES
from ._errors import outage as _outage
from ._errors import store_error as _store_error

__all__ = ["Subscription", "Subscriptions", "text"]

logger = logging.getLogger("instantly_oauth_async")

#: How long the first call in a namespace waits for Redis to confirm the subscription to the
#: namespace's channel (seconds); past it the call goes on, and waiters rely on ``within``.
_CONFIRM_WITHIN = 2.0
#: The longest the listener reads without a message before it reads again (seconds).
_IDLE_READ = 30.0


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Subscription:
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


class Subscriptions:
    """The subscriptions of one registry, their listeners, and the waiters they wake."""

    def __init__(self, client: RedisClient, *, clock: Clock, retry_interval: float) -> None:
        self._redis = client
        self._cluster = client if isinstance(client, aioredis.RedisCluster) else None
        self._clock = clock
        self._retry_interval = retry_interval
        # Channel -> namespace, set once Redis first confirmed it (or gave up); on a cluster,
        # one subscription per master (by its name), else one named "".
        self.channels: dict[str, str] = {}
        self._confirmed: dict[str, anyio.Event] = {}
        self.by_node: dict[str, Subscription] = {}
        self._moves: list[tuple[str, str]] = []  # (channel, master) found on another master
        self.waiters: Waiters = {}
        self.releases: collections.Counter[str] = collections.Counter()
        self.refused: tuple[str, str | None] | None = None  # the subscription's error, if any

    @property
    def failures(self) -> int:
        """Failures in a row of the subscriptions, since each last worked."""
        return sum(sub.failures for sub in self.by_node.values())

    async def watch(self, ns: str, channel: str) -> None:
        """Subscribe to the namespace's channel at its first step; raise a refused subscription."""
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            confirmed = self._confirmed[channel] = anyio.Event()
            self.channels[channel] = ns
            try:
                await self._subscribe(channel, await self._route(channel))
            except BaseException:
                # Cut short (a waiter's ``within`` while the cluster is mapped) or refused before
                # any subscription took the channel: the next step subscribes again, instead of
                # waiting for a confirmation that is not coming (and no message ever wakes).
                if not any(channel in sub.channels for sub in self.by_node.values()):
                    confirmed.set()
                    del self._confirmed[channel], self.channels[channel]
                raise
        if not confirmed.is_set():
            with anyio.move_on_after(_CONFIRM_WITHIN):
                await confirmed.wait()
        if self.refused is not None:
            detail, code = self.refused
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
        sub = self.by_node.get(node)
        if sub is None:
            sub = self.by_node[node] = Subscription(node)
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

    async def _connect(self, sub: Subscription) -> None:
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

    async def _listen(self, sub: Subscription) -> None:
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

    async def _lost(self, sub: Subscription, exc: BaseException | None) -> None:
        if exc is None or isinstance(exc, AskError):  # MOVED or ASK: the slot moves
            sub.moved = True
            logger.debug("registry subscription: a slot moved to another master")
        elif _outage(exc):
            logger.debug("registry subscription lost (%s)", type(exc).__name__)
        else:
            error = _store_error("the registry's subscription", exc)
            if self.refused is None:
                logger.warning("%s; waiters fall back to their timeout", error)
            self.refused = (str(error), error.code)
        for channel in sub.channels:
            self._confirmed[channel].set()  # nobody waits for a confirmation that is not coming
        await sub.close()
        sub.failures += 1
        if sub.failures > 1:  # the first time straight away: a cut connection, Redis still up
            await self._clock.sleep(self._retry_interval)

    def _dispatch(self, message: dict[str, Any]) -> bool:
        """Wake the waiters a message concerns; False when the server ended a subscription
        (on a cluster: the channel's slot moved to another master)."""
        kind, channel = text(message.get("type")), text(message.get("channel"))
        ns = self.channels.get(channel)
        if ns is None:
            return True
        if kind in ("subscribe", "ssubscribe"):  # first subscribed, or again after a reconnect
            self.refused = None
            self._confirmed[channel].set()
            self.releases[ns] += 1  # a release may have come while nobody listened
            wake(self.waiters, ns, None)  # all re-read
        elif kind in ("message", "smessage"):
            session_id = text(message.get("data"))
            if session_id == RELEASED:
                self.releases[ns] += 1
            wake(self.waiters, ns, session_id)
        elif kind in ("unsubscribe", "sunsubscribe"):  # we never unsubscribe: the server did
            wake(self.waiters, ns, None)
            return False
        return True

    async def aclose(self) -> None:
        """Stop listening, close the connections and wake every waiter."""
        listeners = []
        for sub in self.by_node.values():
            listener, sub.listener = sub.listener, None
            if listener is not None:
                listener.cancel()
                await asyncio.wait({listener})
                listeners.append(listener)
            await sub.close()
        for ns in list(self.waiters):
            wake(self.waiters, ns, None)
        for listener in listeners:
            if not listener.cancelled():
                listener.result()  # it only ends by cancellation: anything else is a bug to show
