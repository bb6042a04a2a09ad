"""Token buckets: pure arithmetic, plus a first-come-first-served queue in front of a store.

Guarantee (proved by the property tests): with capacity ``B = limit.burst`` and refill rate
``r = (count - B) / (per + margin)``, any interval of length ``L`` sees at most ``B + r * L``
grants, so any window of ``per + margin`` seconds sees at most ``count``, and so does any window of
``per`` seconds as the server counts it, even when network jitter shifts arrivals by up to
``margin``. Burst is 1 by default: a token bucket cannot do better than ``count - burst`` per window
in steady state, and every token of burst costs a token of sustained rate.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Protocol

import anyio
import attrs

from ._clock import Clock
from ._models import RateLimit

__all__ = ["Bucket", "FairLimiter", "TooLongError", "take"]

_EPSILON = 1e-9


@attrs.define
class Bucket:
    """A bucket's state: ``tokens`` as of monotonic time ``stamp``."""

    tokens: float
    stamp: float


def refill(bucket: Bucket | None, limit: RateLimit, now: float) -> Bucket:
    """The bucket as of ``now`` (a new one starts full)."""
    if bucket is None:
        return Bucket(float(limit.burst), now)
    elapsed = max(0.0, now - bucket.stamp)
    return Bucket(min(float(limit.burst), bucket.tokens + elapsed * limit.refill_rate), now)


def wait_for_token(bucket: Bucket, limit: RateLimit) -> float:
    """Seconds until ``bucket`` (already refilled) holds one whole token; 0 when it does."""
    missing = 1.0 - bucket.tokens
    return 0.0 if missing <= _EPSILON else missing / limit.refill_rate


def take(
    buckets: dict[str, Bucket], specs: Sequence[tuple[str, RateLimit]], now: float
) -> float:
    """Take one token from every bucket in ``specs`` at once, or from none.

    Returns 0 when taken, else the seconds until all of them could give one. ``buckets`` is
    updated in place either way (refilled; decremented only when taken).
    """
    wait = 0.0
    for key, limit in specs:
        bucket = refill(buckets.get(key), limit, now)
        buckets[key] = bucket
        wait = max(wait, wait_for_token(bucket, limit))
    if wait > 0:
        return wait
    for key, _ in specs:
        buckets[key].tokens = max(0.0, buckets[key].tokens - 1.0)
    return 0.0


class TooLongError(Exception):
    """Internal: the store says to wait longer than the caller allows (a server block)."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


class _Taker(Protocol):
    """What a FairLimiter needs of a store (see ``_store.Store.take``)."""

    async def take(
        self, specs: Sequence[tuple[str, RateLimit]], block_keys: Sequence[str]
    ) -> tuple[float, bool]: ...


class FairLimiter:
    """Waiters served first come, first served; only the head of the queue asks the store.

    A waiter cancelled while queued leaves the queue and takes no token. Each grant is one token
    from every bucket in ``specs``; a key in ``block_keys`` that the store marks blocked holds
    everyone back until the block ends.
    """

    def __init__(
        self,
        store: _Taker,
        specs: Sequence[tuple[str, RateLimit]],
        block_keys: Sequence[str],
        clock: Clock,
    ) -> None:
        self._store = store
        self._specs = tuple(specs)
        self._block_keys = tuple(block_keys)
        self._clock = clock
        self._queue: collections.deque[anyio.Event] = collections.deque()

    def __repr__(self) -> str:
        keys = ", ".join(k for k, _ in self._specs)
        return f"<FairLimiter [{keys}] waiting={len(self._queue)}>"

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def acquire(self, *, max_block: float = float("inf")) -> float:
        """Wait for a grant; returns the seconds spent waiting.

        Raises :class:`TooLongError` when the store reports a block longer than ``max_block``.
        """
        turn = anyio.Event()
        self._queue.append(turn)
        if self._queue[0] is turn:
            turn.set()
        started = self._clock.monotonic()
        try:
            await turn.wait()
            while True:
                wait, blocked = await self._store.take(self._specs, self._block_keys)
                if wait <= 0:
                    return self._clock.monotonic() - started
                if blocked and wait > max_block:
                    raise TooLongError(wait)
                await self._clock.sleep(wait)
        finally:
            if self._queue and self._queue[0] is turn:
                self._queue.popleft()
                if self._queue:
                    self._queue[0].set()
            else:
                self._queue.remove(turn)
