"""Cancellation at random points: waiters, sessions, awaiters and the manager itself.

No slot is lost to a cancelled waiter, no poll outlives its session or the manager, and nothing
is sent after the manager has exited.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import anyio
import pytest

from benchmarks._common import OPEN
from instantly_oauth_async import (
    ClientStateError,
    MemoryStore,
    OAuthManager,
    PendingConnection,
    RateLimit,
    SessionCancelledError,
    SessionStatus,
)
from instantly_oauth_async._limits.limiter import FairLimiter
from instantly_oauth_async.testing import FakeClock, Simulator, SimulatorLimits

pytestmark = pytest.mark.anyio
BIG = 10**6


@pytest.fixture
async def open_sim() -> AsyncIterator[Simulator]:
    """A simulator whose limits are out of the way: these tests are about cancellation."""
    limits = SimulatorLimits(init_per_workspace=BIG, init_per_ip=BIG, api_per_second=BIG,
                             api_per_minute=BIG)
    async with Simulator(limits=limits) as simulator:
        yield simulator


async def start_many(manager: OAuthManager, count: int) -> list[PendingConnection]:
    """``count`` sessions started at once, in a list by start order. One after another, each
    start waits its turn on the event loop behind up to 100 reads of the sessions started
    before it (5-25 ms a start under asyncio's debug mode): most of these tests' time, spent
    on nothing they check."""
    pendings: list[PendingConnection | None] = [None] * count

    async def start(i: int) -> None:
        pendings[i] = await manager.start("google")

    async with anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(start, i)
    return [p for p in pendings if p is not None]


async def test_hundreds_of_cancelled_waiters_cost_no_slot() -> None:
    rng = random.Random(3)  # noqa: S311 - a seeded script, not security
    clock = FakeClock()
    store = MemoryStore(clock)
    limit = RateLimit(10, per=1, margin=0)
    limiter = FairLimiter(store, [("k", limit)], [], clock)
    granted: list[tuple[int, float]] = []
    scopes: dict[int, anyio.CancelScope] = {}

    async def waiter(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            await limiter.acquire()
            granted.append((i, clock.monotonic()))

    async with anyio.create_task_group() as group:
        for i in range(1000):
            group.start_soon(waiter, i)
        await anyio.wait_all_tasks_blocked()
        doomed = set(rng.sample(range(10, 1000), 500))
        for step in range(20):  # cancel in batches while time moves and grants happen
            for i in [d for d in doomed if d % 20 == step]:
                scopes[i].cancel()
            await anyio.wait_all_tasks_blocked()
            await clock.run_for(rng.uniform(0, 1.0))
        await clock.run_until_idle()

    order = [i for i, _ in granted]
    assert order == sorted(order)  # first come, first served
    assert set(range(1000)) - set(order) <= doomed  # only the cancelled went without
    assert len(order) >= 500
    # Ten per window, none wasted on the cancelled: the n-th grant lands in window n // 10.
    assert [int(t / limit.window + 1e-9) for _, t in granted] == [
        n // 10 for n in range(len(granted))]
    assert limiter.waiting == 0


async def test_cancelling_sessions_and_awaiters_at_random_points(open_sim: Simulator) -> None:
    sim = open_sim
    rng = random.Random(5)  # noqa: S311 - a seeded script, not security
    workspace = sim.add_workspace("acme")
    outcomes: dict[str, object] = {}
    async with OAuthManager(workspace.api_key, base_url=sim.url, poll_interval=0.02,
                            init_limit=OPEN, ip_init_limit=OPEN, fetch_account=False,
                            status_limit=RateLimit(300, per=1),
                            standard_limit=RateLimit(BIG, per=1)) as manager:
        pendings = await start_many(manager, 300)
        plans = {p.session.session_id: rng.choice(["cancel", "drop-awaiter", "complete"])
                 for p in pendings}

        async def awaiter(p: PendingConnection, scope: anyio.CancelScope) -> None:
            with scope:
                try:
                    outcomes[p.session.session_id] = (await p).status
                except SessionCancelledError as exc:
                    outcomes[p.session.session_id] = exc

        async def act(p: PendingConnection, scope: anyio.CancelScope) -> None:
            await anyio.sleep(rng.uniform(0, 0.1))
            plan = plans[p.session.session_id]
            if plan == "cancel":
                p.cancel()
            elif plan == "drop-awaiter":
                scope.cancel()  # the caller gives up; the session goes on
                sim.complete(p.session.session_id, f"{p.session.session_id[:8]}@acme.io")
            else:
                sim.complete(p.session.session_id, f"{p.session.session_id[:8]}@acme.io")

        async with anyio.create_task_group() as group:
            for p in pendings:
                scope = anyio.CancelScope()
                group.start_soon(awaiter, p, scope)
                group.start_soon(act, p, scope)
        for p in pendings:  # a dropped awaiter cancelled nothing: the session still ends
            if plans[p.session.session_id] == "drop-awaiter":
                assert (await p).status is SessionStatus.SUCCESS
        assert manager.stats().pending == 0

    for p in pendings:
        sid, got = p.session.session_id, outcomes.get(p.session.session_id)
        if plans[sid] == "cancel":
            assert isinstance(got, SessionCancelledError)  # nobody completes these
        elif plans[sid] == "complete":
            assert got is SessionStatus.SUCCESS


async def test_nothing_is_sent_after_the_manager_exits(open_sim: Simulator) -> None:
    sim = open_sim
    workspace = sim.add_workspace("acme")
    for round_ in range(5):
        # A store of its own each round: the process's default one would hand the sessions a
        # closed manager let go to the next manager, which would poll them all again.
        manager = OAuthManager(workspace.api_key, base_url=sim.url, poll_interval=0.01,
                               init_limit=OPEN, ip_init_limit=OPEN,
                               status_limit=RateLimit(500, per=1),
                               standard_limit=RateLimit(BIG, per=1), store=MemoryStore())
        async with manager:
            pendings = await start_many(manager, 50)
            with anyio.move_on_after(0.02 * (round_ + 1)):  # exit while polls are in flight
                await anyio.sleep(1)
        sent = len(sim.requests)
        for p in pendings:
            with pytest.raises(ClientStateError):
                await p
        await anyio.wait_all_tasks_blocked()  # whatever was left would have sent by now
        assert len(sim.requests) == sent
        assert manager.stats().pending == 0
