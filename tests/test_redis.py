"""Fleet mode against a real redis-server: the Lua scripts step for step against the pure Python
functions, the store behind a manager, three worker processes sharing one workspace, and Redis
cut mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks._common import utilisation
from instantly_oauth_async import OAuthManager, Provider, RateLimit, SessionStatus
from instantly_oauth_async._limits.breaker import (
    BreakerPolicy,
    BreakerState,
    admit,
    record,
    release,
)
from instantly_oauth_async._limits.limiter import SlotLog
from instantly_oauth_async._limits.limiter import release as release_slot
from instantly_oauth_async._limits.limiter import take as take_slot
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.testing import Network, Simulator, SimulatorLimits
from tests._redis import RedisServer
from tests._tree import ROOT
from tests._windows import max_in_window

pytestmark = pytest.mark.anyio
FIXTURE_REUSE = HealthCheck.function_scoped_fixture  # the store is reused; keys are per example


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(redis_server.url)
    s.time_override = 1000.0
    yield s
    await s.aclose()


# -- the scripts agree with the pure functions -----------------------------------------------

slot_ops = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.floats(0, 3), st.booleans(), st.floats(0.1, 5)),
        st.tuples(st.just("release"), st.floats(0, 3), st.integers(0, 20), st.just(0.0)),
    ),
    min_size=1, max_size=40,
)
small_limits = st.builds(RateLimit, st.integers(1, 4), st.floats(0.5, 5), st.floats(0, 0.1))


@settings(max_examples=40, deadline=None, suppress_health_check=[FIXTURE_REUSE])
@given(small_limits, small_limits, slot_ops)
async def test_take_and_release_scripts_match_the_limiter(
    store: RedisStore, a: RateLimit, b: RateLimit, ops: list[tuple[str, float, Any, float]]
) -> None:
    prefix = uuid.uuid4().hex
    specs = [(f"{prefix}:a", a), (f"{prefix}:b", b)]
    logs: dict[str, SlotLog] = {}
    now, leases, serial = 1000.0, list[tuple[str, float]](), 0
    for op, dt, arg, hold in ops:
        now += dt
        store.time_override = now
        if op == "take":
            lease = f"{prefix}:{serial}" if arg else None
            serial += 1
            expected = take_slot(logs, specs, now, lease, hold)
            got, blocked = await store.take(specs, [], lease=lease, hold=hold)
            assert not blocked
            assert got == pytest.approx(expected, abs=1e-6)
            if expected == 0 and lease is not None:
                leases.append((lease, hold))
        elif leases:
            lease, _ = leases.pop(arg % len(leases))
            release_slot(logs, specs, lease, now)
            await store.release(specs, lease)


breaker_ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.floats(0, 20), st.booleans(), st.none()),
        st.tuples(st.just("record"), st.floats(0, 20), st.booleans(),
                  st.one_of(st.none(), st.floats(0, 100))),
        st.tuples(st.just("release"), st.floats(0, 20), st.booleans(), st.none()),
    ),
    min_size=1, max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[FIXTURE_REUSE])
@given(breaker_ops, st.booleans())
async def test_breaker_scripts_match_the_state_machine(
    store: RedisStore, ops: list[tuple[str, float, bool, float | None]], success: bool
) -> None:
    key, policy, state = f"{uuid.uuid4().hex}:breaker", BreakerPolicy(), BreakerState()
    now = 1000.0
    for op, dt, flag, retry_after in ops:
        now += dt
        store.time_override = now
        if op == "admit":
            expected, _ = admit(state, policy, now)
            got = await store.breaker_admit(key, policy)
            assert (got.allowed, got.probe) == (expected.allowed, expected.probe)
            assert got.wait == pytest.approx(expected.wait, abs=1e-6)
        elif op == "record":
            outcome = flag ^ success
            record(state, policy, now, success=outcome, probe=flag, retry_after=retry_after)
            await store.breaker_record(
                key, policy, success=outcome, probe=flag, retry_after=retry_after)
        else:
            release(state, probe=flag)
            await store.breaker_release(key, probe=flag)
        assert await store.breaker_state(key) is state.state


async def test_blocks_are_shared_and_the_longest_wins(redis_server: RedisServer) -> None:
    first, second = RedisStore.from_url(redis_server.url), RedisStore.from_url(redis_server.url)
    key = f"{uuid.uuid4().hex}:blk"
    try:
        await first.block([key], 30)
        await second.block([key], 5)  # shorter: does not shorten the first
        assert 29 < await second.blocked_for([key]) <= 30
        wait, blocked = await second.take([(f"{key}:k", RateLimit(5, per=1))], [key])
        assert blocked and wait > 29
    finally:
        await first.aclose()
        await second.aclose()


# -- behind a manager ------------------------------------------------------------------------

async def test_manager_on_redis_connects_and_leaves_only_hashed_expiring_keys(
    redis_server: RedisServer, fast_sim: Simulator
) -> None:
    workspace = fast_sim.add_workspace("acme")
    store = RedisStore.from_url(redis_server.url)
    try:
        async with OAuthManager(workspace.api_key, base_url=fast_sim.url, store=store,
                                poll_interval=0.05) as manager:
            pending = await manager.start(Provider.GOOGLE)
            fast_sim.complete(pending.session.session_id, "ann@acme.io")
            result = await pending
        assert result.status is SessionStatus.SUCCESS
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            keys = [k.decode() async for k in client.scan_iter(match="iox:*")]
            assert keys
            assert not any(workspace.api_key in k for k in keys)
            for k in keys:
                assert await client.pttl(k) > 0, k  # every key expires on its own
        finally:
            await client.aclose()
    finally:
        await store.aclose()


async def test_unreachable_redis_with_no_share_sends_nothing_and_recovers(
    redis_server: RedisServer,
) -> None:
    # A second server this test may stop and start: an outage, with its data kept (AOF), so it
    # comes back as it was (back empty, the budgets wait out the loss: see the test below).
    spare = RedisServer(persistent=True)
    spare.start()
    store = RedisStore.from_url(spare.url, retry_interval=0.05)
    specs = [(f"{uuid.uuid4().hex}:k", RateLimit(5, per=60))]
    try:
        assert await store.take(specs, []) == (0.0, False)
        spare.stop()
        wait, blocked = await store.take(specs, [])
        assert store.degraded and wait > 0 and not blocked
        spare.start()
        store._next_try = 0.0  # no need to wait out retry_interval here
        assert await store.take(specs, []) == (0.0, False)
        assert not store.degraded
    finally:
        await store.aclose()
        spare.close()


# -- a fleet of processes --------------------------------------------------------------------

FACTOR = 20
WINDOW = 60 / FACTOR


async def run_fleet(
    sim: Simulator, api_key: str, redis_url: str, *, workers: int, count: int, share: float,
    status_share: float = 0.5,
) -> list[asyncio.subprocess.Process]:
    env = {**os.environ, "INSTANTLY_API_KEY": api_key, "PYTHONPATH": str(ROOT)}
    return [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests._fleet_worker", "--redis", redis_url,
            "--base-url", sim.url, "--count", str(count), "--window", str(WINDOW),
            "--share", str(share), "--status-share", str(status_share), "--name", f"w{i}",
            env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for i in range(workers)
    ]


async def collect(processes: list[asyncio.subprocess.Process]) -> list[dict[str, Any]]:
    reports = []
    for process in processes:
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode == 0, err.decode()[-2000:]
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    return reports


@pytest.mark.timing
async def test_three_worker_processes_share_one_workspace_budget(
    redis_server: RedisServer,
) -> None:
    """Polling may spend the whole standard window (``status_limit`` equal to it) and inits come
    on top: no 429 of any kind, and the fleet reaches the init rate the limits allow.

    (The network stays calm here: with 0-20 ms each way, each worker's sessions, made one after
    another by ``connect_many``, take 20 ms more each, and at 20x compression that alone costs
    several percent of the metric. The cut test below runs through that network.)"""
    async with Simulator(limits=SimulatorLimits().compressed(FACTOR)) as sim:
        workspace = sim.add_workspace("fleet")
        processes = await run_fleet(sim, workspace.api_key, redis_server.url,
                                    workers=3, count=150, share=0.0, status_share=1.0)
        reports = await collect(processes)
    assert [r["ok"] for r in reports] == [150, 150, 150]
    assert [(r.kind, r.outcome) for r in sim.requests if r.status == 429] == []
    api = [r.at for r in sim.requests if r.kind in ("init", "status")]
    assert max_in_window(api, WINDOW / 60) <= 100
    times = sorted(t for ts in sim.init_times.values() for t in ts)
    assert len(times) == 450
    assert max_in_window(times, WINDOW) <= 75
    ratio = utilisation(times, 75, WINDOW)
    trips = sum(r["round_trips"] for r in reports)
    print(f"fleet of 3: {ratio:.1%} of the allowed init rate; "
          f"{trips} Redis round trips for 450 inits and their polls")
    assert ratio >= 0.90


async def test_redis_restarted_empty_never_overfills_a_window(redis_server: RedisServer) -> None:
    """Three workers fill the init window (75); Redis is killed and at once restarted empty (no
    persistence), so its logs forget what that window spent. The first take after it sees a
    new epoch: the fleet waits until every slot spent before has come back (a window plus the
    longest hold), then goes on. Zero 429s, no window over 75, every session connects."""
    spare = RedisServer()
    spare.start()
    try:
        async with Simulator(limits=SimulatorLimits().compressed(FACTOR)) as sim:
            workspace = sim.add_workspace("fleet")
            processes = await run_fleet(sim, workspace.api_key, spare.url,
                                        workers=3, count=35, share=0.0)

            def inits() -> int:
                return sum(len(ts) for ts in sim.init_times.values())

            with anyio.fail_after(60):
                await sim.wait_for(lambda: inits() >= 75)
            spare.restart()  # SIGKILL, then back on the same port, empty
            reports = await collect(processes)
    finally:
        spare.close()
    assert [r["ok"] for r in reports] == [35, 35, 35]
    assert [r for r in sim.requests if r.status == 429] == []
    times = sorted(t for ts in sim.init_times.values() for t in ts)
    assert max_in_window(times, WINDOW) <= 75


@pytest.mark.timing
@pytest.mark.timeout(150)
async def test_redis_cut_mid_run_keeps_the_limits_and_recovers(
    redis_server: RedisServer,
) -> None:
    """Three workers, polling allowed the whole standard window, a network that delays every
    request 0-20 ms each way; Redis dies mid-run and comes back empty. No window may overfill at
    any moment: before, during and after the cut."""
    spare = RedisServer()
    spare.start()
    try:
        network = Network(jitter=0.02, seed=11)
        async with Simulator(limits=SimulatorLimits().compressed(FACTOR), network=network) as sim:
            workspace = sim.add_workspace("fleet")
            processes = await run_fleet(sim, workspace.api_key, spare.url,
                                        workers=3, count=75, share=1 / 3, status_share=1.0)

            def inits() -> int:
                return sum(len(ts) for ts in sim.init_times.values())

            with anyio.fail_after(60):
                await sim.wait_for(lambda: inits() >= 80)
            spare.stop()  # every worker loses Redis mid-run
            cut = inits()
            with anyio.fail_after(60):
                await sim.wait_for(lambda: inits() >= cut + 30)
            # back, and empty: the workers write their local slots into it; at most 115 inits
            # are left (225 in all), so the windows after it fill to their limit again
            spare.start()
            reports = await collect(processes)
    finally:
        spare.close()
    assert [r["ok"] for r in reports] == [75, 75, 75]
    assert [r for r in sim.requests if r.status == 429] == []
    times = sorted(t for ts in sim.init_times.values() for t in ts)
    assert max_in_window(times, WINDOW) <= 75
    api = [r.at for r in sim.requests if r.kind in ("init", "status")]
    assert max_in_window(api, WINDOW / 60) <= 100  # the standard second, through the cut too
    assert any(r["seen_degraded"] for r in reports)
    assert not any(r["degraded_at_end"] for r in reports)
