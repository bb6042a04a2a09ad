"""What a ``RedisStore`` decides while Redis is away, and just after it returns (see the module
``redis``): when the store is degraded and when Redis is tried again; this process's share of
each budget (``fallback_share``) and the wait before spending it (one window plus the longest
hold seen); what was learned meanwhile, to write into Redis on its return; and the careful
window after it, in which every take must also fit the local share. Blocks and breakers fall
back to an in-process store."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence

from .._limits import limiter as _limiter
from .._limits.clock import Clock
from .._stores.store import MemoryStore
from .._wire.models import RateLimit

__all__ = ["Fallback"]

logger = logging.getLogger("instantly_oauth_async")

Shares = list[tuple[str, RateLimit]]


class Fallback:
    """A store's life without Redis: the local logs of its share, and the leases spent in them."""

    def __init__(self, clock: Clock, *, share: float, retry_interval: float) -> None:
        self.clock = clock
        self.share = share
        self.retry_interval = retry_interval
        self.local = MemoryStore(clock)  # blocks and breakers while Redis is away
        self.logs: dict[str, _limiter.SlotLog] = {}  # slots spent while Redis is away
        self.local_leases: set[str] = set()  # spent only in the local logs
        self.dual_leases: set[str] = set()  # spent in Redis and, after a return, locally too
        self.down_since: float | None = None
        self.careful_until = -math.inf  # after Redis returns: takes must fit the local share too
        self.next_try = -math.inf
        self.max_hold = 0.0
        self.max_window = 0.0

    @property
    def degraded(self) -> bool:
        return self.down_since is not None

    @property
    def settle_for(self) -> float:
        """How long a slot spent may still count: the longest window plus the longest hold."""
        return self.max_window + self.max_hold

    def seen(self, specs: Sequence[tuple[str, RateLimit]], hold: float) -> None:
        """Remember the longest hold and window asked for (they bound what may still count)."""
        self.max_hold = max(self.max_hold, hold)
        self.max_window = max(self.max_window, *(limit.window for _, limit in specs))

    # -- away and back -----------------------------------------------------------------------

    def resting(self, now: float) -> bool:
        """Redis is away, and not to be tried again yet."""
        return self.down_since is not None and now < self.next_try

    def lost(self, now: float, exc: BaseException) -> None:
        """Redis could not be reached: live on the share, and try again after a while."""
        if self.down_since is None:
            self.down_since = now
            logger.warning("Redis unreachable (%s); living on a %g share of each budget",
                           type(exc).__name__, self.share)
        self.next_try = now + self.retry_interval

    def learned(self, now: float, member: Callable[[str], str]
                ) -> Iterator[tuple[str, float, str]]:
        """What Redis is to hear on its return (see _replay): the slots spent locally, each under
        a new member, and every block this process knows of: learned while Redis was away, or
        before a restart emptied it (the longer block wins, so none Redis holds is shortened)."""
        for key, log in self.logs.items():
            log.prune(now)
            for until in list(log.freed) + list(log.held.values()):
                yield f"{key}:freed", until - now, member("r")
        for key, left in self.local.blocks_left().items():
            yield key, left, ""

    def back(self, now: float) -> None:
        """Redis is back, and has heard what was learned: for one window, takes must also fit
        the local share; the leases spent locally are released in both places."""
        down = now if self.down_since is None else self.down_since
        logger.warning("Redis reachable again after %.1f s", now - down)
        self.down_since = None
        if self.share > 0:  # with no share, nobody spent anything on their own meanwhile
            self.careful_until = now + self.max_window
        self.dual_leases |= self.local_leases  # their release goes to both places now
        self.local_leases.clear()

    def settled(self) -> bool:
        """Redis is here, and the careful window after its return is over."""
        return self.down_since is None and self.clock.monotonic() >= self.careful_until

    def end_careful(self) -> None:
        """The careful window is over: forget the local logs."""
        if self.logs:
            self.logs.clear()
            self.dual_leases.clear()

    # -- the share ---------------------------------------------------------------------------

    def shares(self, specs: Sequence[tuple[str, RateLimit]]) -> Shares | None:
        """This process's share of each budget; None when a share rounds down to nothing."""
        shares = []
        for key, limit in specs:
            count = math.floor(limit.count * self.share)
            if count < 1:
                return None
            shares.append((key, RateLimit(count, limit.per, limit.margin)))
        return shares

    def careful(self, specs: Sequence[tuple[str, RateLimit]]) -> tuple[float, Shares | None]:
        """Before a take in Redis: the wait the local share asks for, and the shares a grant is
        to be counted against too (None: not careful, nor any share to count)."""
        now = self.clock.monotonic()
        if self.down_since is None and now < self.careful_until:
            shares = self.shares(specs)
            wait = _limiter.check(self.logs, shares, now) if shares else self.retry_interval
            return wait, shares
        if self.down_since is None:
            self.end_careful()
        return 0.0, None

    def spend(self, shares: Shares, lease: str | None, hold: float) -> None:
        """Count a slot granted in Redis while careful against the share too."""
        _limiter.spend(self.logs, shares, self.clock.monotonic(), lease, hold)
        if lease is not None:
            self.dual_leases.add(lease)

    def take(self, specs: Sequence[tuple[str, RateLimit]], lease: str | None, hold: float
             ) -> tuple[float, bool]:
        """A take while Redis is away: from the share, once what the fleet spent has settled."""
        now = self.clock.monotonic()
        retry = max(0.0, self.next_try - now) + 1e-3
        shares = self.shares(specs)
        if shares is None:
            return retry, False  # no share of this budget: wait for Redis
        # The fleet may have spent the whole budget just before Redis went away, and an init
        # granted then may reach the server up to a hold later.
        down = now if self.down_since is None else self.down_since
        settled = down + self.max_hold + self.max_window
        if now < settled:
            return min(settled - now, retry), False
        wait = _limiter.take(self.logs, shares, now, lease, hold)
        if wait <= 0 and lease is not None:
            self.local_leases.add(lease)
        return (min(wait, retry), False) if wait > 0 else (0.0, False)

    def release(self, specs: Sequence[tuple[str, RateLimit]], lease: str) -> bool:
        """Give a lease's slot back to the local logs it was counted in; True when Redis is to
        hear nothing of it (spent only here, or Redis is away: the held slot comes back by
        itself when its hold runs out)."""
        if lease in self.local_leases:
            self.local_leases.discard(lease)
            _limiter.release(self.logs, specs, lease, self.clock.monotonic())
            return True
        if lease in self.dual_leases:
            self.dual_leases.discard(lease)
            _limiter.release(self.logs, specs, lease, self.clock.monotonic())
        return self.down_since is not None
