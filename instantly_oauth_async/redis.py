"""Fleet mode: one budget shared by every process and host through Redis (extra ``redis``).

::

    async with RedisStore.from_url("redis://10.0.0.5:6379/0", fallback_share=0.25) as store:
        async with OAuthManager(api_key, store=store) as manager: ...

On Redis Cluster (7.0 or later), pass ``cluster=True`` (any node's URL; the client finds the
others), or a ``redis.asyncio.RedisCluster`` to ``RedisStore(client)``. Every key one script
touches shares a hash tag (``iox:{host:port}:...`` for an API server's budgets, blocks and
breakers; ``iox:reg:{namespace}:...`` for a workspace's registry), so each script runs on one
slot; the registry publishes with ``SPUBLISH`` on a channel with the same tag and listens with
``SSUBSCRIBE``, one connection per master holding a subscribed namespace.

Leaving the ``async with`` (or ``aclose()``) closes the connection pool the store made with
``from_url``; a client passed to ``RedisStore(client)`` stays open, its owner's to close.

Shared: the init budgets (workspace and IP, per provider), the status budget, blocks learned from
429s and the breakers (one half-open probe across the fleet). Each decision is one Lua script,
timed by Redis ``TIME``; keys are namespaced by API host, provider and a hash of the API key,
never the key, and expire on their own.

When Redis cannot be reached (refused, or slower than ``timeout``), the store carries on with a
local log per budget holding ``fallback_share`` of each limit. It first waits one window plus the
longest hold it has seen (an init in flight when Redis went away may reach the server that late),
since the fleet may have spent the whole budget just before. With ``fallback_share`` at most
``1 / number of processes`` the fleet cannot exceed a limit while Redis is away; the default 0
sends nothing until Redis is back (polls and inits wait, and resume by themselves). Redis is tried
again every ``retry_interval`` seconds. On its return, the slots spent locally are written into
the shared logs before anything else, and for one more window every take must also fit the local
share: a process that has not noticed the return yet spends only its share, so together they
still fit. Blocks are kept locally as well, and a breaker falls back to this process's own.

Blocks learned from 429s live in Redis until they end, so every process honours them, also one
started (or restarted) after the 429. A block learned while Redis was away is written into it
when Redis is back, together with the slots spent meanwhile.

``store.registry`` is the fleet's session registry (:class:`RedisRegistry`, issue 14), which has
no fallback: while Redis is away its steps raise ``RegistryUnavailableError`` (importable from
this module), to be retried.

An outage is not an error. Refused or reset connections, timeouts, and the replies that mean
"not now" (``BUSY``, ``LOADING``, ``MASTERDOWN``, ``TRYAGAIN``) send the store to its fallback as
above; ``NOSCRIPT`` (scripts flushed, or Redis restarted) loads the script again. Any other error
reply (``NOPERM`` from an ACL, a wrong password, ``WRONGTYPE``, a command the server lacks)
raises :class:`StoreError` (an ``InstantlyError``, importable from this module) to the caller at
once, since waiting will not cure it: from ``start()``, ``budget.slot()`` or a poll.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeAlias

try:
    import redis.asyncio as aioredis
    from redis.asyncio.client import PubSub
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        AskError,
        AuthenticationError,
        MasterDownError,
        NoPermissionError,
        NoScriptError,
        OutOfMemoryError,
        ReadOnlyError,
        RedisClusterException,
        RedisError,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ModuleNotFoundError as exc:  # the extra is not installed (or redis-py is too old)
    if exc.name != "redis" and not (exc.name or "").startswith("redis."):
        raise  # something redis itself needs: its own message says what
    raise ModuleNotFoundError(
        "instantly_oauth_async.redis needs redis-py 5 or later, which the 'redis' extra "
        "installs: pip install 'instantly-oauth-async[redis]'", name="redis") from exc

import anyio

from . import _limiter
from ._breaker import Admission, BreakerPolicy, BreakerTransition, CircuitState
from ._clock import Clock, SystemClock
from ._exceptions import ClientStateError, ConfigurationError
from ._models import RateLimit
from ._redis_batch import Batcher, hash_tag
from ._registry import Entry
from ._registry import RegistryUnavailableError as RegistryUnavailableError  # noqa: PLC0414
from ._store import MemoryStore, gated

# Re-exported (``as``: explicit for type checkers) so callers catch them where they are raised;
# ``__all__`` stays the store alone (its registry is ``store.registry``).
from ._store import StoreError as StoreError  # noqa: PLC0414

__all__ = ["RedisStore"]

#: The clients a store works on: one Redis server, or a Redis Cluster.
RedisClient: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"

logger = logging.getLogger("instantly_oauth_async")

#: How long past the time it was told an asker keeps its place in a budget's line (seconds).
_GRACE = 1.0
#: The longest a posted release waits for a trip to ride on (see _redis_batch), in seconds; and
#: for a breaker's quiet record, or an asker leaving its line (nothing waits on either).
_RELEASE_WITHIN = 0.02
_RECORD_WITHIN = 0.05
#: Everything a Redis call may raise that the store looks at; :func:`_outage` sorts it.
#: (A cluster client raises ``RedisClusterException``, no ``RedisError``, when it reaches no
#: node or finds a slot uncovered.)
_FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError, asyncio.TimeoutError)
#: Error replies that mean "not now" rather than "never": a script of someone else's runs too
#: long, the server loads its data, a replica lost its master, a cluster slot moves, a cluster
#: has lost a master (or its majority).
_TRANSIENT = frozenset({"BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"})
#: The code of a reply redis-py maps to its own class, for versions whose errors carry no
#: ``status_code`` (it strips the code from the message).
_CODES: tuple[tuple[type[RedisError], str], ...] = (
    (NoPermissionError, "NOPERM"), (ReadOnlyError, "READONLY"), (OutOfMemoryError, "OOM"),
    (NoScriptError, "NOSCRIPT"), (MasterDownError, "MASTERDOWN"), (TryAgainError, "TRYAGAIN"),
)


def _code(exc: BaseException) -> str | None:
    """Redis's error code (``NOPERM``, ``WRONGTYPE``, ``ERR``...) of a reply, when known."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    first = str(exc).split(" ", 1)[0]
    if first.isalpha() and first.isupper():
        return first
    return next((name for kind, name in _CODES if isinstance(exc, kind)), None)


def _outage(exc: BaseException) -> bool:
    """True: Redis is away or busy for now (carry on without it); False: an error to raise."""
    if isinstance(exc, AuthenticationError):
        return False  # a wrong password or user (redis-py files it under connection errors)
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError,
                        asyncio.TimeoutError)):
        return True
    if isinstance(exc, RedisClusterException):
        # No node reached (the cause says why), or slots no master holds for now (a master
        # down); others, such as keys of several slots in one script, are errors to raise.
        return isinstance(exc, SlotNotCoveredError) or str(exc).startswith(
            "All slots are not covered") or (exc.__cause__ is not None and _outage(exc.__cause__))
    if isinstance(exc, NoScriptError):
        return True  # flushed again right after redis-py reloaded it: the next try reloads
    return _code(exc) in _TRANSIENT


def _store_error(what: str, exc: BaseException) -> StoreError:
    """The error to raise for a reply that is not an outage. Redis never echoes a password."""
    code = _code(exc)
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    if code and not detail.startswith(code):
        detail = f"{code} {detail}"
    return StoreError(
        f"Redis answered {what} with an error, which waiting will not cure: {detail}", code=code)


def _policy_args(policy: BreakerPolicy) -> list[str]:
    return [repr(float(policy.failure_threshold)), repr(policy.cooldown),
            repr(policy.max_cooldown), repr(policy.probe_timeout)]


class RedisStore:
    """A :class:`~instantly_oauth_async.Store` in Redis, for many processes and hosts."""

    def __init__(
        self,
        client: RedisClient,
        *,
        fallback_share: float = 0.0,
        retry_interval: float = 1.0,
        clock: Clock | None = None,
        owns_client: bool = False,
    ) -> None:
        if not 0 <= fallback_share <= 1:
            raise ConfigurationError("fallback_share must be a fraction from 0 to 1")
        if not 0 < retry_interval < math.inf:
            raise ConfigurationError("retry_interval must be a positive number of seconds")
        self._redis = client
        self._owns = owns_client
        self._share = float(fallback_share)
        self._retry_interval = float(retry_interval)
        self.clock: Clock = clock or SystemClock()
        # Every step of the store and of its registry, coalesced (see _redis_batch).
        self._batch = Batcher(client)
        self._local = MemoryStore(self.clock)  # blocks and breakers while Redis is away
        self._logs: dict[str, _limiter.SlotLog] = {}  # slots spent while Redis is away
        self._local_leases: set[str] = set()  # spent only in the local logs
        self._roomy: set[str] = set()  # held slots taken from budgets at most half spent
        self._dual_leases: set[str] = set()  # spent in Redis and, after a return, locally too
        self._down_since: float | None = None
        self._careful_until = 0.0  # after Redis returns: takes must fit the local share too
        self._max_hold = 0.0
        self._max_window = 0.0
        self._next_try = 0.0
        self._members = f"{secrets.token_hex(6)}:"
        self._serial = 0
        #: ``None`` in production; tests set it to drive the scripts' clock (seconds).
        self.time_override: float | None = None
        self._registry: RedisRegistry | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.5, cluster: bool = False, **kwargs: Any
                 ) -> RedisStore:
        """A store on its own connection pool; ``timeout`` bounds every Redis call (seconds).

        ``cluster=True``: ``url`` names one node of a Redis Cluster (7.0 or later), from which
        the client learns the others and which slots each holds (database 0 only)."""
        client: RedisClient
        if cluster:
            # One retry, after the client has refreshed its map of the cluster (a failover); not
            # redis-py's default of three with backoff, which would hide an outage for seconds.
            client = aioredis.RedisCluster.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1))
        else:
            client = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry_on_timeout=False,
            )
        return cls(client, owns_client=True, **kwargs)

    def __repr__(self) -> str:
        state = "degraded" if self._down_since is not None else "shared"
        return f"<RedisStore {state} fallback_share={self._share:g}>"

    async def __aenter__(self) -> RedisStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def registry(self) -> RedisRegistry:
        """The fleet's session registry on this store's client, made at first use and closed
        with the store. It has no fallback: while Redis is away its steps raise
        ``RegistryUnavailableError``."""
        if self._registry is None:
            self._registry = RedisRegistry(self._redis, clock=self.clock,
                                           retry_interval=self._retry_interval,
                                           batcher=self._batch)
        return self._registry

    @property
    def round_trips(self) -> int:
        """Round trips to Redis so far, this store's and its registry's (they share them)."""
        return self._batch.round_trips

    @property
    def steps(self) -> collections.Counter[str]:
        """Script steps run so far, by script (several may share one round trip)."""
        return self._batch.steps

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and this process lives on its fallback share."""
        return self._down_since is not None

    # -- plumbing ----------------------------------------------------------------------------

    def _now_arg(self) -> str:
        return "" if self.time_override is None else repr(self.time_override)

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        """Run one script; None when Redis is unreachable (and the store is then degraded).

        Raises :class:`StoreError` for an error reply that is not an outage (see the module).
        """
        now = self.clock.monotonic()
        if self._down_since is not None and now < self._next_try:
            return None
        try:
            if self._down_since is not None:
                await self._recover()
            return await self._batch.run(name, keys, [*args, self._now_arg()])
        except _FAILURES as exc:
            if not _outage(exc):
                raise _store_error(f"the {name} script", exc) from exc
            if self._down_since is None:
                self._down_since = now
                logger.warning("Redis unreachable (%s); living on a %g share of each budget",
                               type(exc).__name__, self._share)
            self._next_try = now + self._retry_interval
            return None

    async def _recover(self) -> None:
        """Write the slots spent and the blocks learned locally into Redis (one atomic step a
        hash tag: one for each API server this store served, which on a cluster may be on
        different masters), then leave degraded mode."""
        now = self.clock.monotonic()
        steps: dict[str, tuple[list[str], list[str]]] = {}

        def put(key: str, seconds: float, member: str) -> None:
            keys, args = steps.setdefault(hash_tag(key), ([], []))
            if not keys or keys[-1] != key:
                keys.append(key)
            args += [str(len(keys)), repr(seconds), member]

        for key, log in self._logs.items():
            log.prune(now)
            for until in list(log.freed) + list(log.held.values()):
                self._serial += 1
                put(f"{key}:freed", until - now, f"{self._members}r{self._serial}")
        # Every block this process knows of: learned while Redis was away, or before a restart
        # emptied it. The longer block wins, so one Redis already holds is never shortened.
        for key, left in self._local.blocks_left().items():
            put(key, left, "")
        for keys, args in steps.values():
            await self._batch.run("REPLAY", keys, [*args, self._now_arg()])
        if not steps:
            self._batch.round_trips += 1
            await self._redis.ping()
        logger.warning("Redis reachable again after %.1f s", now - (self._down_since or now))
        self._down_since = None
        if self._share > 0:  # with no share, nobody spent anything on their own meanwhile
            self._careful_until = now + self._max_window
        self._dual_leases |= self._local_leases  # their release goes to both places now
        self._local_leases.clear()

    @staticmethod
    def _slot_keys(specs: Sequence[tuple[str, RateLimit]]) -> list[str]:
        return [k for key, _ in specs for k in (f"{key}:freed", f"{key}:held")]

    @staticmethod
    def _line_keys(specs: Sequence[tuple[str, RateLimit]]) -> list[str]:
        """The line of askers of one set of budgets (named by its first), and its due index."""
        first = specs[0][0]
        return [f"{first}:line", f"{first}:due"]

    # -- budgets -----------------------------------------------------------------------------

    def _shares(
        self, specs: Sequence[tuple[str, RateLimit]]
    ) -> list[tuple[str, RateLimit]] | None:
        """This process's share of each budget; None when a share rounds down to nothing."""
        shares = []
        for key, limit in specs:
            count = math.floor(limit.count * self._share)
            if count < 1:
                return None
            shares.append((key, RateLimit(count, limit.per, limit.margin)))
        return shares

    async def take(
        self,
        specs: Sequence[tuple[str, RateLimit]],
        block_keys: Sequence[str],
        *,
        lease: str | None = None,
        hold: float = 0.0,
        asker: str | None = None,
    ) -> tuple[float, bool]:
        if await self._local.blocked_for(block_keys) > 0:
            # Learned here (perhaps while Redis was away); the fleet's may be longer.
            return await self.blocked_for(block_keys), True
        self._max_hold = max(self._max_hold, hold)
        self._max_window = max(self._max_window, *(limit.window for _, limit in specs))
        now = self.clock.monotonic()
        careful = self._down_since is None and now < self._careful_until
        shares = self._shares(specs) if careful else None
        if careful:
            wait = _limiter.check(self._logs, shares, now) if shares else self._retry_interval
            if wait > 0:
                return wait, False
        elif self._down_since is None and self._logs:
            self._logs.clear()  # the careful window is over
            self._dual_leases.clear()
        keys, args = self._take_step(specs, block_keys, lease, hold, asker)
        reply = await self._run("TAKE", keys, args)
        if reply is None:
            return self._take_locally(specs, lease, hold)
        wait, blocked = float(reply[0]), bool(int(reply[1]))
        if wait <= 0:
            self._note_fill(lease, reply)
        if wait <= 0 and shares:  # granted while careful: count it against the share too
            _limiter.spend(self._logs, shares, self.clock.monotonic(), lease, hold)
            if lease is not None:
                self._dual_leases.add(lease)
        return wait, blocked

    def _take_locally(
        self, specs: Sequence[tuple[str, RateLimit]], lease: str | None, hold: float
    ) -> tuple[float, bool]:
        now = self.clock.monotonic()
        retry = max(0.0, self._next_try - now) + 1e-3
        shares = self._shares(specs)
        if shares is None:
            return retry, False  # no share of this budget: wait for Redis
        # The fleet may have spent the whole budget just before Redis went away, and an init
        # granted then may reach the server up to a hold later.
        settled = (self._down_since or now) + self._max_hold + self._max_window
        if now < settled:
            return min(settled - now, retry), False
        wait = _limiter.take(self._logs, shares, now, lease, hold)
        if wait <= 0 and lease is not None:
            self._local_leases.add(lease)
        return (min(wait, retry), False) if wait > 0 else (0.0, False)

    async def release(self, specs: Sequence[tuple[str, RateLimit]], lease: str) -> None:
        roomy = lease in self._roomy
        self._roomy.discard(lease)
        if lease in self._local_leases:
            self._local_leases.discard(lease)
            _limiter.release(self._logs, specs, lease, self.clock.monotonic())
            return
        if lease in self._dual_leases:
            self._dual_leases.discard(lease)
            _limiter.release(self._logs, specs, lease, self.clock.monotonic())
        if self._down_since is not None:
            return  # unreachable: the held slot comes back by itself when its hold runs out
        # Posted: it rides on the next trip (see _redis_batch); lost with Redis, the held slot
        # comes back by itself when its hold runs out.
        args = [lease, *(repr(limit.window) for _, limit in specs), self._now_arg()]
        # Sent late, the slot is spent a little longer: at most 1/200 of its shortest window,
        # or 1/20 when its budgets were at most half spent (nobody waits for it then).
        shortest = min(limit.window for _, limit in specs)
        within = min(_RELEASE_WITHIN, shortest / (20 if roomy else 200))
        self._batch.post("RELEASE", self._slot_keys(specs), args, within=within)

    async def take_gated(
        self,
        specs: Sequence[tuple[str, RateLimit]],
        block_keys: Sequence[str],
        breaker: tuple[str, BreakerPolicy],
        *,
        lease: str | None = None,
        hold: float = 0.0,
        asker: str | None = None,
    ) -> tuple[float, bool, Admission]:
        now = self.clock.monotonic()
        if self._down_since is not None or now < self._careful_until or \
                await self._local.blocked_for(block_keys) > 0:
            # Away, just back, or blocked here: the breaker and the budgets one after the other,
            # each with its fallback, as take() does.
            return await gated(self, specs, block_keys, breaker, lease=lease, hold=hold,
                               asker=asker)
        self._max_hold = max(self._max_hold, hold)
        self._max_window = max(self._max_window, *(limit.window for _, limit in specs))
        if self._logs:
            self._logs.clear()  # the careful window is over
            self._dual_leases.clear()
        key, policy = breaker
        keys, args = self._take_step(specs, block_keys, lease, hold, asker)
        reply = await self._run("GATED_TAKE", [key, *keys], [*_policy_args(policy), *args])
        if reply is None:
            return await gated(self, specs, block_keys, breaker, lease=lease, hold=hold,
                               asker=asker)
        wait, code, probe = float(reply[0]), int(reply[1]), bool(int(reply[2]))
        if code == 2:
            return wait, False, Admission(False, wait=wait)
        if wait <= 0:  # reply: wait, code, probe, share spent (as TAKE's, one item later)
            self._note_fill(lease, reply[1:])
        return wait, code == 1, Admission(True, probe=probe)

    def _note_fill(self, lease: str | None, reply: Sequence[Any]) -> None:
        """Remember a held slot whose budgets were at most half spent when it was taken: its
        release may wait longer for a trip to ride on (see :meth:`release`)."""
        if lease is not None and len(reply) > 2 and float(reply[2]) <= 0.5:
            self._roomy.add(lease)

    def _take_step(
        self, specs: Sequence[tuple[str, RateLimit]], block_keys: Sequence[str],
        lease: str | None, hold: float, asker: str | None,
    ) -> tuple[list[str], list[str]]:
        """The keys and args of one TAKE step (see _redis_lua)."""
        self._serial += 1
        args = [str(len(specs)), lease or "", repr(float(hold)), f"{self._members}{self._serial}",
                asker or "", repr(_GRACE)]
        for _, limit in specs:
            args += [str(limit.count), repr(limit.window)]
        return [*self._slot_keys(specs), *self._line_keys(specs), *block_keys], args

    async def leave(self, specs: Sequence[tuple[str, RateLimit]], asker: str) -> None:
        if self._down_since is None:
            self._batch.post("LEAVE", self._line_keys(specs), [asker], within=_RECORD_WITHIN)

    # -- blocks ------------------------------------------------------------------------------

    async def block(self, keys: Sequence[str], seconds: float) -> None:
        await self._local.block(keys, seconds)
        await self._run("BLOCK", keys, [repr(max(0.0, float(seconds)))])

    async def blocked_for(self, keys: Sequence[str]) -> float:
        local = await self._local.blocked_for(keys)
        reply = await self._run("BLOCKED_FOR", keys, [])
        return max(local, float(reply) if reply is not None else 0.0)

    # -- breakers ----------------------------------------------------------------------------

    async def breaker_admit(self, key: str, policy: BreakerPolicy) -> Admission:
        reply = await self._run("BREAKER_ADMIT", [key], _policy_args(policy))
        if reply is None:
            return await self._local.breaker_admit(key, policy)
        return Admission(bool(int(reply[0])), probe=bool(int(reply[1])), wait=float(reply[2]))

    async def breaker_record(
        self,
        key: str,
        policy: BreakerPolicy,
        *,
        success: bool,
        probe: bool,
        retry_after: float | None = None,
        quiet: bool = False,
    ) -> BreakerTransition | None:
        args = [*_policy_args(policy), "1" if success else "0", "1" if probe else "0",
                "" if retry_after is None else repr(float(retry_after))]
        if quiet and self._down_since is None:
            self._batch.post("BREAKER_RECORD", [key], [*args, self._now_arg()],
                             within=_RECORD_WITHIN)
            return None
        reply = await self._run("BREAKER_RECORD", [key], args)
        if reply is None:
            return await self._local.breaker_record(
                key, policy, success=success, probe=probe, retry_after=retry_after)
        old, new, reason = (part.decode() for part in reply)
        if not reason or old == new:
            return None
        return BreakerTransition(
            key, CircuitState(old), CircuitState(new), self.clock.monotonic(), reason)

    async def breaker_release(self, key: str, *, probe: bool) -> None:
        if await self._run("BREAKER_RELEASE", [key], ["1" if probe else "0"]) is None:
            await self._local.breaker_release(key, probe=probe)

    async def breaker_state(self, key: str) -> CircuitState:
        try:
            self._batch.round_trips += 1
            state = await self._redis.hget(key, "state")
        except _FAILURES as exc:
            if not _outage(exc):
                raise _store_error("a breaker read (HGET)", exc) from exc
            return await self._local.breaker_state(key)
        if isinstance(state, bytes):
            state = state.decode()
        return CircuitState(state) if state else CircuitState.CLOSED

    async def aclose(self) -> None:
        """Close the connection pool if this store made it (``from_url``); a client it was given
        stays open. Leaving ``async with store:`` does this, and closes the registry too."""
        if self._registry is not None:
            await self._registry.aclose()
        with contextlib.suppress(*_FAILURES):
            await self._batch.aclose()  # releases still posted
        if self._owns:
            await self._redis.aclose()


# -- the session registry ----------------------------------------------------------------------

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
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            if pool is not None:
                await pool.aclose()


class RedisRegistry:
    """The session registry of a fleet (see :class:`~instantly_oauth_async._registry.Registry`)
    in Redis: use ``RedisStore(...).registry``, which closes it with the store.

    Each step is one Lua script on the keys of one namespace, timed by Redis ``TIME``. Every key
    of a namespace ``ns`` carries it as a hash tag, ``iox:reg:{ns}:...``, or the one tag ``ns``
    holds (``iox:reg:{server}:ws``): the scripts work on Redis Cluster, each in one slot. An
    entry is a hash that expires on its own ``retention`` after it is registered, and again after
    it is decided; the undecided ones are also indexed by lease end (for :meth:`orphans`).

    :meth:`now` is the last reading of Redis's clock (each script returns the time it used)
    advanced by this process's monotonic clock since, the reading taken to be halfway through
    its round trip. It is only for judging leases against the store's clock: it is not a wall
    clock, and it raises ``ClientStateError`` before the first step.

    :meth:`wait` listens on one subscription per registry (one connection): the first step in a
    namespace subscribes to the namespace's channel, on which ``claim``, ``release`` and
    ``decide`` publish the session's id, and waits (up to 2 s) for Redis to confirm; from then on
    every change in that namespace wakes its waiters. Pub/sub may drop messages (a reconnect,
    a slow consumer): the waiters of a namespace wake whenever its subscription is confirmed
    again, and a lost message otherwise costs a waiter its ``within``.

    On Redis Cluster (a ``RedisCluster`` client, 7.0 or later) the channel carries the
    namespace's hash tag too, and the scripts publish with ``SPUBLISH``: the message stays on
    the master holding the namespace's slot, where the registry listens with ``SSUBSCRIBE``,
    one connection per master that holds a subscribed namespace. When a slot moves (its master
    ends the subscription, or answers ``MOVED``), the registry refreshes its map of the cluster
    and subscribes on the new master; its waiters wake to re-read, as after any reconnection.

    Errors: when Redis cannot be reached every step raises
    :class:`~instantly_oauth_async._registry.RegistryUnavailableError` (retry it), never falling
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
            raise ClientStateError("the registry has not read Redis's clock yet: call a step first")
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
            self._wake(ns, None)  # all re-read
        elif kind in ("message", "smessage"):
            self._wake(ns, _text(message.get("data")))
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
