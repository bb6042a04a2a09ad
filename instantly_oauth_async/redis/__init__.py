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

import collections
import contextlib
import math
from collections.abc import Sequence
from types import TracebackType
from typing import Any

try:  # the extra, checked before the modules beside this one import it
    import redis.asyncio.retry as _retry  # noqa: F401 - redis-py 5 or later
    import redis.backoff as _backoff  # noqa: F401
except ModuleNotFoundError as exc:  # the extra is not installed (or redis-py is too old)
    if exc.name != "redis" and not (exc.name or "").startswith("redis."):
        raise  # something redis itself needs: its own message says what
    raise ModuleNotFoundError(
        "instantly_oauth_async.redis needs redis-py 5 or later, which the 'redis' extra "
        "installs: pip install 'instantly-oauth-async[redis]'", name="redis") from exc


from .._limits.breaker import Admission, BreakerPolicy, BreakerTransition, CircuitState
from .._limits.clock import Clock, SystemClock
from .._stores.registry import RegistryUnavailableError as RegistryUnavailableError

# Re-exported (``as``: explicit for type checkers) so callers catch them where they are raised;
# ``__all__`` stays the store alone (its registry is ``store.registry``).
from .._stores.store import StoreError as StoreError
from .._stores.store import gated
from .._wire.exceptions import ConfigurationError
from .._wire.models import RateLimit
from ._batch import Batcher
from ._claims import RedisClaims
from ._client import RedisClient as RedisClient
from ._client import client_from_url
from ._epoch import Epochs
from ._errors import FAILURES as _FAILURES
from ._errors import outage as _outage
from ._errors import store_error as _store_error
from ._fallback import Fallback
from ._registry import RedisRegistry as RedisRegistry
from ._replay import replay_steps
from ._steps import RECORD_WITHIN, Steps, line_keys, policy_args, slot_keys

__all__ = ["RedisStore"]


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
        self._retry_interval = float(retry_interval)
        self.clock: Clock = clock or SystemClock()
        # Every step of the store and of its registry, coalesced (see _redis_batch).
        self._batch = Batcher(client)
        self._fallback = Fallback(self.clock, share=float(fallback_share),
                                  retry_interval=self._retry_interval)
        self._epochs = Epochs(self._fallback, self._batch)
        self._steps = Steps(self._epochs)
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
        client = client_from_url(url, timeout=timeout, cluster=cluster)
        return cls(client, owns_client=True, **kwargs)

    def __repr__(self) -> str:
        state = "degraded" if self._fallback.degraded else "shared"
        return f"<RedisStore {state} fallback_share={self._fallback.share:g}>"

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
        return self._fallback.degraded

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def _next_try(self) -> float:
        """When Redis is tried again while it is away (the tests move it)."""
        return self._fallback.next_try

    @_next_try.setter
    def _next_try(self, at: float) -> None:
        self._fallback.next_try = at

    @property
    def _roomy(self) -> set[str]:
        """The held slots whose release may wait longer for a trip (for the tests)."""
        return self._steps.roomy

    def _now_arg(self) -> str:
        return "" if self.time_override is None else repr(self.time_override)

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        """Run one script; None when Redis is unreachable (and the store is then degraded).

        Raises :class:`StoreError` for an error reply that is not an outage (see the module).
        """
        now = self.clock.monotonic()
        if self._fallback.resting(now):
            return None
        try:
            if self._fallback.degraded:
                await self._recover()
            return await self._batch.run(name, keys, [*args, self._now_arg()])
        except _FAILURES as exc:
            if not _outage(exc):
                raise _store_error(f"the {name} script", exc) from exc
            self._fallback.lost(now, exc)
            return None

    async def _recover(self) -> None:
        """Write the slots spent and the blocks learned locally into Redis (one atomic step a
        hash tag: one for each API server this store served, which on a cluster may be on
        different masters), then leave degraded mode."""
        now = self.clock.monotonic()
        steps = replay_steps(self._fallback.learned(now, self._steps.member))
        for keys, args in steps.values():
            await self._batch.run("REPLAY", keys, [*args, self._now_arg()])
        if not steps:
            self._batch.round_trips += 1
            await self._redis.ping()
        self._fallback.back(now)

    # -- budgets -----------------------------------------------------------------------------

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
        if await self._fallback.local.blocked_for(block_keys) > 0:
            # Learned here (perhaps while Redis was away); the fleet's may be longer.
            return await self.blocked_for(block_keys), True
        self._fallback.seen(specs, hold)
        wait, shares = self._fallback.careful(specs)
        if wait > 0:
            return wait, False
        keys, args = self._steps.take(specs, block_keys, lease, hold, asker)
        reply = await self._run("TAKE", keys, args)
        if reply is None:
            return self._fallback.take(specs, lease, hold)
        wait, blocked = float(reply[0]), bool(int(reply[1]))
        self._epochs.note(specs[0][0], reply[3], self._now_arg())
        if wait <= 0:
            self._steps.note_fill(lease, reply)
        if wait <= 0 and shares:  # granted while careful: count it against the share too
            self._fallback.spend(shares, lease, hold)
        return wait, blocked

    async def release(self, specs: Sequence[tuple[str, RateLimit]], lease: str) -> None:
        """Implements [`Store.release`][instantly_oauth_async.Store.release]."""
        roomy = self._steps.forget(lease)
        if self._fallback.release(specs, lease):
            return  # spent only here, or Redis is away
        # Posted: it rides on the next trip (see _redis_batch); lost with Redis, the held slot
        # comes back by itself when its hold runs out.
        self._batch.post("RELEASE", slot_keys(specs),
                         self._steps.release_args(specs, lease, self._now_arg()),
                         within=self._steps.release_within(specs, roomy))

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
        if not self._fallback.settled() or \
                await self._fallback.local.blocked_for(block_keys) > 0:
            # Away, just back, or blocked here: the breaker and the budgets one after the other,
            # each with its fallback, as take() does.
            return await gated(self, specs, block_keys, breaker, lease=lease, hold=hold,
                               asker=asker)
        self._fallback.seen(specs, hold)
        self._fallback.end_careful()
        key, policy = breaker
        keys, args = self._steps.take(specs, block_keys, lease, hold, asker)
        reply = await self._run("GATED_TAKE", [key, *keys], [*policy_args(policy), *args])
        if reply is None:
            return await gated(self, specs, block_keys, breaker, lease=lease, hold=hold,
                               asker=asker)
        wait, code, probe = float(reply[0]), int(reply[1]), bool(int(reply[2]))
        if code == 2:
            return wait, False, Admission(False, wait=wait)
        self._epochs.note(specs[0][0], reply[4], self._now_arg())
        if wait <= 0:  # reply: wait, code, probe, share spent (as TAKE's, one item later)
            self._steps.note_fill(lease, reply[1:])
        return wait, code == 1, Admission(True, probe=probe)

    async def leave(self, specs: Sequence[tuple[str, RateLimit]], asker: str) -> None:
        """Implements [`Store.leave`][instantly_oauth_async.Store.leave]."""
        if not self._fallback.degraded:
            self._batch.post("LEAVE", line_keys(specs), [asker], within=RECORD_WITHIN)

    # -- blocks ------------------------------------------------------------------------------

    async def block(self, keys: Sequence[str], seconds: float) -> None:
        """Implements [`Store.block`][instantly_oauth_async.Store.block]."""
        await self._fallback.local.block(keys, seconds)
        await self._run("BLOCK", keys, [repr(max(0.0, float(seconds)))])

    async def blocked_for(self, keys: Sequence[str]) -> float:
        """Implements [`Store.blocked_for`][instantly_oauth_async.Store.blocked_for]."""
        local = await self._fallback.local.blocked_for(keys)
        reply = await self._run("BLOCKED_FOR", keys, [])
        return max(local, float(reply) if reply is not None else 0.0)

    # -- breakers ----------------------------------------------------------------------------

    async def breaker_admit(self, key: str, policy: BreakerPolicy) -> Admission:
        """Implements [`Store.breaker_admit`][instantly_oauth_async.Store.breaker_admit]."""
        reply = await self._run("BREAKER_ADMIT", [key], policy_args(policy))
        if reply is None:
            return await self._fallback.local.breaker_admit(key, policy)
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
        args = [*policy_args(policy), "1" if success else "0", "1" if probe else "0",
                "" if retry_after is None else repr(float(retry_after))]
        if quiet and not self._fallback.degraded:
            self._batch.post("BREAKER_RECORD", [key], [*args, self._now_arg()],
                             within=RECORD_WITHIN)
            return None
        reply = await self._run("BREAKER_RECORD", [key], args)
        if reply is None:
            return await self._fallback.local.breaker_record(
                key, policy, success=success, probe=probe, retry_after=retry_after)
        old, new, reason = (part.decode() for part in reply)
        if not reason or old == new:
            return None
        return BreakerTransition(
            key, CircuitState(old), CircuitState(new), self.clock.monotonic(), reason)

    async def breaker_release(self, key: str, *, probe: bool) -> None:
        """Implements [`Store.breaker_release`][instantly_oauth_async.Store.breaker_release]."""
        if await self._run("BREAKER_RELEASE", [key], ["1" if probe else "0"]) is None:
            await self._fallback.local.breaker_release(key, probe=probe)

    async def breaker_state(self, key: str) -> CircuitState:
        """Implements [`Store.breaker_state`][instantly_oauth_async.Store.breaker_state]."""
        try:
            self._batch.round_trips += 1
            state = await self._redis.hget(key, "state")
        except _FAILURES as exc:
            if not _outage(exc):
                raise _store_error("a breaker read (HGET)", exc) from exc
            return await self._fallback.local.breaker_state(key)
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
