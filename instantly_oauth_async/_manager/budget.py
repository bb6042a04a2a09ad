"""The workspace's standard budget, which every request of the workspace spends, and its handle.

The server counts every request of a workspace against one standard limit (100 per second and
6,000 per minute), whatever the endpoint, the API key or the API version: the manager's inits,
status reads and account reads, and everything else the application sends. :class:`Budget` lets
the application spend from the same budget, so that together they stay within it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

import anyio

from .._limits.limiter import FairLimiter
from .._observe.stats import Tally
from .._wire.exceptions import ConfigurationError
from .._wire.models import RateLimit

__all__ = ["DEFAULT_STANDARD_LIMIT", "DEFAULT_STATUS_LIMIT", "Budget", "limits_of"]

#: The workspace's standard API limit, as the API documents it.
DEFAULT_STANDARD_LIMIT: Final = (RateLimit(100, per=1), RateLimit(6000, per=60))
#: The share of the standard budget that polling and account fetches may spend by default: half
#: of each, leaving the rest to inits and the application's other calls.
DEFAULT_STATUS_LIMIT: Final = (RateLimit(50, per=1), RateLimit(3000, per=60))


def limits_of(name: str, value: RateLimit | Sequence[RateLimit]) -> tuple[RateLimit, ...]:
    """One ``RateLimit`` or a non-empty sequence of them, as a tuple; else ConfigurationError."""
    limits = (value,) if isinstance(value, RateLimit) else tuple(value)
    if not limits or not all(isinstance(x, RateLimit) for x in limits):
        raise ConfigurationError(f"{name} must be a RateLimit or a sequence of them")
    return limits


class Budget:
    """The workspace's standard budget, for the application's own requests to Instantly.

    ::

        async with manager.budget.slot():
            async with http.get(f"{api}/api/v2/campaigns", headers=auth) as response:
                ...

    :meth:`slot` waits for one slot of every standard limit (first come, first served with the
    manager's own requests) and holds it while the block runs: the slot counts from the moment it
    was granted until the block is left, and comes back one window (``per + margin``) after that.
    Whatever the network does to the request in between, no window on the server's side sees
    more than the limit. Send exactly one request per slot, inside the block.
    """

    def __init__(self, limiter: FairLimiter, *, hold: float, tally: Tally | None = None) -> None:
        self._limiter = limiter
        self._hold = hold
        self._tally = tally

    def __repr__(self) -> str:
        return f"<Budget waiting={self._limiter.waiting}>"

    @property
    def waiting(self) -> int:
        """How many requests (the manager's own polls excluded) wait for a slot now."""
        return self._limiter.waiting

    @asynccontextmanager
    async def slot(self, *, hold: float | None = None) -> AsyncIterator[None]:
        """Hold one slot of the standard budget for one request, sent inside the block.

        ``hold`` (default: the manager's ``request_timeout`` plus 5 s) bounds how long the slot
        may stay held: a slot whose holder vanished (a crashed process, with a shared store) comes
        back ``hold`` plus one window after it was granted. Keep the request inside it: give it a
        timeout no longer than ``hold``. Bound the wait with ``anyio.fail_after``. A block left by
        a cancellation keeps the slot until its hold ends, since the request it was sending may
        still reach the server.
        """
        seconds = self._hold if hold is None else hold
        if not 0 < seconds < float("inf"):
            raise ConfigurationError("hold must be a positive number of seconds")
        grant = await self._limiter.acquire(hold=seconds)
        if self._tally is not None:
            self._tally.waited("caller", None, grant.waited)
        ended = True
        try:
            yield
        except BaseException as exc:
            # Left by a cancellation, the request sent inside may be on its way still: the slot
            # comes back after its hold (as a vanished holder's), not a window from now.
            ended = not isinstance(exc, anyio.get_cancelled_exc_class())
            raise
        finally:
            if ended:
                await self._limiter.release(grant)
