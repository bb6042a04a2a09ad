"""The registry's contract, the same for every implementation (issue 14): registration claims,
one claimer wins, fences refuse stale owners, outcomes keep their precedence, waiters wake.

The contract tests run against :class:`MemoryRegistry` and against ``RedisRegistry`` on a real
redis-server, whose scripts then take their time from the test's :class:`FakeClock` (a fixed
epoch plus the fake clock's reading, through ``time_source``): time moves only when the test
moves it, in Redis as in memory. The tests after them are Redis's own, on real time.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from instantly_oauth_async import ClientStateError, MemoryStore
from instantly_oauth_async._stores.registry import (
    ANSWER,
    EXPIRED,
    LOST,
    RELEASED,
    MemoryRegistry,
    Registry,
)
from instantly_oauth_async.redis import (
    RedisRegistry,
    RedisStore,
    RegistryUnavailableError,
    StoreError,
)
from instantly_oauth_async.redis import _subscriptions as _redis_subscriptions
from instantly_oauth_async.testing import FakeClock
from tests._redis import RedisServer, free_port
from tests.chaos._proxy import LatencyProxy

pytestmark = pytest.mark.anyio

NS = "iox:test:reg:ws1"
DAY = 86400.0
EPOCH = 1_800_000_000.0  # the Redis scripts' time when the fake clock reads 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()




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


async def test_now_at_least_is_now_when_no_time_passed_on_the_way(registry: Registry,
                                                                  clock: FakeClock) -> None:
    """The two readings of the store's clock differ by how long its last step's answer took:
    on a fake clock that stands still during a step, not at all, also as the clock moves."""
    await registry.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    assert registry.now_at_least() == registry.now()
    clock.advance(3)
    assert registry.now_at_least() == registry.now()


async def test_a_release_wakes_the_namespace_and_is_counted(registry: Registry) -> None:
    """A manager closing lets go of its leases: whoever waits on RELEASED wakes (the others
    adopt at once), and the count tells an adoption pass that one came while it looked."""
    entry = await registry.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await registry.register(NS, "s2", "{}", owner="a", lease=15, retention=DAY)
    before = registry.releases(NS)
    woke = anyio.Event()

    async def waiter() -> None:
        await registry.wait(NS, RELEASED, within=DAY)
        woke.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await registry.release(NS, "b", {"s1": entry.fence})  # not b's: nothing released
        await registry.release(NS, "a", {"s1": entry.fence})
        with anyio.fail_after(5):
            await woke.wait()
    assert registry.releases(NS) > before
    assert await registry.orphans(NS) == ["s1"]  # at once, without waiting for the lease


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


# -- Redis's own: real redis-server, real time -------------------------------------------------

def _ns() -> str:
    return f"iox:test:reg:{secrets.token_hex(6)}"


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_store_hands_out_one_registry_each() -> None:
    store = MemoryStore(FakeClock())
    assert store.registry is store.registry
    assert store.registry.now() == 0.0  # timed by the store's clock
    async with RedisStore.from_url("redis://127.0.0.1:1/0") as fleet:  # connects on first use
        assert fleet.registry is fleet.registry
        assert isinstance(fleet.registry, Registry)  # the protocol, checked at run time


async def test_of_twenty_racing_claimers_on_their_own_clients_exactly_one_wins(
    redis_server: RedisServer,
) -> None:
    ns = _ns()
    stores = [RedisStore.from_url(redis_server.url) for _ in range(21)]
    try:
        starter = stores[0].registry
        await starter.register(ns, "s1", "{}", owner="starter", lease=60, retention=600)
        await starter.release(ns, "starter", {"s1": 1})
        async with anyio.create_task_group() as group:  # connected and subscribed first,
            for store in stores[1:]:  # so that the claims race for real
                group.start_soon(store.registry.get, ns, "s1")
        won: dict[str, int] = {}

        async def claim(index: int) -> None:
            entry = await stores[index].registry.claim(ns, "s1", f"c{index}", lease=60)
            if entry is not None:
                won[f"c{index}"] = entry.fence

        async with anyio.create_task_group() as group:
            for index in range(1, 21):
                group.start_soon(claim, index)
        assert len(won) == 1 and list(won.values()) == [2]
        entry = await starter.get(ns, "s1")
        assert entry is not None and (entry.owner, entry.fence) == (*won, 2)
    finally:
        for store in stores:
            await store.aclose()


async def test_a_dropped_message_still_lets_the_waiter_resolve_within_its_bound(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    """``CLIENT KILL TYPE pubsub`` cuts the subscription while a waiter waits; the decision is
    published into the gap. The waiter, re-reading after each wake as waiters do, still learns
    the decision within ``within`` (woken when the subscription is confirmed again, at the
    latest by its timeout); and the next decision reaches a waiter again."""
    ns, within = _ns(), 3.0
    async with RedisStore.from_url(redis_server.url) as here, \
            RedisStore.from_url(redis_server.url) as there:
        waiting, deciding = here.registry, there.registry
        for sid in ("s1", "s2"):
            await waiting.register(ns, sid, "{}", owner="a", lease=60, retention=600)
        seen: list[tuple[float, str | None]] = []

        async def waiter(sid: str) -> None:
            start = anyio.current_time()
            while (entry := await waiting.get(ns, sid)) is not None and not entry.decided:
                await waiting.wait(ns, sid, within)
            seen.append((anyio.current_time() - start, entry.outcome if entry else None))

        async with anyio.create_task_group() as group:
            group.start_soon(waiter, "s1")
            await anyio.wait_all_tasks_blocked()
            assert await admin.client_kill_filter(_type="pubsub") >= 1
            await deciding.decide(ns, "s1", "success", ANSWER, fence=1, retention=600)
        async with anyio.create_task_group() as group:
            group.start_soon(waiter, "s2")
            await anyio.wait_all_tasks_blocked()
            await deciding.decide(ns, "s2", "error", ANSWER, fence=1, retention=600)
    (took1, outcome1), (took2, outcome2) = seen
    assert outcome1 == "success" and took1 < within + 0.5
    assert outcome2 == "error" and took2 < within


async def entries_of_each_kind(registry: RedisRegistry, ns: str) -> str:
    """In ``ns``: ``s1`` decided, ``s2`` released then claimed by another owner, ``s3`` owned;
    returns the prefix of the namespace's keys."""
    for sid in ("s1", "s2", "s3"):
        await registry.register(ns, sid, "{}", owner="a", lease=60, retention=600)
    await registry.decide(ns, "s1", "success", ANSWER, fence=1, retention=60)
    await registry.release(ns, "a", {"s2": 1})
    await registry.claim(ns, "s2", "b", lease=60)
    return f"iox:reg:{{{ns}}}"


async def test_every_key_and_the_channel_of_a_namespace_map_to_one_cluster_slot(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    ns = _ns()
    async with RedisStore.from_url(redis_server.url) as store:
        registry = store.registry
        tag = await entries_of_each_kind(registry, ns)
        keys = sorted([k.decode() async for k in admin.scan_iter(match=f"{tag}:*")])
        assert keys == [f"{tag}:e:s1", f"{tag}:e:s2", f"{tag}:e:s3", f"{tag}:lapse",
                        f"{tag}:meta"]
        for key in keys:
            assert 0 < await admin.pttl(key) <= 601_000, key  # every key expires on its own
        channel = registry._ns(ns)[3]
    # CLUSTER KEYSLOT wants cluster support (7.0 refuses it otherwise): a node of its own,
    # which hashes names without holding any slot.
    node = RedisServer(("--cluster-enabled", "yes", "--cluster-port", str(free_port())))
    node.start()
    try:
        async with aioredis.Redis.from_url(node.url) as client:
            slots = {await client.cluster("KEYSLOT", name)
                     for name in [*keys, channel]}
    finally:
        node.close()
    assert len(slots) == 1


async def test_renew_is_one_round_trip_for_every_lease_of_the_owner(
    redis_server: RedisServer,
) -> None:
    ns = _ns()
    async with RedisStore.from_url(redis_server.url) as store:
        registry = store.registry
        fences = {f"s{i}": 1 for i in range(50)}
        for sid in fences:
            await registry.register(ns, sid, "{}", owner="a", lease=60, retention=600)
        before = registry.round_trips
        assert await registry.renew(ns, "a", {**fences, "gone": 1}, lease=60) == ["gone"]
        assert registry.round_trips == before + 1


async def test_now_is_redis_time_advanced_locally(redis_server: RedisServer) -> None:
    clock = FakeClock()
    async with RedisStore.from_url(redis_server.url, clock=clock) as store:
        registry = store.registry
        with pytest.raises(RegistryUnavailableError, match="not been read yet"):
            registry.now()  # no step reached Redis yet: its clock is unknown, an outage's error
        entry = await registry.register(_ns(), "s1", "{}", owner="a", lease=60, retention=600)
        assert registry.now() == entry.created_at  # the fake clock has not moved since
        clock.advance(5)
        assert registry.now() == entry.created_at + 5


async def test_now_brackets_redis_time_however_late_the_answer_came(
    redis_server: RedisServer,
) -> None:
    """Redis reads its clock somewhere between a step's send and its answer: ``now()`` (which
    every lease check uses) is never behind Redis's clock, and ``now_at_least()`` (which a renew
    times the lease it extends from) never ahead of it, even when the answer took 0.3 s (Redis
    slow, or this process paused as it waited). A reading paired with the midpoint, as before,
    ran 0.15 s behind here: a lease looked that much longer than Redis's."""
    proxy = LatencyProxy(redis_server.port)
    await proxy.start()
    try:
        async with RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", timeout=5) as store, \
                aioredis.Redis.from_url(redis_server.url) as direct:
            registry = store.registry
            await registry.get(_ns(), "warm-up")  # the connection and the script, at no delay
            proxy.answer_delay = 0.3
            await registry.get(_ns(), "s1")
            proxy.answer_delay = 0.0
            at_least = registry.now_at_least()
            seconds, micros = await direct.time()
            at_most = registry.now()
        assert at_least <= seconds + micros / 1e6 <= at_most
        assert at_most - at_least >= 0.3  # the answer's delay is the reading's uncertainty
    finally:
        await proxy.aclose()


async def test_an_outage_raises_a_retryable_error_and_waiters_time_out() -> None:
    spare = RedisServer()
    spare.start()
    ns = _ns()
    try:
        async with RedisStore.from_url(spare.url, retry_interval=0.05) as store:
            registry = store.registry
            await registry.register(ns, "s1", "{}", owner="a", lease=60, retention=600)
            spare.stop()
            with pytest.raises(RegistryUnavailableError):
                await registry.claim(ns, "s1", "b", lease=60)
            with anyio.fail_after(2):
                await registry.wait(ns, "s1", within=0.2)  # no raise: the bound holds
            spare.start()  # no persistence: a restarted Redis has forgotten the entry
            assert await registry.get(ns, "s1") is None
            again = await registry.register(ns, "s1", "{}", owner="b", lease=60, retention=600)
            assert again.owner == "b"
    finally:
        spare.close()


async def test_a_subscription_gone_silent_is_noticed_and_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection that dies without a reset (here: the server stopped with SIGSTOP) answers
    no PING: the listener connects again, and waiters hear decisions again once it is back."""
    monkeypatch.setattr(_redis_subscriptions, "_IDLE_READ", 0.05)
    spare = RedisServer()
    spare.start()
    assert spare.process is not None
    ns = _ns()
    try:
        async with RedisStore.from_url(spare.url, retry_interval=0.05) as store:
            registry = store.registry
            await registry.register(ns, "s1", "{}", owner="a", lease=60, retention=600)
            with anyio.fail_after(1):
                await registry.wait(ns, "s1", within=0.3)  # idle reads and a PING answered
            assert registry._failures == 0
            os.kill(spare.process.pid, signal.SIGSTOP)
            try:
                with anyio.fail_after(5):
                    while registry._failures == 0:  # noqa: ASYNC110 - no event to await
                        await anyio.sleep(0.01)  # bounded: two silent idle reads
            finally:
                os.kill(spare.process.pid, signal.SIGCONT)
            async with anyio.create_task_group() as group:
                group.start_soon(functools.partial(
                    registry.decide, ns, "s1", "success", ANSWER, fence=1, retention=600))
                with anyio.fail_after(3):
                    while (entry := await registry.get(ns, "s1")) is None or not entry.decided:
                        await registry.wait(ns, "s1", within=5)
    finally:
        spare.close()


async def test_a_key_of_the_wrong_type_raises_a_store_error(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    ns = _ns()
    await admin.set(f"iox:reg:{{{ns}}}:lapse", "not a sorted set")
    async with RedisStore.from_url(redis_server.url) as store:
        with pytest.raises(StoreError) as caught:
            await store.registry.register(ns, "s1", "{}", owner="a", lease=60, retention=600)
    assert caught.value.code == "WRONGTYPE"


async def test_a_user_without_the_channels_gets_a_store_error(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    user, password = f"iox-reg-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    await admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                            commands=["+@all"], reset_channels=True)
    try:
        url = redis_server.url.replace("redis://", f"redis://{user}:{password}@")
        async with RedisStore.from_url(url, retry_interval=0.05) as store:
            with pytest.raises(StoreError) as caught:
                await store.registry.register(_ns(), "s1", "{}", owner="a", lease=60,
                                              retention=600)
        assert caught.value.code == "NOPERM"
        assert password not in str(caught.value)
    finally:
        await admin.acl_deluser(user)


async def test_closing_wakes_waiters_and_later_steps_are_refused(
    redis_server: RedisServer,
) -> None:
    ns = _ns()
    store = RedisStore.from_url(redis_server.url)
    registry: RedisRegistry = store.registry
    await registry.register(ns, "s1", "{}", owner="a", lease=60, retention=600)
    async with anyio.create_task_group() as group:
        group.start_soon(registry.wait, ns, "s1", 60.0)
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await store.aclose()
    with pytest.raises(ClientStateError):
        await registry.get(ns, "s1")
