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
from collections.abc import Sequence
from types import TracebackType
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ModuleNotFoundError as exc:  # the extra is not installed (or redis-py is too old)
    if exc.name != "redis" and not (exc.name or "").startswith("redis."):
        raise  # something redis itself needs: its own message says what
    raise ModuleNotFoundError(
        "instantly_oauth_async.redis needs redis-py 5 or later, which the 'redis' extra "
        "installs: pip install 'instantly-oauth-async[redis]'", name="redis") from exc


from . import _limiter
from ._breaker import Admission, BreakerPolicy, BreakerTransition, CircuitState
from ._clock import Clock, SystemClock
from ._exceptions import ConfigurationError
from ._models import RateLimit
from ._redis_batch import Batcher, hash_tag
from ._redis_claims import RedisClaims
from ._redis_errors import FAILURES as _FAILURES
from ._redis_errors import outage as _outage
from ._redis_errors import store_error as _store_error
from ._redis_registry import RedisClient as RedisClient  # noqa: PLC0414
from ._redis_registry import RedisRegistry as RedisRegistry  # noqa: PLC0414
from ._registry import RegistryUnavailableError as RegistryUnavailableError  # noqa: PLC0414
from ._store import MemoryStore, gated

# Re-exported (``as``: explicit for type checkers) so callers catch them where they are raised;
# ``__all__`` stays the store alone (its registry is ``store.registry``).
from ._store import StoreError as StoreError  # noqa: PLC0414

__all__ = ["RedisStore"]


logger = logging.getLogger("instantly_oauth_async")

#: How long past the time it was told an asker keeps its place in a budget's line (seconds).
_GRACE = 1.0
#: The longest a posted release waits for a trip to ride on (see _redis_batch), in seconds: from
#: a budget that was full, and from one at most half spent; and for a breaker's quiet record, or
#: an asker leaving its line (nothing waits on either).
_RELEASE_WITHIN = 0.02
_ROOMY_RELEASE_WITHIN = 0.25
_RECORD_WITHIN = 0.05
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
        self._careful_until = -math.inf  # after Redis returns: takes must fit the local share too
        self._max_hold = 0.0
        self._max_window = 0.0
        self._next_try = -math.inf
        self._members = f"{secrets.token_hex(6)}:"
        self._serial = 0
        # The store's epoch token, and when this process last took with it, by hash tag.
        self._epochs: dict[str, tuple[str, float]] = {}
        #: ``None`` in production; tests set it to drive the scripts' clock (seconds).
        self.time_override: float | None = None
        self._registry: RedisRegistry | None = None
        self._claims: RedisClaims | None = None

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
    def claims(self) -> RedisClaims:
        """The connect guard of the fleet's web flows (``instantly_oauth_async.web``): one Lua
        script a step on this store's client; no fallback while Redis is away."""
        if self._claims is None:
            self._claims = RedisClaims(self._redis)
        return self._claims

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
        down = now if self._down_since is None else self._down_since
        logger.warning("Redis reachable again after %.1f s", now - down)
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
        """Implements [`Store.take`][instantly_oauth_async.Store.take]."""
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
        self._note_epoch(specs, reply[3])
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
        down = now if self._down_since is None else self._down_since
        settled = down + self._max_hold + self._max_window
        if now < settled:
            return min(settled - now, retry), False
        wait = _limiter.take(self._logs, shares, now, lease, hold)
        if wait <= 0 and lease is not None:
            self._local_leases.add(lease)
        return (min(wait, retry), False) if wait > 0 else (0.0, False)

    async def release(self, specs: Sequence[tuple[str, RateLimit]], lease: str) -> None:
        """Implements [`Store.release`][instantly_oauth_async.Store.release]."""
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
        # comes back by itself when its hold runs out. It tells Redis how long ago the request
        # ended, measured as it leaves, so the slot comes back a window after that, however
        # late it was sent. Until it arrives the slot counts as held, which only the askers of
        # a full budget notice (a held slot comes back no sooner than a window after they ask):
        # so it waits at most 1/200 of its shortest window, or a quarter of it (up to 250 ms)
        # when its budgets were at most half spent as it was taken.
        windows = [repr(limit.window) for _, limit in specs]
        now_arg = self._now_arg()
        loop = asyncio.get_running_loop()
        ended = loop.time()

        def args() -> list[str]:  # with a test's clock (time_override) the model's: no age
            ago = 0.0 if now_arg else max(0.0, loop.time() - ended)
            return [lease, repr(ago), *windows, now_arg]

        shortest = min(limit.window for _, limit in specs)
        within = min(_ROOMY_RELEASE_WITHIN, shortest / 4) if roomy else \
            min(_RELEASE_WITHIN, shortest / 200)
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
        """Implements [`Store.take_gated`][instantly_oauth_async.Store.take_gated]."""
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
        self._note_epoch(specs, reply[4])
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
        first = specs[0][0]
        tag = hash_tag(first)
        settle_for = self._max_window + self._max_hold
        token, seen_at = self._epochs.get(tag, ("", -math.inf))
        if self.clock.monotonic() - seen_at > settle_for:
            token = ""  # nothing this process spent can still count: no loss to tell of
        # A token of this step's own if the epoch is to be made: never one this process made
        # before (a store wiped after this process made its epoch would get the same back).
        args += [token, f"{self._members}{self._serial}", repr(settle_for)]
        epoch = f"iox:{{{tag}}}:epoch" if tag != first else f"{first}:epoch"  # one slot
        return [*self._slot_keys(specs), *self._line_keys(specs), *block_keys, epoch], args

    def _note_epoch(self, specs: Sequence[tuple[str, RateLimit]], token: Any) -> None:
        """Remember the store's epoch (see TAKE in _redis_lua). A new one means the store lost
        its data: the fleet's takes wait until every slot spent before has come back, and the
        blocks this process knows are written into it again."""
        if isinstance(token, bytes):
            token = token.decode()
        tag = hash_tag(specs[0][0])
        seen, seen_at = self._epochs.get(tag, (None, -math.inf))
        now = self.clock.monotonic()
        self._epochs[tag] = (token, now)
        if seen is not None and seen != token \
                and now - seen_at <= self._max_window + self._max_hold:
            logger.warning("Redis lost its data (restarted empty, or failed over): every take "
                           "waits until the slots spent before the loss have come back (up to "
                           "%.0f s)", self._max_window + self._max_hold)
            blocks = {key: left for key, left in self._local.blocks_left().items()
                      if hash_tag(key) == tag}
            if blocks:
                keys = list(blocks)
                args = [a for i, key in enumerate(keys)
                        for a in (str(i + 1), repr(blocks[key]), "")]
                self._batch.post("REPLAY", keys, [*args, self._now_arg()], within=0.0)

    async def leave(self, specs: Sequence[tuple[str, RateLimit]], asker: str) -> None:
        """Implements [`Store.leave`][instantly_oauth_async.Store.leave]."""
        if self._down_since is None:
            self._batch.post("LEAVE", self._line_keys(specs), [asker], within=_RECORD_WITHIN)

    # -- blocks ------------------------------------------------------------------------------

    async def block(self, keys: Sequence[str], seconds: float) -> None:
        """Implements [`Store.block`][instantly_oauth_async.Store.block]."""
        await self._local.block(keys, seconds)
        await self._run("BLOCK", keys, [repr(max(0.0, float(seconds)))])

    async def blocked_for(self, keys: Sequence[str]) -> float:
        """Implements [`Store.blocked_for`][instantly_oauth_async.Store.blocked_for]."""
        local = await self._local.blocked_for(keys)
        reply = await self._run("BLOCKED_FOR", keys, [])
        return max(local, float(reply) if reply is not None else 0.0)

    # -- breakers ----------------------------------------------------------------------------

    async def breaker_admit(self, key: str, policy: BreakerPolicy) -> Admission:
        """Implements [`Store.breaker_admit`][instantly_oauth_async.Store.breaker_admit]."""
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
        """Implements [`Store.breaker_record`][instantly_oauth_async.Store.breaker_record]."""
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
        """Implements [`Store.breaker_release`][instantly_oauth_async.Store.breaker_release]."""
        if await self._run("BREAKER_RELEASE", [key], ["1" if probe else "0"]) is None:
            await self._local.breaker_release(key, probe=probe)

    async def breaker_state(self, key: str) -> CircuitState:
        """Implements [`Store.breaker_state`][instantly_oauth_async.Store.breaker_state]."""
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
