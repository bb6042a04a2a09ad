"""The connect guard: a user's claim taken in the store (one pending connection per user, a cap
in all, across every worker sharing the store), their session started once while other requests
of theirs wait on that start, and the claim dropped when the session is decided or fails to
start; a store that is away is a 503 refusal."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import anyio

from .._manager.fleet import UnknownSessionError
from .._manager.manager import OAuthManager
from .._manager.pending import PendingConnection
from .._stores.claims import Claims
from .._wire.exceptions import ClientStateError, ConfigurationError, InstantlyError
from .._wire.models import Provider
from ._answers import Refusal
from ._handles import Handles

__all__ = ["Guard"]

#: Seconds between two attempts to find a session another request is starting.
_STARTING_POLL = 0.1


class Guard:
    """The guard of one flow, in ``namespace`` of the store's claims (the ``store`` given, or
    the manager's); sessions it starts go into ``handles``, each with a watcher that drops its
    claim when it is decided."""

    def __init__(self, manager: Callable[[], OAuthManager], store: Any | None, handles: Handles,
                 *, provider: Provider | str, namespace: str, limit: int, per_user: int,
                 start_timeout: float, grace: float) -> None:
        self._manager = manager
        self._store = store
        self._handles = handles
        self._provider = provider
        self._ns = namespace
        self._limit = limit
        self._per_user = per_user
        self._start_timeout = start_timeout
        self._grace = grace
        self._starting: dict[str, asyncio.Task[PendingConnection]] = {}
        self.watchers: set[asyncio.Task[None]] = set()  #: one a session started here, till dropped

    @property
    def claims(self) -> Claims:
        """The connect guard of the store (``store.claims``).

        Raises:
            ConfigurationError: the store keeps no claims.
        """
        store = self._store if self._store is not None else self._manager().store
        claims = getattr(store, "claims", None)
        if not isinstance(claims, Claims):
            raise ConfigurationError(f"{type(store).__name__} keeps no claims: use MemoryStore, "
                                     "SQLiteStore or RedisStore")
        return claims

    async def connect(self, user: str) -> PendingConnection:
        """The user's pending connection: the one they hold (from any worker), or one started
        now when they may; a refusal past the limits or while a start elsewhere goes on."""
        claims = self.claims
        deadline = time.monotonic() + self._start_timeout
        for _ in range(int(self._start_timeout / _STARTING_POLL) + 2):  # bounded, as below
            claim = await _guarded(claims.claim(
                self._ns, user, hold=self._start_timeout + 5, per_user=self._per_user,
                limit=self._limit))
            if claim.state == "full":
                raise Refusal(503, "too many connections pending; try again later",
                              headers={"Retry-After": "60"})
            if claim.state == "taken":
                task = asyncio.get_running_loop().create_task(self._start(user, claim.ticket))
                self._starting[user] = task
                task.add_done_callback(lambda t: self._forget_start(user, t))
                return await _shielded(task)
            if claim.session_id is None:  # starting: here (another tab), or on another worker
                local = self._starting.get(user)
                if local is not None:
                    return await _shielded(local)
                if time.monotonic() > deadline:
                    raise Refusal(503, "a connection is still starting; try again later",
                                  headers={"Retry-After": "5"})
                await anyio.sleep(_STARTING_POLL)
                continue
            try:
                pending = await self._handles.attach(claim.session_id)
            except UnknownSessionError:
                pending = None
            if pending is not None and not pending.done():
                return pending
            # decided (or forgotten) while its claim was left behind: it leaves now
            await _guarded(claims.drop(self._ns, user, session_id=claim.session_id))
        raise Refusal(503, "a connection is still starting; try again later",
                      headers={"Retry-After": "5"})

    def _forget_start(self, user: str, task: asyncio.Task[PendingConnection]) -> None:
        if self._starting.get(user) is task:
            del self._starting[user]
        if not task.cancelled():
            task.exception()  # retrieved: its awaiters got it, or nobody was left to

    async def _start(self, user: str, ticket: str) -> PendingConnection:
        claims, ns = self.claims, self._ns
        try:
            pending = await self._manager().start(self._provider, timeout=self._start_timeout)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(InstantlyError):
                await claims.drop(ns, user, ticket=ticket)  # nothing started: try again
            raise
        sid = pending.session.session_id
        left = (pending.session.expires_at - datetime.now(timezone.utc)).total_seconds()
        await _guarded(claims.bind(ns, user, ticket, sid, hold=max(1.0, left) + self._grace))
        self._handles.keep(pending)
        watcher = asyncio.get_running_loop().create_task(self._drop_when_decided(user, pending))
        self.watchers.add(watcher)
        watcher.add_done_callback(self.watchers.discard)
        return pending

    async def _drop_when_decided(self, user: str, pending: PendingConnection) -> None:
        try:
            await pending
        except ClientStateError:
            return  # the manager closed, the session goes on elsewhere: its claim stays
        except InstantlyError:
            pass  # over all the same (its outcome was lost, or it was cancelled)
        await self.release(user, pending.session.session_id)

    async def release(self, user: str, session_id: str) -> None:
        """The user's claim on ``session_id`` leaves (a store away: it stays till its end)."""
        with contextlib.suppress(InstantlyError):
            await self.claims.drop(self._ns, user, session_id=session_id)

    async def stop_watchers(self) -> None:
        """Stop the watchers, as the flow closes (their sessions go on)."""
        tasks = [*self.watchers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _shielded(task: asyncio.Task[PendingConnection]) -> PendingConnection:
    try:
        return await asyncio.shield(task)  # a request that goes away leaves the start alone
    except InstantlyError as exc:
        if isinstance(exc, Refusal):
            raise
        raise Refusal(503, type(exc).__name__) from None


async def _guarded(step: Awaitable[Any]) -> Any:
    try:
        return await step
    except ConfigurationError:
        raise
    except InstantlyError as exc:  # the store is away: ask again later
        raise Refusal(503, type(exc).__name__, headers={"Retry-After": "5"}) from None
