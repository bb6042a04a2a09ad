"""The events a fleet meets every week, each as a user meets it (issue 21): a deploy's close in
the middle of a flow, a handle awaited while its manager closes, cancelled sessions, a registry
wiped under a live owner, start() racing aclose(), adopted sessions' deadlines, and a registry
that must forget what it decided. Memory and Redis stores alike, on a real redis-server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from instantly_oauth_async import (
    ClientStateError,
    ConnectResult,
    MemoryStore,
    OAuthManager,
    OAuthSession,
    OutcomeLostError,
    Provider,
    SessionCancelledError,
    SessionStatus,
    Store,
)
from instantly_oauth_async._stores.registry import MemoryRegistry, RegistryUnavailableError
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.testing import FakeClock, Faults, Network, Simulator, SimulatorLimits
from tests._reads import overlapping_reads, status_reads
from tests._sessions import session_named
from tests._split_store import SplitStore
from tests.chaos._proxy import LatencyProxy

pytestmark = pytest.mark.anyio

KINDS = ["memory", "redis"]


@contextlib.asynccontextmanager
async def two_stores(request: pytest.FixtureRequest, kind: str, url: str | None = None
                     ) -> AsyncIterator[list[Store]]:
    """Two stores sharing one registry: one MemoryStore twice, or two RedisStores."""
    if kind == "memory":
        shared = MemoryStore()
        yield [shared, shared]
        return
    url = url or request.getfixturevalue("redis_server").url
    async with RedisStore.from_url(url) as a, RedisStore.from_url(url) as b:
        yield [a, b]


def options(sim: Simulator, **extra: Any) -> dict[str, Any]:
    return {"base_url": sim.url, **sim.limits.manager_limits(), "poll_interval": 0.05,
            "expiry_grace": 1.0, "session_lease": 6.0, "status_timeout": 1.0, **extra}


# -- 1: a close during the account fetch keeps the answer it read ------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("account_delay", "fetched"), [(0.2, True), (2.0, False)])
async def test_a_close_during_the_account_fetch_stores_the_answer_it_read(
    request: pytest.FixtureRequest, kind: str, account_delay: float, fetched: bool
) -> None:
    """The owner reads a SUCCESS, starts the account fetch (each way takes ``account_delay``),
    and closes (a deploy's SIGTERM) while it is on the wire. The answer is stored before the
    lease goes: the owner's own handle and the other manager's both get the success (with the
    account when the fetch ends within ``status_timeout``, else with ``account_error`` saying
    why), and nobody reads the session again (no 404, no reconciliation)."""
    network = Network(latency=account_delay, kinds=frozenset({"account"}))
    async with Simulator(limits=SimulatorLimits().compressed(20), network=network) as sim, \
            two_stores(request, kind) as stores:
        key = sim.add_workspace().api_key
        async with OAuthManager(key, store=stores[0], **options(sim)) as survivor:
            owner = OAuthManager(key, store=stores[1], **options(sim))
            async with owner:
                pending = await owner.start("google")
                sid = pending.session.session_id
                attached = await survivor.attach(sid)
                sim.complete(sid, "ann@acme.io")
                with anyio.fail_after(10):
                    await sim.wait_for(lambda: bool(sim.in_flight("account")))
            # closed, with the fetch on the wire as it began to close
            with anyio.fail_after(5):
                mine = await pending
                theirs = await attached
        assert mine.status is SessionStatus.SUCCESS and mine.email == "ann@acme.io"
        assert theirs == mine
        if fetched:
            assert mine.account is not None and mine.account_error is None
        else:
            assert mine.account is None
            assert mine.account_error is not None and "closed" in mine.account_error
        assert [r.status for r in status_reads(sim, sid)][-1] == 200  # nobody read it again
        assert not any(r.status == 404 for r in status_reads(sim, sid))
        assert overlapping_reads(sim, sid) == []


# -- 2: attach() handles end when their manager closes -----------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_an_attached_handle_ends_when_its_manager_closes(
    request: pytest.FixtureRequest, kind: str
) -> None:
    async with Simulator(limits=SimulatorLimits().compressed(20)) as sim, \
            two_stores(request, kind) as stores:
        key = sim.add_workspace().api_key
        async with OAuthManager(key, store=stores[0], **options(sim)) as owner:
            pending = await owner.start("google")
            watcher = OAuthManager(key, store=stores[1], **options(sim))
            async with watcher:
                attached = await watcher.attach(pending.session.session_id)
            with anyio.fail_after(5), pytest.raises(ClientStateError, match="closed"):
                await attached
            assert not pending.done()  # the owner's session goes on


# -- 3: the in-process registry forgets decided sessions after retention ----------------------

async def test_the_memory_registry_forgets_decided_sessions_after_retention() -> None:
    clock = FakeClock()
    registry = MemoryRegistry(clock)
    for i in range(1000):
        await registry.register("ns", f"s{i}", "{}", owner="a", lease=10, retention=50)
        await registry.decide("ns", f"s{i}", '{"x": 1}', 3, fence=1, retention=50)
        await registry.wait("ns", f"s{i}", within=0)  # a waiter that timed out
    undecided = await registry.register("ns", "open", "{}", owner="a", lease=10, retention=500)
    assert len(registry) == 1001
    clock.advance(49)
    assert (await registry.get("ns", "s0")) is not None
    clock.advance(2)
    await registry.get("ns", "open")  # any step forgets what is due
    assert len(registry) == 1  # only the undecided one, kept for its own retention
    assert registry._changed == {}  # no waiter's event either
    assert sum(len(queue[0]) for queue in registry._forget.values()) == 1
    assert (await registry.get("ns", "s0")) is None
    assert (await registry.get("ns", "open")) == undecided


async def test_the_memory_registry_orphan_scan_skips_decided_sessions() -> None:
    registry = MemoryRegistry(FakeClock())
    for i in range(500):
        await registry.register("ns", f"s{i}", "{}", owner="a", lease=0.5, retention=50)
        await registry.decide("ns", f"s{i}", '{"x": 1}', 3, fence=1, retention=50)
    await registry.register("ns", "lapsed", "{}", owner="a", lease=-1, retention=50)
    assert await registry.orphans("ns") == ["lapsed"]
    assert len(registry._open["ns"]) == 1  # what a pass looks through


# -- 4: a cancelled session is handed over, not held for the manager's life --------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_cancelled_sessions_are_handed_over_and_finished_by_the_fleet(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """A worker cancels 40 sessions (as leaving connect_many's loop does). Its leases go at
    once: another manager adopts them and polls each to its real outcome, long before the
    cancelling manager closes, and its awaiters (through attach) get those outcomes."""
    async with Simulator(limits=SimulatorLimits().compressed(20)) as sim, \
            two_stores(request, kind) as stores:
        key = sim.add_workspace().api_key
        # A lapse would take 30 s: hand-over is at once. Reads get 3 s: with the simulator in
        # this process, a machine at load 7 once took over 1 s to hand the client an answer the
        # server had given (a one-time answer lost on the wire, then 404).
        opts = options(sim, session_lease=30.0, status_timeout=3.0)
        async with OAuthManager(key, store=stores[0], **opts) as other, \
                OAuthManager(key, store=stores[1], **opts) as worker:
            pendings = [await worker.start("google") for _ in range(40)]
            attached = [await other.attach(p.session.session_id) for p in pendings]
            for p in pendings:
                p.cancel()
            for p in pendings:
                with pytest.raises(SessionCancelledError):
                    await p
            with anyio.fail_after(5):
                await sim.wait_for(lambda: all(
                    p.session.session_id in other._poller.pending for p in pendings))
            assert worker._fleet is not None and worker._fleet.fences == {}
            for i, p in enumerate(pendings):
                sid = p.session.session_id
                if i % 2:
                    sim.complete(sid, f"p{i}@acme.io")
                else:
                    sim.deny(sid)
            with anyio.fail_after(10):
                results = [await a for a in attached]
            assert [r.status for r in results] == [
                SessionStatus.SUCCESS if i % 2 else SessionStatus.ERROR for i in range(40)]
            assert worker._poller.pending == {}
            assert all(overlapping_reads(sim, p.session.session_id) == [] for p in pendings)


@pytest.mark.parametrize("kind", KINDS)
async def test_sessions_cancelled_right_before_aclose_are_released_with_the_rest(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """A worker cancels its sessions and closes at once (a deploy's SIGTERM while leaving a
    connect_many loop): the hand-over of each cancelled session, still to run when the close
    began, leaves it to the close's release. Every session is let go then, so the other manager
    adopts them at once (the lease is 30 s: a lapse would take 20 s and more) and polls each to
    its real outcome for the attach() handles. (The hand-over used to drop each session from
    the closing manager's books without letting go of it: it stayed held until its lease
    lapsed.)"""
    async with Simulator(limits=SimulatorLimits().compressed(20)) as sim, \
            two_stores(request, kind) as stores:
        key = sim.add_workspace().api_key
        opts = options(sim, session_lease=30.0)
        async with OAuthManager(key, store=stores[0], **opts) as other:
            async with OAuthManager(key, store=stores[1], **opts) as worker:
                pendings = [await worker.start("google") for _ in range(5)]
                attached = [await other.attach(p.session.session_id) for p in pendings]
                for p in pendings:
                    p.cancel()
            with anyio.fail_after(5):
                await sim.wait_for(lambda: all(
                    p.session.session_id in other._poller.pending for p in pendings))
            for i, p in enumerate(pendings):
                sim.complete(p.session.session_id, f"p{i}@acme.io")
            with anyio.fail_after(5):
                results = [await a for a in attached]
        assert [r.status for r in results] == [SessionStatus.SUCCESS] * 5


async def test_a_lone_manager_reads_its_cancelled_sessions_once_after_their_deadline() -> None:
    """With nobody else to hand them to, a cancelled session is not polled by its manager
    until its deadline (expiry + grace) has passed; then one read tells its real outcome, which
    is stored, and nothing of it is held any more."""
    limits = SimulatorLimits(session_ttl=60.0).compressed(20)  # a 3 s life
    async with Simulator(limits=limits) as sim:
        key = sim.add_workspace().api_key
        async with OAuthManager(key, **options(sim, session_lease=3.0)) as manager:
            pending = await manager.start("google")
            began = sim.clock()
            sid = pending.session.session_id
            with anyio.fail_after(5):
                await sim.wait_for(lambda: len(status_reads(sim, sid)) >= 1)
            pending.cancel()
            reads_at_cancel = len(status_reads(sim, sid))
            sim.complete(sid, "late@acme.io")  # the person allowed after all
            assert manager._fleet is not None
            with anyio.fail_after(limits.session_ttl + 10):
                await sim.wait_for(lambda: sid not in sim.sessions)  # read, once, at last
            late = status_reads(sim, sid)[reads_at_cancel:]
            assert len(late) == 1
            assert late[0].at - began >= limits.session_ttl + 1.0 - 0.5  # past expiry + grace
            attached = await manager.attach(sid)
            with anyio.fail_after(5):
                result = await attached
            assert result.status is SessionStatus.SUCCESS and result.email == "late@acme.io"
            assert manager._fleet.fences == {} and manager._poller.pending == {}


# -- 6: a registry wiped under a live owner ---------------------------------------------------

async def test_an_owner_deciding_after_a_redis_wipe_registers_again_and_stores(
    redis_server: Any,
) -> None:
    async with Simulator(limits=SimulatorLimits().compressed(20)) as sim, \
            RedisStore.from_url(redis_server.url) as a, \
            RedisStore.from_url(redis_server.url) as b, \
            aioredis.Redis.from_url(redis_server.url) as raw:

        key = sim.add_workspace().api_key
        opts = options(sim, session_lease=30.0)  # no heartbeat comes before the decision
        # the owner's budgets in memory: they need not wait out the wipe (tests/test_redis.py has
        # that), so its reads go on
        async with OAuthManager(key, store=SplitStore(a), **opts) as owner, \
                OAuthManager(key, store=b, **opts) as other:
            pending = await owner.start("google")
            sid = pending.session.session_id
            attached = await other.attach(sid)
            await raw.flushall()  # a restart without persistence, or a failover that lost it
            sim.complete(sid, "ann@acme.io")
            with anyio.fail_after(5):
                mine = await pending
                theirs = await attached
        assert mine.status is SessionStatus.SUCCESS and theirs == mine


# -- 7: start() racing aclose() ---------------------------------------------------------------

async def test_start_racing_aclose_raises_and_hands_the_session_over(redis_server: Any) -> None:
    """The manager closes while start() registers the session it just created (each Redis trip
    takes 0.3 s). start() raises ClientStateError, and the session, whose init was spent, is
    registered and handed over: another manager polls it."""
    proxy = LatencyProxy(redis_server.port)  # the chaos soak's: Redis through a slow network
    await proxy.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(proxy.aclose)
        sim = await stack.enter_async_context(
            Simulator(limits=SimulatorLimits().compressed(20)))
        slow = await stack.enter_async_context(
            RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", timeout=5.0))
        fast = await stack.enter_async_context(RedisStore.from_url(redis_server.url))
        key = sim.add_workspace().api_key
        async with OAuthManager(key, store=fast, **options(sim)) as other:
            manager = OAuthManager(key, store=slow, **options(sim))
            await manager.__aenter__()
            proxy.delay = 0.15
            outcome: list[BaseException] = []

            async def start() -> None:
                try:
                    await manager.start("google")
                except ClientStateError as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(start)
                with anyio.fail_after(10):
                    await sim.wait_for(lambda: any(r.kind == "init" and r.answered is not None
                                                   for r in sim.requests))
                await manager.aclose()
            assert len(outcome) == 1 and "handed over" in str(outcome[0])
            sid = next(iter(sim.sessions))
            with anyio.fail_after(10):  # adopted at once by the other manager, and polled
                await sim.wait_for(lambda: len(status_reads(sim, sid)) >= 1)
            assert sid in other._poller.pending


# -- 8: an adopted session's deadline comes from its real age ---------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_an_adopted_session_gives_up_at_its_own_deadline(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """Every status read fails (500). The owner closes when the session is 2 s old (of a 4 s
    life, 1 s grace); the adopter gives up at the session's deadline, 5 s after its start, not
    a whole life after the adoption (7 s)."""
    limits = SimulatorLimits(session_ttl=4.0).compressed(1)
    faults = Faults(server_error=1.0, kinds=frozenset({"status"}))
    async with Simulator(limits=limits, faults=faults) as sim, \
            two_stores(request, kind) as stores:
        key = sim.add_workspace().api_key
        opts = options(sim, poll_interval=0.2, session_lease=3.0)
        async with OAuthManager(key, store=stores[0], **opts) as adopter:
            owner = OAuthManager(key, store=stores[1], **opts)
            async with owner:
                pending = await owner.start("google")
                began = sim.clock()
                sid = pending.session.session_id
                with anyio.fail_after(5):
                    await sim.wait_for(lambda: sim.clock() - began >= 2.0
                                       and len(status_reads(sim, sid)) >= 1)
            attached = await adopter.attach(sid)
            with anyio.fail_after(10), pytest.raises(OutcomeLostError):
                await attached
            ended = sim.clock() - began
        assert 4.5 <= ended <= 6.5, ended


# -- found by the chaos soak (tests/chaos), each made deterministic ------------------------------

async def test_a_failed_renew_does_not_revive_a_lease_that_had_lapsed() -> None:
    """Seed 6 (redis): an owner paused past its lease woke while Redis was away; its renew
    failed, and it extended every lease it held, the lapsed one too, so it read a session
    another manager had adopted (two reads, the second a 404). A failed renew now extends only
    what is still good."""
    from instantly_oauth_async._manager.fleet import Fleet  # noqa: PLC0415
    from tests._redis import RedisServer  # noqa: PLC0415

    clock, server = FakeClock(), RedisServer()
    server.start()
    try:
        async with RedisStore.from_url(server.url, clock=clock, timeout=0.3) as store:
            registry = store.registry
            registry.time_source = lambda: 1_800_000_000.0 + clock.monotonic()
            fleet = Fleet(registry, "{test}:ws", "owner", lease=3.0, retention=60,
                          read_margin=1.0)
            entry = await registry.register(fleet.ns, "s1", "{}", owner="owner", lease=3.0,
                                            retention=60)
            fleet._hold(entry)
            assert fleet.holds("s1") and fleet.may_read("s1")
            clock.advance(5.0)  # paused past its lease
            server.stop()  # and Redis away as it wakes
            assert await fleet.renew() == []
            assert not fleet.holds("s1") and not fleet.may_read("s1")
    finally:
        server.close()


async def test_an_owner_whose_lease_lapsed_stores_nothing_of_its_own_on_waking() -> None:
    """Seed 2 (redis): an owner paused past its lease and past the session's deadline woke and
    stored "lost" (the reaper's verdict, unfenced) before the adopter stored the person's real
    answer, which then replaced it by rank: early awaiters got "lost", later ones the answer.
    A manager whose lease lapsed decides nothing: its own handle gets the adopter's answer."""
    clock = FakeClock()
    store = MemoryStore(clock)
    limits = SimulatorLimits().compressed(20)  # a session lives 30 s
    async with Simulator(limits=limits) as sim:
        key = sim.add_workspace().api_key
        opts = options(sim, clock=clock, poll_interval=0.5, session_lease=3.0,
                       expiry_grace=1.0)
        async with OAuthManager(key, store=store, **opts) as owner, \
                OAuthManager(key, store=store, **opts) as adopter:
            pending = await owner.start("google")
            sid = pending.session.session_id
            sim.complete(sid, "ann@acme.io")  # the person allowed while the owner slept
            clock.advance(limits.session_ttl + 5)  # past the lease and the deadline at once
            with anyio.fail_after(20):
                while not pending.done():  # bounded by fail_after: fake time in small steps
                    await clock.run_for(0.5)
            mine = await pending
            theirs = await adopter.attach(sid)
            with anyio.fail_after(5):
                assert await theirs == mine
        assert mine.status is SessionStatus.SUCCESS and mine.email == "ann@acme.io"
        assert [r.status for r in status_reads(sim, sid)] == [200]  # the adopter's one read


async def test_a_cancelled_session_the_registry_lost_is_registered_again_and_handed_over(
    redis_server: Any,
) -> None:
    """Seed 6 (redis): Redis restarted empty, and the owner cancelled its handle before its
    heartbeat registered the session again; the hand-over released nothing and dropped it, so
    nobody polled it and its watchers ended with UnknownSessionError although the person then
    connected. It is registered again first, then handed over."""
    async with Simulator(limits=SimulatorLimits().compressed(20)) as sim, \
            RedisStore.from_url(redis_server.url) as a, \
            RedisStore.from_url(redis_server.url) as b, \
            aioredis.Redis.from_url(redis_server.url) as raw:
        key = sim.add_workspace().api_key
        opts = options(sim, session_lease=30.0)  # no heartbeat before the cancel
        async with OAuthManager(key, store=a, **opts) as owner, \
                OAuthManager(key, store=b, **opts) as other:
            pending = await owner.start("google")
            sid = pending.session.session_id
            attached = await other.attach(sid)
            await raw.flushall()
            pending.cancel()
            with anyio.fail_after(5):  # the other manager adopts it and polls it
                await sim.wait_for(lambda: sid in other._poller.pending)
            sim.complete(sid, "ann@acme.io")
            with anyio.fail_after(10):
                result = await attached
        assert result.status is SessionStatus.SUCCESS and result.email == "ann@acme.io"


async def test_a_lease_is_good_only_as_long_as_the_store_last_confirmed_it() -> None:
    """Seed 6 (redis), twice. (1) While Redis was away an owner extended its leases locally and
    kept reading; when Redis came back, another manager found the lease lapsed by Redis's clock
    and adopted it, and the two read the same session. Nothing is extended locally now: the
    lease ends when Redis last said it would. (2) After a failed renew the heartbeat tries again
    every tenth of a lease, so an outage that ends shortly before the lease would lapse leaves
    it renewed (the next beat, a third of a lease on, would have come too late)."""
    from tests._redis import RedisServer  # noqa: PLC0415

    clock, server = FakeClock(), RedisServer(persistent=True)
    server.start()
    try:
        async with Simulator(limits=SimulatorLimits().compressed(20)) as sim, \
                RedisStore.from_url(server.url, clock=clock, timeout=0.3,
                                    retry_interval=0.05) as store:
            store.registry.time_source = lambda: 1_800_000_000.0 + clock.monotonic()
            key = sim.add_workspace().api_key
            async with OAuthManager(key, store=store, **options(
                    sim, clock=clock, poll_interval=60.0, session_lease=3.0)) as owner:
                pending = await owner.start("google")
                sid = pending.session.session_id
                fleet = owner._fleet
                assert fleet is not None
                until = (await store.registry.get(fleet.ns, sid)).lease_until  # type: ignore[union-attr]
                server.stop()
                await clock.run_for(2.5)  # the beats fail meanwhile
                assert fleet.renew_failed
                assert fleet._until[sid] == pytest.approx(until)  # (1) not extended
                assert not fleet.may_read(sid)  # 0.5 s left: too little for a read
                server.start()  # back with its data, 0.5 s before the lease lapses
                await clock.run_for(0.35)  # (2) a beat within a tenth of a lease renews it
                ns = fleet.ns
                with anyio.fail_after(5):  # that renew's reply comes in real time
                    while (entry := await store.registry.get(ns, sid)) is not None \
                            and entry.lease_until <= until:
                        pass  # each get is a round trip to Redis: the renew's reply lands
                assert entry is not None and entry.owner == fleet.owner
                assert fleet.holds(sid)
    finally:
        server.close()


async def test_a_wipe_is_told_to_the_very_process_that_made_the_epoch(redis_server: Any) -> None:
    """Found under load (test_redis_restarted_empty_never_overfills_a_window failed 1 run in 6
    on a busy machine): a process made the store's epoch with a token of its own, Redis was
    wiped, and the same process's next take made the epoch again with the same token, so
    nobody saw the loss and the next inits were granted against empty logs (two 429s). Each
    step now brings a token never used before."""
    from instantly_oauth_async import RateLimit  # noqa: PLC0415

    specs = [("iox:{epoch-test}:budget", RateLimit(5, per=60))]
    async with RedisStore.from_url(redis_server.url) as store, \
            aioredis.Redis.from_url(redis_server.url) as raw:
        await raw.flushall()
        assert await store.take(specs, [], lease="a", hold=1.0) == (0.0, False)  # makes it
        await raw.flushall()  # a restart without persistence
        wait, blocked = await store.take(specs, [], lease="b", hold=1.0)
        assert not blocked and wait == pytest.approx(60 * 1.005 + 1.0, abs=0.5)


async def test_an_outcome_decided_while_redis_was_away_is_stored_when_it_comes_back_empty(
) -> None:
    """Seed 14 (redis): the owner decided while Redis was down (its own awaiter got the answer
    at once), and Redis came back empty; the heartbeat's write found no entry and dropped the
    outcome, so the manager that attached ended with UnknownSessionError while the owner
    lived. It registers the session again and stores the outcome."""
    from tests._redis import RedisServer  # noqa: PLC0415

    server = RedisServer()  # no persistence: a restart comes back empty
    server.start()
    try:
        owner_side = RedisStore.from_url(server.url, timeout=0.3, retry_interval=0.2)
        waiter_side = RedisStore.from_url(server.url, timeout=0.3, retry_interval=0.2)

        async with Simulator(limits=SimulatorLimits().compressed(20)) as sim, \
                owner_side, waiter_side:
            key = sim.add_workspace().api_key
            opts = options(sim, session_lease=1.5, status_timeout=0.3, fetch_account=False)
            async with OAuthManager(key, store=SplitStore(owner_side), **opts) as owner, \
                    OAuthManager(key, store=waiter_side, **opts) as waiter:
                pending = await owner.start("google")
                sid = pending.session.session_id
                attached = await waiter.attach(sid)
                server.stop()
                try:
                    sim.complete(sid, "ann@acme.io")
                    with anyio.fail_after(10):
                        mine = await pending  # the owner's awaiter does not wait for Redis
                finally:
                    server.start()  # back, empty
                with anyio.fail_after(10):
                    theirs = await attached
        assert mine.status is SessionStatus.SUCCESS and theirs == mine
    finally:
        server.close()


async def test_an_owner_that_registers_a_wiped_session_again_reads_it_before_any_verdict(
) -> None:
    """Seed 2 (redis): an owner paused past its lease and the session's deadline woke after a
    Redis wipe, registered the session again (nobody else could hold it), and at once stored
    "no status read could be made" where one read would have told (the server said expired).
    A session held anew is read once before the manager gives a verdict of its own."""
    from tests._redis import RedisServer  # noqa: PLC0415

    clock, server = FakeClock(), RedisServer()
    server.start()
    try:
        async with Simulator(limits=SimulatorLimits().compressed(20)) as sim, \
                RedisStore.from_url(server.url, clock=clock) as registry_side, \
                aioredis.Redis.from_url(server.url) as raw:
            registry_side.registry.time_source = lambda: 1_800_000_000.0 + clock.monotonic()

            key = sim.add_workspace().api_key
            async with OAuthManager(key, store=SplitStore(registry_side, clock), **options(
                    sim, clock=clock, poll_interval=0.5, session_lease=3.0)) as owner:
                pending = await owner.start("google")
                sid = pending.session.session_id
                sim.expire(sid)  # the person never came
                await raw.flushall()  # Redis restarted empty while the owner slept
                clock.advance(sim.limits.session_ttl + 5)  # past its lease and its deadline
                with anyio.fail_after(20):
                    while not pending.done():  # bounded by fail_after: fake time in steps
                        await clock.run_for(0.2)
                result = await pending
        assert result.status is SessionStatus.EXPIRED  # what the server said, once read
        assert [r.status for r in status_reads(sim, sid)] == [200]
    finally:
        server.close()


async def test_a_slot_left_by_a_cancellation_comes_back_after_its_hold() -> None:
    """Memory seed 12: a 429 of the standard limit. A request cut short by a cancellation (an
    account read cut by a close, a caller's block cancelled) had its slot released at once,
    coming back a window later, while the request, perhaps still on its way, reached the
    server inside that window. Cancelled, a request has not ended: its slot comes back after
    its hold, as a vanished holder's."""
    from instantly_oauth_async import RateLimit  # noqa: PLC0415

    clock = FakeClock()
    one = RateLimit(1, per=1)
    async with OAuthManager("key", base_url="http://127.0.0.1:9", store=MemoryStore(clock),
                            standard_limit=one, status_limit=one) as manager:
        limiter = manager.budget._limiter
        with anyio.CancelScope() as scope:
            async with manager.budget.slot(hold=10):
                scope.cancel()  # the request inside is on its way as the block is cancelled
                await anyio.lowlevel.checkpoint()
        clock.advance(2)  # twice the window: a slot released at the cancel would be back
        grant, _, _ = await limiter.take_now(hold=10)
        assert grant is None  # still held
        clock.advance(10 + 1.005 - 2 + 0.01)  # its hold, then a window
        grant, _, _ = await limiter.take_now(hold=10)
        assert grant is not None
        await limiter.release(grant)


class _EmptiedWhileRenewing:
    """A registry whose store goes away as an outcome is written and comes back empty under a
    renew already on its way (a Redis restarted without persistence): the renew, held until
    the write has failed, finds every entry gone."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryRegistry(clock)
        self._clock = clock
        self.write_failed = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def decide(self, *args: Any, **kwargs: Any) -> Any:
        if not self.write_failed.is_set():
            self.write_failed.set()
            raise RegistryUnavailableError("the store went away")
        return await self.inner.decide(*args, **kwargs)

    async def renew(self, ns: str, owner: str, fences: dict[str, int], *, lease: float
                    ) -> list[str]:
        await self.write_failed.wait()
        self.inner = MemoryRegistry(self._clock)  # back, empty
        lost: list[str] = await self.inner.renew(ns, owner, fences, lease=lease)
        return lost


async def test_an_outcome_whose_write_failed_under_a_renew_that_found_the_store_empty_is_kept(
) -> None:
    """Seed 2 (redis, fresh-clone CI run of stop 32): an owner's verdict ("lost", past the
    deadline) could not be written (Redis restarting); the heartbeat's renew, on its way
    meanwhile, found the registry empty and registered the session again as undecided, held by
    the owner, whose poller was done with it: the outcome was dropped, and the session left to
    whoever adopted it once the owner paused past its lease. The renew now stores the outcome
    anew with the session."""
    from instantly_oauth_async._manager.entries import decode_outcome  # noqa: PLC0415
    from instantly_oauth_async._manager.fleet import Fleet  # noqa: PLC0415

    clock = FakeClock()
    registry = _EmptiedWhileRenewing(clock)
    fleet = Fleet(registry, "ws", "owner", lease=3.0, retention=60.0,  # type: ignore[arg-type]
                  read_margin=1.0, clock=clock)
    session = OAuthSession("s1", "https://accounts.example/consent",
                           datetime.now(timezone.utc) + timedelta(minutes=10), Provider.GOOGLE)
    await fleet.register(session, "ann@acme.io")
    assert "s1" in fleet.fences
    verdict = OutcomeLostError("s1", "no status read could be made")
    async with anyio.create_task_group() as group:
        group.start_soon(fleet.renew)  # on its way...
        await anyio.wait_all_tasks_blocked()
        assert await fleet.write("s1", None, verdict) == (None, verdict)  # ...as this fails
    entry = await registry.get("ws", "s1")
    assert entry is not None and entry.outcome is not None  # stored, with the session
    stored = decode_outcome(entry.outcome, "s1")
    assert isinstance(stored, OutcomeLostError) and "no status read" in str(stored)
    assert "s1" not in fleet.fences and "s1" not in fleet._unwritten  # nothing held on it
    assert await registry.orphans("ws") == []  # nothing for another manager to adopt


class _SlowToRegisterAgain:
    """A registry that comes back empty under a live owner (:meth:`wipe`: a Redis restarted
    without persistence), where registrations from then on wait at ``gate`` once they have
    ``entered``."""

    def __init__(self, clock: FakeClock) -> None:
        self.inner = MemoryRegistry(clock)
        self._clock = clock
        self.entered, self.gate = anyio.Event(), anyio.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def wipe(self) -> None:
        self.inner = MemoryRegistry(self._clock)
        self.gate = anyio.Event()

    async def register(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.register(*args, **kwargs)


async def test_an_outcome_written_as_a_renew_registers_the_wiped_session_again_is_stored(
) -> None:
    """Seed 2 (redis, fresh-clone CI run of stop 36): the registry came back empty; the
    owner's renew finds its session gone and registers it again, and as that registration is
    on its way the session's outcome is written: the write waits for it and stores the outcome
    on the lease it gives. Before, the write found nothing and let the outcome stand alone,
    and the registration then left an undecided entry nobody read on, which another manager
    adopted once it lapsed and read again after the one-time answer (a 404)."""
    from instantly_oauth_async._manager.fleet import Fleet  # noqa: PLC0415

    clock = FakeClock()
    registry = _SlowToRegisterAgain(clock)
    fleet = Fleet(registry, "ws", "owner", lease=3.0, retention=60.0,
                  read_margin=1.0, clock=clock)
    session = session_named("s1")
    await fleet.register(session, None)
    registry.wipe()
    answer = ConnectResult(session, SessionStatus.SUCCESS, "ann@acme.io")
    written: list[object] = []

    async def write() -> None:
        written.append(await fleet.write("s1", answer, None))

    async with anyio.create_task_group() as group:
        group.start_soon(fleet.renew)
        with anyio.fail_after(5):
            await registry.entered.wait()  # the renew registers it again, on its way
            group.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            registry.gate.set()
    entry = await registry.get("ws", "s1")
    assert entry is not None and entry.outcome is not None and written == [(answer, None)]


class _Stopped:
    """Stands in for a process stopped (SIGSTOP, a frozen VM) after the lease check that allowed
    a status read and before the read left: once armed, that read waits for ``go``, and so do
    the heartbeat's renews and adoption passes from then on (the rest of the process only
    waits on those and on the read)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, manager: OAuthManager) -> None:
        fleet = manager._fleet
        assert fleet is not None
        self._send, self._renew, self._adopt, self._write = (
            manager.client.get_oauth_status, fleet.renew, fleet.adopt, fleet.write)
        self.armed = False
        self.waiting, self.go = anyio.Event(), anyio.Event()
        self.write_at = anyio.Event()  #: its outcome is written once this is set
        self.write_at.set()
        monkeypatch.setattr(manager.client, "get_oauth_status", self._read)
        monkeypatch.setattr(fleet, "renew", self._renewing)
        monkeypatch.setattr(fleet, "adopt", self._adopting)
        monkeypatch.setattr(fleet, "write", self._writing)

    async def _read(self, session_id: str, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            self.waiting.set()
            await self.go.wait()
        return await self._send(session_id, **kwargs)

    async def _renewing(self) -> list[str]:
        if self.waiting.is_set():
            await self.go.wait()
        return await self._renew()

    async def _adopting(self, *args: Any, **kwargs: Any) -> Any:
        if self.waiting.is_set():
            await self.go.wait()
        return await self._adopt(*args, **kwargs)

    async def _writing(self, *args: Any) -> Any:
        await self.write_at.wait()
        return await self._write(*args)


@pytest.mark.parametrize("first", ["woken owner", "woken owner, writing late", "adopter"])
async def test_a_read_sent_after_a_pause_past_the_lease_costs_one_404_never_the_answer(
    first: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chaos seed 50 (SQLite) and seed 3 in stop 32's CI; docs/FLEET.md's row on a request the
    server acts on long after its lease check. The owner was stopped between the lease check
    that allowed a read and the read's sending, past its lease; another manager adopted the
    session. On waking the owner's read went out, and took the one-time answer or found it
    taken by the adopter's read. Whichever read first, every awaiter gets the person's answer,
    and at most one read (a 404) follows the answer: an adopter that reads after the woken
    owner stored the answer finds it stored and reads no more; one that reads before (the
    owner's write late: SQLite under load, in seed 3) reads 404 once and reconciles."""
    clock = FakeClock()
    store = MemoryStore(clock)
    async with Simulator(limits=SimulatorLimits().compressed(20), clock=clock) as sim:
        key = sim.add_workspace().api_key
        opts = options(sim, clock=clock, poll_interval=0.5, session_lease=3.0)
        async with OAuthManager(key, store=store, **opts) as owner, \
                OAuthManager(key, store=store, **opts) as adopter:
            held = _Stopped(monkeypatch, owner)
            pending = await owner.start("google", expected_email="ann@acme.io")
            sid = pending.session.session_id
            attached = await adopter.attach(sid)
            held.armed = True
            with anyio.fail_after(10):  # its lease check passed; the read waits to be sent
                while not held.waiting.is_set():  # bounded by fail_after
                    await clock.run_for(0.1)
            clock.advance(4.0)  # stopped past its 3 s lease
            assert adopter._fleet is not None
            with anyio.fail_after(10):
                while sid not in adopter._fleet.fences:  # adopted (bounded by fail_after)
                    await clock.run_for(0.1)
            sim.complete(sid, "ann@acme.io")
            reads_before = len(status_reads(sim, sid))
            if first == "adopter":
                with anyio.fail_after(10):
                    while not attached.done():  # the adopter read the answer
                        await clock.run_for(0.1)
            if first == "woken owner, writing late":
                held.write_at = anyio.Event()
            held.go.set()  # the owner wakes and its read goes out
            if first == "woken owner, writing late":
                with anyio.fail_after(10):  # the adopter reads before the owner has written
                    while 404 not in [r.status for r in status_reads(sim, sid)]:
                        await clock.run_for(0.1)  # (bounded by fail_after)
                held.write_at.set()
            with anyio.fail_after(10):
                while not (pending.done() and attached.done()):  # bounded by fail_after
                    await clock.run_for(0.1)
            mine, theirs = await pending, await attached
        after = [r.status for r in status_reads(sim, sid)][reads_before:]
        assert after == {"woken owner": [200], "woken owner, writing late": [200, 404],
                         "adopter": [200, 404]}[first]
        for result in (mine, theirs):
            assert result.status is SessionStatus.SUCCESS and result.email == "ann@acme.io"
