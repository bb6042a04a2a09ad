"""Sliding-window budgets: the server's guarantee, all-or-nothing takes, FIFO and cancellation."""

from __future__ import annotations

import heapq

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instantly_oauth_async import MemoryStore, RateLimit
from instantly_oauth_async._limits.limiter import FairLimiter, SlotLog, TooLongError, release, take
from instantly_oauth_async.testing import FakeClock
from tests._windows import max_in_window

HOLD = 30.0


def serve(
    requests: list[tuple[float, float]], specs: list[tuple[str, RateLimit]], *, held: bool = True
) -> list[tuple[float, float]]:
    """Serve ``(arrival, duration)`` requests first come, first served, as the limiter would.

    Returns each request's ``(granted, ended)``. The head of the queue asks, sleeps the wait it
    is told and asks again; requests end (and release) at their own times in between.
    """
    logs: dict[str, SlotLog] = {}
    endings: list[tuple[float, str]] = []
    now, served = 0.0, []

    def settle(until: float) -> None:
        while endings and endings[0][0] <= until:
            ended, lease = heapq.heappop(endings)
            release(logs, specs, lease, ended)

    for i, (arrival, duration) in enumerate(sorted(requests, key=lambda r: r[0])):
        now = max(now, arrival)
        lease = str(i) if held else None
        while True:
            settle(now)
            wait = take(logs, specs, now, lease, HOLD)
            if wait <= 0:
                break
            now += wait
        if lease is not None:
            heapq.heappush(endings, (now + duration, lease))
        served.append((now, now + duration))
    return served


def max_overlap(served: list[tuple[float, float]], width: float) -> int:
    """The most requests a server window of ``width`` can see when each reached the server at
    any moment between its grant and its end: ``max_t #{granted <= t and ended > t - width}``."""
    return max(
        sum(1 for g, e in served if g <= t and e > t - width) for t, _ in served
    )


limits = st.builds(RateLimit, st.integers(1, 60), st.floats(0.5, 120),
                   st.floats(1e-3, 0.5)).filter(lambda lim: lim.margin <= lim.per)
requests = st.lists(
    st.tuples(st.floats(0, 600, allow_nan=False), st.floats(0, HOLD, allow_nan=False)),
    min_size=1, max_size=150,
)


@settings(max_examples=200, deadline=None)
@given(limits, requests)
def test_no_server_window_ever_sees_more_than_count(
    limit: RateLimit, reqs: list[tuple[float, float]]
) -> None:
    served = serve(reqs, [("k", limit)])
    assert max_overlap(served, limit.per) <= limit.count
    # and the margin is really there: even a window of per + margin sees no more
    assert max_overlap(served, limit.window * 0.999) <= limit.count


@settings(max_examples=100, deadline=None)
@given(limits, limits, requests)
def test_two_budgets_hold_both_limits(
    a: RateLimit, b: RateLimit, reqs: list[tuple[float, float]]
) -> None:
    served = serve(reqs, [("a", a), ("b", b)])
    assert max_overlap(served, a.per) <= a.count
    assert max_overlap(served, b.per) <= b.count


@settings(max_examples=100, deadline=None)
@given(limits, st.lists(st.floats(0, 600, allow_nan=False), min_size=1, max_size=300))
def test_unheld_grants_hold_the_window_too(limit: RateLimit, times: list[float]) -> None:
    grants = [g for g, _ in serve([(t, 0.0) for t in times], [("k", limit)], held=False)]
    assert max_in_window(grants, limit.window * 0.999) <= limit.count


def test_a_saturated_budget_runs_at_count_per_window() -> None:
    limit = RateLimit(75, per=60)
    served = serve([(0.0, 0.0)] * 750, [("k", limit)])
    grants = [g for g, _ in served]
    assert grants[74] == 0 and grants[75] == pytest.approx(limit.window)
    assert grants[-1] == pytest.approx(9 * limit.window)  # ten full windows, nothing lost
    assert 60 / limit.window > 0.99


def test_a_slot_comes_back_one_window_after_its_request_ended() -> None:
    limit = RateLimit(1, per=10, margin=0)
    served = serve([(0.0, 4.0), (0.0, 0.0)], [("k", limit)])
    assert served == [(0.0, 4.0), (14.0, 14.0)]


def test_a_lost_release_frees_the_slot_after_the_hold() -> None:
    logs: dict[str, SlotLog] = {}
    spec = [("k", RateLimit(1, per=10, margin=0))]
    assert take(logs, spec, 0.0, "lost", HOLD) == 0
    assert take(logs, spec, 1.0, "next", HOLD) == pytest.approx(10)  # look again in a window
    assert take(logs, spec, HOLD + 10.0, "next", HOLD) == 0


def test_take_is_all_or_nothing() -> None:
    logs: dict[str, SlotLog] = {}
    wide, narrow = RateLimit(10, per=1), RateLimit(1, per=1)
    assert take(logs, [("wide", wide), ("narrow", narrow)], 0.0) == 0
    assert take(logs, [("wide", wide), ("narrow", narrow)], 0.0) > 0
    assert len(logs["wide"].freed) == 1  # the refused take left it alone


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


async def test_cancelled_waiter_takes_no_slot() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    limit = RateLimit(1, per=1)
    limiter = FairLimiter(store, [("k", limit)], [], clock)
    granted: list[str] = []

    async def waiter(name: str) -> None:
        await limiter.acquire()
        granted.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter, "first")  # takes the one slot at once
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
        await clock.jump(limit.window)
    assert granted == ["first", "third"]
    assert clock.monotonic() == pytest.approx(limit.window)  # third got doomed's place


async def test_held_grant_keeps_its_slot_until_released() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    limit = RateLimit(1, per=1, margin=0)
    limiter = FairLimiter(store, [("k", limit)], [], clock)
    grant = await limiter.acquire(hold=HOLD)
    assert grant.lease is not None
    second = anyio.Event()

    async def waiter() -> None:
        await limiter.acquire()
        second.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await clock.jump(5)  # the first request is still in flight
        assert not second.is_set()
        await limiter.release(grant)
        await clock.jump(0.99)
        assert not second.is_set()
        await clock.jump(0.02)
        assert second.is_set()


async def test_block_holds_every_waiter_back() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    limiter = FairLimiter(store, [("k", RateLimit(100, per=1))], ["blk"], clock)
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
