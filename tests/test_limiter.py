"""Token buckets: the sliding-window guarantee, all-or-nothing takes, FIFO and cancellation."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instantly_oauth_async import MemoryStore, RateLimit
from instantly_oauth_async._limiter import Bucket, FairLimiter, TooLongError, take
from instantly_oauth_async.testing import FakeClock
from tests._windows import max_in_window


def grant_times(arrivals: list[float], specs: list[tuple[str, RateLimit]]) -> list[float]:
    """Serve arrivals first come, first served, each waiting as the limiter would."""
    buckets: dict[str, Bucket] = {}
    now, grants = 0.0, []
    for arrival in sorted(arrivals):
        now = max(now, arrival)
        while (wait := take(buckets, specs, now)) > 0:
            now += wait
        grants.append(now)
    return grants



limits = st.integers(2, 200).flatmap(
    lambda count: st.builds(RateLimit, st.just(count), st.floats(0.5, 120),
                            st.integers(1, min(10, count - 1)))
)
arrivals = st.lists(st.floats(0, 600, allow_nan=False), min_size=1, max_size=400)


@settings(max_examples=200, deadline=None)
@given(limits, arrivals)
def test_no_window_ever_sees_more_than_count(limit: RateLimit, times: list[float]) -> None:
    grants = grant_times(times, [("k", limit)])
    assert max_in_window(grants, limit.per) <= limit.count
    # even with jitter of up to `margin` between our clock and the server's
    assert max_in_window(grants, limit.per + limit.margin * 0.999) <= limit.count


@settings(max_examples=100, deadline=None)
@given(limits, limits, arrivals)
def test_two_buckets_hold_both_limits(a: RateLimit, b: RateLimit, times: list[float]) -> None:
    grants = grant_times(times, [("a", a), ("b", b)])
    assert max_in_window(grants, a.per) <= a.count
    assert max_in_window(grants, b.per) <= b.count


def test_sustained_rate_is_count_minus_burst_per_window_plus_margin() -> None:
    limit = RateLimit(75, per=60)
    grants = grant_times([0.0] * 1000, [("k", limit)])
    per_minute = (len(grants) - 1) / (grants[-1] - grants[0]) * 60
    assert per_minute == pytest.approx(74 * 60 / 61, rel=1e-6)
    assert per_minute / 75 > 0.97


def test_take_is_all_or_nothing() -> None:
    buckets: dict[str, Bucket] = {}
    wide, narrow = RateLimit(10, per=1, burst=5), RateLimit(2, per=1, burst=1)
    assert take(buckets, [("wide", wide), ("narrow", narrow)], 0.0) == 0
    assert take(buckets, [("wide", wide), ("narrow", narrow)], 0.0) > 0
    assert buckets["wide"].tokens == pytest.approx(4.0)  # the refused take left it alone


pytestmark = pytest.mark.anyio


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    limiter = FairLimiter(store, [("k", RateLimit(2, per=1))], [], clock)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await limiter.acquire()
        order.append(i)

    async with anyio.create_task_group() as group:
        for i in range(6):
            group.start_soon(waiter, i)
            await anyio.wait_all_tasks_blocked()
        await clock.run_until_idle()
    assert order == list(range(6))


async def test_cancelled_waiter_takes_no_token() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    limit = RateLimit(3, per=1)  # burst 1, refill 2 per 1+1/60 s
    limiter = FairLimiter(store, [("k", limit)], [], clock)
    granted: list[str] = []

    async def waiter(name: str) -> None:
        await limiter.acquire()
        granted.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter, "first")  # takes the one token at once
        await anyio.wait_all_tasks_blocked()
        victims = anyio.CancelScope()

        async def doomed() -> None:
            with victims:
                await waiter("doomed")

        group.start_soon(doomed)
        group.start_soon(waiter, "third")
        await anyio.wait_all_tasks_blocked()
        victims.cancel()
        await anyio.wait_all_tasks_blocked()
        assert limiter.waiting == 1
        await clock.jump(1 / limit.refill_rate)
    assert granted == ["first", "third"]
    assert clock.monotonic() == pytest.approx(1 / limit.refill_rate)  # third got doomed's slot


async def test_block_holds_every_waiter_back() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    limiter = FairLimiter(store, [("k", RateLimit(100, per=1, burst=50))], ["blk"], clock)
    await store.block(["blk"], 30)
    done = anyio.Event()

    async def waiter() -> None:
        await limiter.acquire()
        done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await clock.jump(29.9)
        assert not done.is_set()
        await clock.jump(0.2)
        assert done.is_set()


async def test_block_longer_than_allowed_raises() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    limiter = FairLimiter(store, [("k", RateLimit(10, per=1))], ["blk"], clock)
    await store.block(["blk"], 1800)
    with pytest.raises(TooLongError) as info:
        await limiter.acquire(max_block=120)
    assert info.value.wait == pytest.approx(1800)
    assert limiter.waiting == 0
