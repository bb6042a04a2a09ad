"""Where rate budgets, learned blocks and breaker state live.

:class:`Store` is the small interface the manager talks to; :class:`MemoryStore` keeps everything
in this process (the default, shared by every manager of the process, so the per-IP budget holds
across workspaces). ``instantly_oauth_async.redis.RedisStore`` implements the same interface for a
fleet. Every method is one atomic step: with the memory store no ``await`` happens inside it.

A store tells errors from outages. An outage (the store cannot be reached, or not in time) is
the store's own business: ``RedisStore`` carries on with its fallback. An error that waiting will
not cure (permission refused, a key of the wrong type, a command the server lacks) raises
:class:`StoreError` to the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from .._limits import breaker as _breaker
from .._limits.breaker import (
    Admission,
    BreakerPolicy,
    BreakerState,
    BreakerTransition,
    CircuitState,
)
from .._limits.clock import Clock, SystemClock
from .._limits.limiter import SlotLog, release, take
from .._wire.exceptions import InstantlyError
from .._wire.models import RateLimit
from .claims import MemoryClaims
from .registry import MemoryRegistry

__all__ = ["MemoryStore", "Store", "StoreError", "default_store"]


class StoreError(InstantlyError):
    """The shared store answered with an error that waiting will not cure.

    For ``RedisStore``: the user lacks a permission (ACL ``NOPERM``), the password or user is
    wrong (``WRONGPASS``), a key holds another type than the library expects (``WRONGTYPE``:
    another program writes under ``iox:``), or the server lacks a command (an old or locked-down
    server, a proxy). ``code`` is Redis's error code when it gave one. An outage (refused,
    reset, slower than the timeout, ``BUSY``, ``LOADING``) is not an error: the store carries
    on with its fallback share instead. The message never holds a password or an API key.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@runtime_checkable
class Store(Protocol):
    """Shared state behind the limiter and the breaker. Keys are opaque, namespaced strings."""

    async def take(
        self,
        specs: Sequence[tuple[str, RateLimit]],
        block_keys: Sequence[str],
        *,
        lease: str | None = None,
        hold: float = 0.0,
        asker: str | None = None,
    ) -> tuple[float, bool]:
        """One slot of every budget at once, or none.

        Returns ``(0.0, False)`` when taken; otherwise the seconds to wait and whether a block
        (rather than a full budget) is the reason. With ``lease`` the slots stay held until
        :meth:`release` names it, or for ``hold`` seconds at most; without, they are timed from
        now. ``asker`` names the one who will ask again after a refusal: a store shared by many
        processes may serve its askers in turn (see :meth:`leave`).
        """
        ...

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
        """:meth:`take` behind a breaker, in one step: ``(0, False, admission)`` when taken (its
        ``probe`` says whether as the half-open probe); ``(wait, blocked, admission)`` when not,
        ``admission.allowed`` false when the breaker is the reason."""
        ...

    async def leave(self, specs: Sequence[tuple[str, RateLimit]], asker: str) -> None:
        """``asker`` asks no more (its waiters are gone): others need not wait for its turn."""
        ...

    async def release(self, specs: Sequence[tuple[str, RateLimit]], lease: str) -> None:
        """The request that took ``lease`` ended: its slots come back one window from now."""
        ...

    async def block(self, keys: Sequence[str], seconds: float) -> None:
        """Hold back every ``take`` naming one of ``keys`` for ``seconds`` (longest block wins)."""
        ...

    async def blocked_for(self, keys: Sequence[str]) -> float:
        """Seconds left on the longest block among ``keys``; 0 when none."""
        ...

    async def breaker_admit(self, key: str, policy: BreakerPolicy) -> Admission:
        """May an attempt go through the breaker ``key`` now? The :class:`Admission` says so, and
        whether it goes as the half-open probe.
        """
        ...

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
        """Record an attempt's verdict; the transition it caused, if any. With ``quiet`` the
        caller expects none and needs no answer: a store on the network may send the record
        with its next step (and then returns None)."""

    async def breaker_release(self, key: str, *, probe: bool) -> None:
        """An admitted attempt ended without a verdict (its caller was cancelled): a probe's turn
        goes back.
        """
        ...

    async def breaker_state(self, key: str) -> CircuitState:
        """The breaker ``key``'s state now (CLOSED for a breaker never used)."""
        ...

    async def aclose(self) -> None:
        """Let go of what the store holds (connections, threads); a closed store is not used
        again."""
        ...


class MemoryStore:
    """Everything in this process's memory, timed by ``clock``.

    Budgets, breakers and the blocks learned from 429s live as long as this object, so at most
    as long as the process: every manager sharing the store (the process-wide default, or one
    passed as ``store=``) honours a block another one learned, also one created later, but a
    restarted process has forgotten it and would send inits into it (which the server may count
    towards a longer block). To keep blocks across restarts and processes, use
    ``instantly_oauth_async.redis.RedisStore`` (see docs/LIMITS.md).

    Usable as ``async with MemoryStore() as store:`` like every store; closing releases nothing.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._logs: dict[str, SlotLog] = {}
        self._blocks: dict[str, float] = {}
        self._breakers: dict[str, BreakerState] = {}
        self._registry = MemoryRegistry(self.clock)
        self._claims = MemoryClaims(self.clock)

    @property
    def registry(self) -> MemoryRegistry:
        """The session registry of the managers sharing this store, timed by its clock."""
        return self._registry

    @property
    def claims(self) -> MemoryClaims:
        """The connect guard of this process's web flows (``instantly_oauth_async.web``)."""
        return self._claims

    def __repr__(self) -> str:
        return (
            f"<MemoryStore budgets={len(self._logs)} blocks={len(self._blocks)} "
            f"breakers={len(self._breakers)}>"
        )

    def _block_left(self, keys: Sequence[str], now: float) -> float:
        blocks, left = self._blocks, 0.0
        if blocks:  # (none at all, mostly: no generator a request)
            for key in keys:
                until = blocks.get(key)
                if until is not None and until - now > left:
                    left = until - now
        return left

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
        # One process: its limiters' own queues are the whole line; ``asker`` changes nothing.
        now = self.clock.monotonic()
        blocked = self._block_left(block_keys, now)
        if blocked > 0:
            return blocked, True
        return take(self._logs, specs, now, lease, hold), False

    async def release(self, specs: Sequence[tuple[str, RateLimit]], lease: str) -> None:
        """Implements [`Store.release`][instantly_oauth_async.Store.release]."""
        release(self._logs, specs, lease, self.clock.monotonic())

    async def leave(self, specs: Sequence[tuple[str, RateLimit]], asker: str) -> None:
        """Implements [`Store.leave`][instantly_oauth_async.Store.leave]."""

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
        return await gated(self, specs, block_keys, breaker, lease=lease, hold=hold, asker=asker)

    async def block(self, keys: Sequence[str], seconds: float) -> None:
        """Implements [`Store.block`][instantly_oauth_async.Store.block]."""
        until = self.clock.monotonic() + max(0.0, seconds)
        for key in keys:
            self._blocks[key] = max(self._blocks.get(key, -math.inf), until)

    async def blocked_for(self, keys: Sequence[str]) -> float:
        """Implements [`Store.blocked_for`][instantly_oauth_async.Store.blocked_for]."""
        return max(0.0, self._block_left(keys, self.clock.monotonic()))

    def blocks_left(self) -> dict[str, float]:
        """Seconds left on every block still in force, by key (``RedisStore`` writes the blocks
        it learned while Redis was away back into Redis with this)."""
        now = self.clock.monotonic()
        self._blocks = {key: until for key, until in self._blocks.items() if until > now}
        return {key: until - now for key, until in self._blocks.items()}

    def _breaker(self, key: str) -> BreakerState:
        return self._breakers.setdefault(key, BreakerState())

    async def breaker_admit(self, key: str, policy: BreakerPolicy) -> Admission:
        """Implements [`Store.breaker_admit`][instantly_oauth_async.Store.breaker_admit]."""
        admission, _ = _breaker.admit(self._breaker(key), policy, self.clock.monotonic())
        return admission

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
        state = self._breaker(key)
        old, now = state.state, self.clock.monotonic()
        reason = _breaker.record(
            state, policy, now, success=success, probe=probe, retry_after=retry_after
        )
        if reason is None or state.state is old:
            return None
        return BreakerTransition(key, old, state.state, now, reason)

    async def breaker_release(self, key: str, *, probe: bool) -> None:
        """Implements [`Store.breaker_release`][instantly_oauth_async.Store.breaker_release]."""
        _breaker.release(self._breaker(key), probe=probe)

    async def breaker_state(self, key: str) -> CircuitState:
        """Implements [`Store.breaker_state`][instantly_oauth_async.Store.breaker_state]."""
        return self._breaker(key).state

    async def aclose(self) -> None:
        """Nothing to release; present so every store closes the same way."""

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


_DEFAULT: MemoryStore | None = None


async def gated(
    store: Store,
    specs: Sequence[tuple[str, RateLimit]],
    block_keys: Sequence[str],
    breaker: tuple[str, BreakerPolicy],
    *,
    lease: str | None = None,
    hold: float = 0.0,
    asker: str | None = None,
) -> tuple[float, bool, Admission]:
    """:meth:`Store.take_gated` in two steps, for a store that holds everything in one process
    (nothing can come between them): the breaker, then the budgets."""
    key, policy = breaker
    admission = await store.breaker_admit(key, policy)
    if not admission.allowed:
        return admission.wait, False, admission
    wait, blocked = await store.take(specs, block_keys, lease=lease, hold=hold, asker=asker)
    if wait > 0 and admission.probe:
        await store.breaker_release(key, probe=True)
        admission = Admission(True)
    return wait, blocked, admission


def default_store() -> MemoryStore:
    """The process-wide memory store every manager without a ``store=`` shares."""
    global _DEFAULT  # noqa: PLW0603 - one per process, by design: the IP budget is per process
    if _DEFAULT is None:
        _DEFAULT = MemoryStore()
    return _DEFAULT
