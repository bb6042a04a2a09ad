"""The registry's contract, the same for every implementation (issue 14): registration claims,
one claimer wins, fences refuse stale owners, outcomes keep their precedence, waiters wake.

The contract tests run against :class:`MemoryRegistry` and against ``RedisRegistry`` on a real
redis-server, whose scripts then take their time from the test's :class:`FakeClock` (a fixed
epoch plus the fake clock's reading, through ``time_source``): time moves only when the test
moves it, in Redis as in memory. The tests after them are Redis's own, on real time.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
import redis.asyncio as aioredis

from instantly_oauth_async import ClientStateError, MemoryStore
from instantly_oauth_async._registry import ANSWER, EXPIRED, LOST, MemoryRegistry, Registry
from instantly_oauth_async.redis import (
    RedisRegistry,
    RedisStore,
    RegistryUnavailableError,
    StoreError,
)
from instantly_oauth_async.testing import FakeClock
from tests._redis import RedisServer

pytestmark = pytest.mark.anyio

NS = "iox:test:reg:ws1"
DAY = 86400.0
EPOCH = 1_800_000_000.0  # the Redis scripts' time when the fake clock reads 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Registry]:
    if request.param == "memory":
        yield MemoryRegistry(clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    async with RedisStore.from_url(server.url, clock=clock) as store:
        await store._redis.flushdb()
        store.registry.time_source = lambda: EPOCH + clock.monotonic()
        yield store.registry


async def test_register_claims_for_the_starter(registry: Registry) -> None:
    entry = await registry.register(NS, "s1", '{"x":1}', owner="a", lease=15, retention=DAY)
    assert (entry.owner, entry.fence, entry.decided) == ("a", 1, False)
    assert entry.lease_until == pytest.approx(registry.now() + 15)
    again = await registry.get(NS, "s1")
    assert again == entry
    assert await registry.get(NS, "unknown") is None
    assert await registry.get("iox:test:reg:other", "s1") is None  # namespaces are apart


async def test_a_live_lease_cannot_be_claimed_a_lapsed_one_can_once(
    registry: Registry, clock: FakeClock
) -> None:
    await registry.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    assert await registry.claim(NS, "s1", "b", lease=15) is None
    assert await registry.orphans(NS) == []
    await clock.run_for(16)
    assert await registry.orphans(NS) == ["s1"]
    won = await registry.claim(NS, "s1", "b", lease=15)
    assert won is not None and (won.owner, won.fence) == ("b", 2)
    assert await registry.claim(NS, "s1", "c", lease=15) is None  # the race is over


async def test_renew_keeps_what_is_ours_and_names_what_is_not(
    registry: Registry, clock: FakeClock
) -> None:
    for sid in ("s1", "s2", "s3"):
        await registry.register(NS, sid, "{}", owner="a", lease=15, retention=DAY)
    await clock.run_for(10)
    assert await registry.renew(NS, "a", {"s1": 1, "s2": 1, "s3": 1}, lease=15) == []
    await clock.run_for(10)  # still within the renewed lease
    assert await registry.orphans(NS) == []
    await clock.run_for(6)  # lapsed: s2 is adopted by b
    assert await registry.claim(NS, "s2", "b", lease=15) is not None
    lost = await registry.renew(NS, "a", {"s1": 1, "s2": 1, "s3": 1}, lease=15)
    assert lost == ["s1", "s2", "s3"]  # lapsed leases are not renewed, adopted or not
    assert (await registry.get(NS, "s2")).owner == "b"  # type: ignore[union-attr]


async def test_release_lets_another_adopt_at_once(registry: Registry) -> None:
    await registry.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await registry.release(NS, "a", {"s1": 1})
    assert await registry.orphans(NS) == ["s1"]
    assert await registry.claim(NS, "s1", "b", lease=15) is not None


async def test_outcomes_first_writer_wins_precedence_and_the_fence(registry: Registry) -> None:
    await registry.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    lost = await registry.decide(NS, "s1", "lost", LOST, fence=1, retention=DAY)
    assert lost is not None and (lost.outcome, lost.rank) == ("lost", LOST)
    assert await registry.claim(NS, "s1", "b", lease=15) is None  # decided: nobody polls it
    same_rank = await registry.decide(NS, "s1", "lost-again", LOST, fence=None, retention=DAY)
    assert same_rank is not None and same_rank.outcome == "lost"  # first writer wins
    answer = await registry.decide(NS, "s1", "success", ANSWER, fence=None, retention=DAY)
    assert answer is not None and answer.outcome == "success"  # a real answer replaces "lost"
    expired = await registry.decide(NS, "s1", "expired", EXPIRED, fence=None, retention=DAY)
    assert expired is not None and expired.outcome == "success"  # never downgraded
    assert await registry.decide(NS, "nope", "x", ANSWER, fence=None, retention=DAY) is None


async def test_a_stale_fence_is_refused(registry: Registry, clock: FakeClock) -> None:
    await registry.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await clock.run_for(16)
    assert await registry.claim(NS, "s1", "b", lease=15) is not None  # fence 2
    stale = await registry.decide(NS, "s1", "error", ANSWER, fence=1, retention=DAY)
    assert stale is not None and not stale.decided
    assert await registry.renew(NS, "a", {"s1": 1}, lease=15) == ["s1"]
    fresh = await registry.decide(NS, "s1", "error", ANSWER, fence=2, retention=DAY)
    assert fresh is not None and fresh.outcome == "error"


async def test_decided_entries_are_forgotten_after_retention(
    registry: Registry, clock: FakeClock
) -> None:
    await registry.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await registry.decide(NS, "s1", "success", ANSWER, fence=1, retention=100)
    await clock.run_for(99)
    assert await registry.get(NS, "s1") is not None
    await clock.run_for(2)
    assert await registry.get(NS, "s1") is None


async def test_a_waiter_wakes_on_a_decision_and_on_its_timeout(
    registry: Registry, clock: FakeClock
) -> None:
    await registry.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    woke: list[float] = []

    async def waiter() -> None:
        await registry.wait(NS, "s1", within=30)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await clock.run_for(5)
        await registry.decide(NS, "s1", "success", ANSWER, fence=1, retention=DAY)
    assert woke == [pytest.approx(5)]
    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await clock.run_for(31)  # nothing changes: the timeout ends the wait
    assert woke[1] == pytest.approx(5 + 30)
