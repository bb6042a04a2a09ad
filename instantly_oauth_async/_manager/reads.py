"""Status and account reads, each on a leased slot of the status share and the standard budget.

A slot is granted before the read and released when the read has ended, however it ended: the
server saw the read at some moment in between, so its slot counts from the release (see
``_limiter``). A 429 on a read holds back every request of the workspace, since the standard
limit is the workspace's.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from .._limits.limiter import FairLimiter, Grant
from .._observe.events import Operation
from .._observe.stats import Tally
from .._stores.store import MemoryStore, Store
from .._wire.client import InstantlyClient
from .._wire.models import Account, OAuthStatus

__all__ = ["Reads", "send_leased"]

T = TypeVar("T")


async def send_leased(
    limiter: FairLimiter, grant: Grant, tally: Tally, endpoint: Operation,
    send: Callable[[], Awaitable[T]], *, provider: str | None = None, attempt: int = 1,
) -> T:
    """``send()`` one request on ``grant``: counted in ``tally``, its slots released when it has
    ended (answered, failed or timed out: the server saw it at some moment up to then).

    Cancelled, it has not ended: it may be on its way still, and reach the server later (the
    chaos soak saw a 429 from an account read cut short by a close, with the network slow). Its
    slots then come back after their hold, as a vanished holder's do."""
    began = time.perf_counter()
    ended = True
    try:
        answer = await send()
    except BaseException as exc:
        ended = not isinstance(exc, anyio.get_cancelled_exc_class())
        tally.answer(endpoint, exc, provider=provider, duration=time.perf_counter() - began,
                     attempt=attempt)
        raise
    finally:
        if ended:
            await limiter.release(grant)
    tally.answer(endpoint, provider=provider, duration=time.perf_counter() - began,
                 attempt=attempt)
    return answer


class Reads:
    """The reads of one manager; ``slot()`` is also how the poll scheduler paces itself."""

    def __init__(
        self,
        client: InstantlyClient,
        store: Store,
        limiter: FairLimiter,
        standard_key: str,
        tally: Tally,
        *,
        hold: float,
        status_timeout: float,
    ) -> None:
        self._client = client
        self._store = store
        self._limiter = limiter
        self._standard_key = standard_key
        self._tally = tally
        self._hold = hold
        self._status_timeout = status_timeout
        self._at_once = isinstance(store, MemoryStore)  # it answers without suspending

    async def slot(self) -> Grant:
        """A slot of the status share and of the standard budget, held until released."""
        grant = await self._limiter.acquire(hold=self._hold)
        self._tally.waited("read", None, grant.waited)
        return grant

    async def slot_now(self) -> Grant | None:
        """A slot of ``slot()``'s if one is free now, on a store that answers at once (the
        in-process one); else ``None``, and a store over the network is not asked (its round
        trip is a wait). Never goes ahead of one waiting in ``slot()``."""
        if not self._at_once:
            return None
        grant = (await self._limiter.take_now(hold=self._hold))[0]
        if grant is not None:
            self._tally.waited("read", None, grant.waited)
        return grant

    async def release(self, grant: Grant) -> None:
        """A slot that ends up unused (its session finished while it was granted)."""
        await self._limiter.release(grant)

    async def status(self, session_id: str, grant: Grant, *, provider: str | None = None
                     ) -> OAuthStatus:
        """One status read on ``grant``, released as soon as the read has ended."""
        return await send_leased(
            self._limiter, grant, self._tally, "status",
            lambda: self._client.get_oauth_status(session_id, timeout=self._status_timeout),
            provider=provider)

    async def account(self, email: str, *, provider: str | None = None) -> Account:
        """One account read on a slot of its own, held until the read has ended."""
        return await send_leased(self._limiter, await self.slot(), self._tally, "account",
                                 lambda: self._client.get_account(email), provider=provider)

    async def hold_back(self, retry_after: float | None) -> None:
        """The server answered 429: no request of the workspace goes before ``retry_after``."""
        await self._store.block([self._standard_key], retry_after or 1.0)
