"""Fleet mode on a real 3-master Redis Cluster on loopback, started by the tests (issue 14).

Every script of the store and the registry touches keys of one hash tag (one slot): the cluster
refuses anything else (``CROSSSLOT``, or redis-py before it), and such a refusal is a
``StoreError`` here, never a quiet fallback. The registry publishes with ``SPUBLISH`` from its
scripts and listens with ``SSUBSCRIBE`` on the master of each namespace's slot.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from instantly_oauth_async import OAuthManager, PendingConnection, Provider, SessionStatus
from instantly_oauth_async._stores.registry import ANSWER
from instantly_oauth_async.redis import RedisRegistry, RedisStore
from instantly_oauth_async.redis import _subscriptions as subscriptions_module
from instantly_oauth_async.testing import Simulator, SimulatorLimits
from tests._redis_cluster import RedisCluster
from tests.test_registry import entries_of_each_kind

pytestmark = pytest.mark.anyio

MakeManager = Callable[..., OAuthManager]


def _running(nodes: RedisCluster) -> Iterator[RedisCluster]:
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """Three cluster-enabled masters on free loopback ports, one cluster per module."""
    yield from _running(RedisCluster(3))


@pytest.fixture
async def admin(cluster: RedisCluster) -> AsyncIterator[aioredis.RedisCluster]:
    client = aioredis.RedisCluster.from_url(cluster.url)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def stores(cluster: RedisCluster) -> AsyncIterator[list[RedisStore]]:
    """Two stores on clients of their own, as two processes of a fleet would have."""
    made = [RedisStore.from_url(cluster.url, cluster=True) for _ in range(2)]
    try:
        yield made
    finally:
        for store in made:
            await store.aclose()


@pytest.fixture
async def csim() -> AsyncIterator[Simulator]:
    async with Simulator(limits=SimulatorLimits().compressed(20)) as simulator:
        yield simulator


def manager_factory(sim: Simulator, api_key: str) -> MakeManager:
    def make(store: RedisStore, **kwargs: Any) -> OAuthManager:
        options: dict[str, Any] = {
            "base_url": sim.url, **sim.limits.manager_limits(), "poll_interval": 0.05,
            "expiry_grace": 1.0, "store": store, "session_lease": 1.5, "status_timeout": 0.5}
        return OAuthManager(api_key, **{**options, **kwargs})
    return make


def _tag(key: str) -> str:
    return key[key.index("{") + 1:key.index("}")]


async def _keys_by_node(admin: aioredis.RedisCluster, match: str) -> dict[str, list[str]]:
    """Each master's keys matching ``match``, read on that master alone."""
    found: dict[str, list[str]] = {}
    for node in admin.get_primaries():
        async with aioredis.Redis(host=node.host, port=int(node.port)) as client:
            keys = sorted([k.decode() async for k in client.scan_iter(match=match, count=1000)])
        if keys:
            found[node.name] = keys
    return found


async def _slots(admin: aioredis.RedisCluster, names: list[str]) -> set[int]:
    return {int(await admin.cluster_keyslot(name)) for name in names}


# -- 1. the fleet scenario: manager, store and registry on the cluster ---------------------------

async def _connect_one_per_provider_and_watch(
    sim: Simulator, owner: OAuthManager, other: OAuthManager, domain: str
) -> list[PendingConnection]:
    """A session of each provider started on ``owner`` and ``attach()``ed on ``other``; both
    see the same successes. Returns the started ones."""
    pendings = [await owner.start(provider) for provider in Provider]
    attached = [await other.attach(p.session.session_id) for p in pendings]
    for number, pending in enumerate(pendings):
        sim.complete(pending.session.session_id, f"user{number}@{domain}")
    with anyio.fail_after(10):
        mine = [await p for p in pendings]
        theirs = [await a for a in attached]
    assert [r.status for r in mine] == [SessionStatus.SUCCESS] * len(Provider)
    assert theirs == mine
    return pendings


async def test_managers_on_the_cluster_connect_attach_and_keep_one_slot_per_server(
    csim: Simulator, stores: list[RedisStore], admin: aioredis.RedisCluster
) -> None:
    """Two managers (each its own store and client) share a workspace on the cluster: sessions
    of both providers started on one resolve there, and the other ``attach()``es them and gets
    the same results through sharded pub/sub, sending nothing. A second API server (another
    simulator) shares the first store: its budget keys carry its own tag, in another slot."""
    workspace = csim.add_workspace("acme")
    make = manager_factory(csim, workspace.api_key)
    owner_store, other_store = stores
    async with make(owner_store) as owner, make(other_store) as other:
        await _connect_one_per_provider_and_watch(csim, owner, other, "acme.io")
        assert other.stats().requests == {}  # the watcher spent no API budget
    async with Simulator(limits=SimulatorLimits().compressed(20)) as second:
        api_key = second.add_workspace("beta").api_key
        async with manager_factory(second, api_key)(owner_store) as manager:
            pending = await manager.start(Provider.MICROSOFT)
            second.complete(pending.session.session_id, "bea@beta.io")
            with anyio.fail_after(10):
                assert (await pending).status is SessionStatus.SUCCESS
    assert not owner_store.degraded and not other_store.degraded  # no script fell back

    servers = [sim.url.removeprefix("http://") for sim in (csim, second)]
    slots = []
    for server in servers:
        by_node = await _keys_by_node(admin, f"iox:{{{server}}}:*")
        keys = [k for ks in by_node.values() for k in ks]
        assert len(by_node) == 1, by_node  # one master holds every budget key of the server
        assert {_tag(k) for k in keys} == {server}
        assert {k.split(":", 3)[3].split(":")[0] for k in keys} >= {"init", "status"}
        [slot] = await _slots(admin, keys)
        slots.append(slot)
    assert slots[0] != slots[1]  # the tag is per API server (odds of a clash: 1 in 16384)


# -- 2. the registry's contract on the cluster -------------------------------------------------

def _ns() -> str:
    return f"iox:test:cluster:{secrets.token_hex(6)}"


async def test_the_registry_contract_holds_on_the_cluster(stores: list[RedisStore]) -> None:
    a, b = (store.registry for store in stores)
    ns = _ns()
    entry = await a.register(ns, "s1", '{"x":1}', owner="a", lease=60, retention=600)
    assert (entry.owner, entry.fence, entry.decided) == ("a", 1, False)
    assert await b.get(ns, "s1") == entry
    assert await b.claim(ns, "s1", "b", lease=60) is None  # a live lease is not claimed
    assert await a.renew(ns, "a", {"s1": 1, "gone": 1}, lease=60) == ["gone"]
    await a.release(ns, "a", {"s1": 1})
    assert await b.orphans(ns) == ["s1"]
    won = await b.claim(ns, "s1", "b", lease=60)
    assert won is not None and (won.owner, won.fence) == ("b", 2)
    assert await a.claim(ns, "s1", "a", lease=60) is None
    assert await a.renew(ns, "a", {"s1": 1}, lease=60) == ["s1"]  # a's fence is stale
    stale = await a.decide(ns, "s1", "error", ANSWER, fence=1, retention=600)
    assert stale is not None and not stale.decided
    decided = await b.decide(ns, "s1", "success", ANSWER, fence=2, retention=600)
    assert decided is not None and decided.outcome == "success"
    assert await a.orphans(ns) == []


async def _learn(registry: RedisRegistry, ns: str, learned: list[float]) -> None:
    """Wait for the decision as watchers do, re-reading after every wake (a wake also comes
    when a subscription is confirmed again); note when it was learned."""
    while (entry := await registry.get(ns, "s1")) is not None and not entry.decided:
        await registry.wait(ns, "s1", within=10)
    learned.append(anyio.current_time())


async def test_a_decision_wakes_waiters_at_once_on_every_master(
    stores: list[RedisStore], admin: aioredis.RedisCluster
) -> None:
    """Waiters of namespaces held by each of the three masters, on one registry (so one
    subscription per master): each decision, made through another client, wakes its waiter
    within a second of being sent (tens of milliseconds, unloaded), where ``within`` (the
    re-read interval) is 10 s."""
    waiting, deciding = (store.registry for store in stores)
    assert isinstance(waiting, RedisRegistry)
    masters = {node.name for node in admin.get_primaries()}
    by_master: dict[str, str] = {}
    while len(by_master) < len(masters):  # bounded: a third of random namespaces fit each
        ns = _ns()
        channel = waiting._ns(ns)[3]
        by_master.setdefault(admin.get_node_from_key(channel).name, ns)  # type: ignore[union-attr]
    spaces = list(by_master.values())
    for ns in spaces:
        await waiting.register(ns, "s1", "{}", owner="a", lease=60, retention=600)
        await deciding.get(ns, "s1")  # the decider's first step (connect, subscribe) done
    assert isinstance(waiting, RedisRegistry)
    assert {name for name, sub in waiting._subscriptions.items() if sub.pubsub} == masters
    took: dict[str, float] = {}
    for ns in spaces:
        learned: list[float] = []
        async with anyio.create_task_group() as group:
            group.start_soon(_learn, waiting, ns, learned)
            await anyio.wait_all_tasks_blocked()
            sent = anyio.current_time()
            await deciding.decide(ns, "s1", "success", ANSWER, fence=1, retention=600)
        took[ns] = learned[0] - sent
    assert set(took) == set(spaces)
    assert max(took.values()) < 1.0, took


# -- 3. adoption across managers ---------------------------------------------------------------

async def test_a_closing_owner_releases_and_the_other_manager_adopts_and_resolves(
    csim: Simulator, stores: list[RedisStore]
) -> None:
    make = manager_factory(csim, csim.add_workspace("gamma").api_key)
    owner_store, survivor_store = stores
    async with make(survivor_store) as survivor:
        async with make(owner_store) as owner:
            pending = await owner.start(Provider.GOOGLE)
            sid = pending.session.session_id
            attached = await survivor.attach(sid)
        # The owner is closed, its lease released: the survivor adopts the session at once.
        with anyio.fail_after(10):
            await csim.wait_for(lambda: sid in survivor._poller.pending)
        csim.complete(sid, "gus@gamma.io")
        with anyio.fail_after(10):
            result = await attached
        assert result.status is SessionStatus.SUCCESS
        assert survivor.stats().requests.get("status")  # the survivor polled it


# -- 4. where the keys live --------------------------------------------------------------------

async def test_every_key_and_the_channel_of_a_namespace_live_in_one_slot_on_one_master(
    stores: list[RedisStore], admin: aioredis.RedisCluster
) -> None:
    ns = _ns()
    registry = stores[0].registry
    tag = await entries_of_each_kind(registry, ns)
    by_node = await _keys_by_node(admin, f"{tag}:*")
    assert len(by_node) == 1, by_node  # on one master
    [keys] = by_node.values()
    assert keys == [f"{tag}:e:s1", f"{tag}:e:s2", f"{tag}:e:s3", f"{tag}:lapse", f"{tag}:meta"]
    channel = registry._ns(ns)[3]
    [slot] = await _slots(admin, [*keys, channel])  # the channel too: SPUBLISH stays in-slot
    holder = admin.get_node_from_key(channel)
    assert holder is not None and [holder.name] == list(by_node)
    count = await admin.execute_command("CLUSTER COUNTKEYSINSLOT", slot, target_nodes=holder)
    assert count == len(keys)  # nothing else of ours in the slot, nothing of it elsewhere


# -- 5. a slot that moves ----------------------------------------------------------------------

async def _move_slot(admin: aioredis.RedisCluster, slot: int, source: Any, target: Any) -> None:
    """Move one slot and its keys from one master to another, as a resharding does."""
    source_id = await admin.execute_command("CLUSTER MYID", target_nodes=source)
    target_id = await admin.execute_command("CLUSTER MYID", target_nodes=target)
    await admin.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id,
                                target_nodes=target)
    await admin.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id,
                                target_nodes=source)
    keys = await admin.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000, target_nodes=source)
    if keys:
        await admin.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS",
                                    *keys, target_nodes=source)
    for node in (target, source, *admin.get_primaries()):  # the owners first, as redis-cli does
        await admin.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id, target_nodes=node)


async def test_a_namespace_whose_slot_moves_is_followed_to_its_new_master(
    stores: list[RedisStore], admin: aioredis.RedisCluster
) -> None:
    """The old master ends the shard subscription (``sunsubscribe``) when its slot moves: the
    registry refreshes its map of the cluster, subscribes on the new master, and decisions wake
    its waiters at once again; the steps follow the slot (redis-py retries them on ``MOVED``)."""
    waiting, deciding = (store.registry for store in stores)
    assert isinstance(waiting, RedisRegistry)
    ns = _ns()
    await waiting.register(ns, "s1", "{}", owner="a", lease=60, retention=600)
    await deciding.get(ns, "s1")
    channel = waiting._ns(ns)[3]
    slot = int(await admin.cluster_keyslot(channel))
    source = admin.get_node_from_key(channel)
    target = next(node for node in admin.get_primaries() if node != source)
    assert source is not None and channel in waiting._subscriptions[source.name].channels
    await _move_slot(admin, slot, source, target)
    with anyio.fail_after(5):  # bounded: the listener hears the sunsubscribe and follows
        while not ((sub := waiting._subscriptions.get(target.name)) is not None  # noqa: ASYNC110
                   and channel in sub.channels and sub.pubsub is not None):
            await anyio.sleep(0.01)  # no event to await
    assert channel not in waiting._subscriptions[source.name].channels
    learned: list[float] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_learn, waiting, ns, learned)
        await anyio.wait_all_tasks_blocked()
        sent = anyio.current_time()
        decided = await deciding.decide(ns, "s1", "success", ANSWER, fence=1, retention=600)
    assert decided is not None and decided.outcome == "success"
    assert learned[0] - sent < 1.0, learned[0] - sent  # within is 10 s
    entry = await waiting.get(ns, "s1")
    assert entry is not None and entry.outcome == "success"


# -- 6. a first wait while the cluster cannot be reached -----------------------------------------

@pytest.fixture(scope="module")
def pausable_cluster() -> Iterator[RedisCluster]:
    """A cluster of its own for the tests that stop its servers (``SIGSTOP``) for a few seconds:
    with a node timeout of 60 s its nodes do not mark each other failed meanwhile, and the
    module's cluster is left alone."""
    yield from _running(RedisCluster(3, node_timeout_ms=60_000))


@pytest.fixture
def paused_cluster(pausable_cluster: RedisCluster) -> Iterator[RedisCluster]:
    """That cluster, answering at the start of each test and resumed after it, whatever the
    test did (each test uses namespaces of its own)."""
    pausable_cluster.resume()
    pausable_cluster.wait_ok()
    try:
        yield pausable_cluster
    finally:
        pausable_cluster.resume()


@contextlib.asynccontextmanager
async def _registries_of_one_session(
    cluster: RedisCluster,
) -> AsyncIterator[tuple[RedisRegistry, RedisRegistry, str, str]]:
    """The registries of two stores on ``cluster``, the first with session ``s1`` registered in
    a fresh namespace, and the namespace's channel; at the end the cluster is resumed and both
    stores closed."""
    deciding = RedisStore.from_url(cluster.url, cluster=True)
    waiting = RedisStore.from_url(cluster.url, cluster=True)
    try:
        decider, registry = deciding.registry, waiting.registry
        ns = _ns()
        await decider.register(ns, "s1", "{}", owner="a", lease=60, retention=600)
        yield decider, registry, ns, registry._ns(ns)[3]
    finally:
        cluster.resume()
        await waiting.aclose()
        await deciding.aclose()


async def test_a_first_wait_while_the_cluster_is_away_is_handed_to_its_master_on_its_return(
    paused_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Every server stopped (``SIGSTOP``, by PID): a registry whose client never mapped the
    cluster makes its first step in a namespace, a ``wait``; mapping the cluster times out, so
    the channel goes to the subscription of channels not routed yet (``""``), whose listener
    cannot connect either. Once the servers resume (``SIGCONT``) that listener maps the cluster,
    hands the channel to its master's subscription and ends; a decision made then through
    another client wakes the waiter through sharded pub/sub within a second (``within`` is
    30 s), and nothing raised or logged a ``StoreError``."""
    caplog.set_level(logging.DEBUG, logger="instantly_oauth_async")
    cluster = paused_cluster
    async with _registries_of_one_session(cluster) as (decider, registry, ns, channel):
        woke: list[float] = []
        learned: list[float] = []

        async def waiter() -> None:
            await registry.wait(ns, "s1", within=30)  # the registry's first step
            woke.append(anyio.current_time())
            await _learn(registry, ns, learned)

        async with anyio.create_task_group() as group:
            cluster.pause()
            try:
                group.start_soon(waiter)
                with anyio.fail_after(10):  # bounded: a map, then a connection, each 0.5 s
                    while not ((away := registry._subscriptions.get("")) is not None  # noqa: ASYNC110
                               and away.failures >= 1):
                        await anyio.sleep(0.01)  # no event to await
                assert list(registry._subscriptions) == [""]  # no master known
                assert away.channels == {channel} and away.pubsub is None
                assert not woke
            finally:
                cluster.resume()
            resumed = anyio.current_time()
            await anyio.to_thread.run_sync(cluster.wait_ok, 10.0)
            admin = aioredis.RedisCluster.from_url(cluster.url)
            try:
                await admin.initialize()
                master = admin.get_node_from_key(channel)
            finally:
                await admin.aclose()
            assert master is not None
            with anyio.fail_after(10):  # bounded: the retry interval (1 s), then a map
                while not ((sub := registry._subscriptions.get(master.name)) is not None  # noqa: ASYNC110
                           and channel in sub.channels and sub.pubsub is not None
                           and woke and registry._waiters.get(ns, {}).get("s1")):
                    await anyio.sleep(0.01)  # no event to await
            # Handed over: the subscription of channels not routed yet holds none, and ended.
            assert not away.channels and away.listener is None and away.pubsub is None
            assert woke[0] - resumed < 10  # woken to re-read when the master confirmed
            sent = anyio.current_time()
            decided = await decider.decide(ns, "s1", "success", ANSWER, fence=1, retention=600)
        assert decided is not None and decided.outcome == "success"
        assert learned[0] - sent < 1.0, learned[0] - sent  # through SSUBSCRIBE, not ``within``
        entry = await registry.get(ns, "s1")
        assert entry is not None and entry.outcome == "success"
        assert registry._refused is None
        ours = [r for r in caplog.records if r.name.startswith("instantly_oauth_async")]
        assert not [r for r in ours if r.levelno >= logging.WARNING], caplog.text
        assert "StoreError" not in caplog.text
        assert "registry subscription lost" in caplog.text  # the outage was met, as an outage


# -- 7. a manager's registry and budgets: one slot, shared trips ---------------------------------

async def test_a_managers_registry_keys_and_budget_keys_share_one_slot_and_one_batch(
    csim: Simulator, stores: list[RedisStore], admin: aioredis.RedisCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The manager's registry namespace names its API server's hash tag (``{host:port}:wsid``):
    its registry keys and channel, and its budget, block and breaker keys, are in ONE slot
    (``CLUSTER KEYSLOT``) on one master; sessions resolve, attached ones too; and a registry step
    and a budget step go in one batch script (``BATCH_SHARDED``), which the cluster runs."""
    caplog.set_level(logging.WARNING, logger="instantly_oauth_async")
    make = manager_factory(csim, csim.add_workspace("delta").api_key)
    store, other_store = stores
    server = csim.url.removeprefix("http://")
    async with make(store) as manager, make(other_store) as other:
        assert manager._fleet is not None
        ns = manager._fleet.ns
        assert ns.startswith(f"{{{server}}}:")
        ws_id = ns.split(":")[-1]
        pendings = await _connect_one_per_provider_and_watch(csim, manager, other, "delta.io")

    # The managers closed (nothing else on the lane): a registry step and budget steps in one
    # trip. The first step takes the lane, the three started with it wait for its reply and
    # then go together, in one EVALSHA of the batch script.
    registry = store.registry
    budget_keys = [f"iox:{{{server}}}:init:{Provider.GOOGLE.value}:ws:{ws_id}",
                   f"iox:{{{server}}}:init:{Provider.GOOGLE.value}:ip"]
    sid = pendings[0].session.session_id
    await anyio.sleep(0.2)  # steps posted by the managers (due within 0.05 s) are gone
    trips, steps = store.round_trips, store.steps.copy()
    got: list[Any] = []

    async def step(call: Callable[[], Any]) -> None:
        got.append(await call())

    async with anyio.create_task_group() as group:
        group.start_soon(step, lambda: registry.get(ns, sid))
        group.start_soon(step, lambda: registry.get(ns, sid))
        group.start_soon(step, lambda: store.blocked_for(budget_keys))
        group.start_soon(step, lambda: registry.orphans(ns))
    assert store.steps - steps == {"REG_GET": 2, "BLOCKED_FOR": 1, "REG_ORPHANS": 1}
    assert store.round_trips - trips == 2, store.steps  # 1 step, then 3 in one batch
    entry = await registry.get(ns, sid)
    assert entry is not None and entry.decided
    assert sorted(map(repr, got)) == sorted(map(repr, [entry, entry, 0.0, []]))

    assert not store.degraded and not other_store.degraded  # no script fell back
    assert not [r for r in caplog.records if r.name.startswith("instantly_oauth_async")]
    registry_keys = [k for ks in (await _keys_by_node(admin, f"iox:reg:{{{server}}}:*")).values()
                     for k in ks]
    budget_by_node = await _keys_by_node(admin, f"iox:{{{server}}}:*")
    budget = [k for ks in budget_by_node.values() for k in ks]
    by_node = await _keys_by_node(admin, f"iox:*{{{server}}}:*")
    assert len(by_node) == 1, by_node  # one master holds them all
    assert sorted(registry_keys + budget) == sorted(k for ks in by_node.values() for k in ks)
    assert {k.removeprefix(f"iox:reg:{{{server}}}:{ws_id}:").split(":")[0]
            for k in registry_keys} >= {"e"}  # the entries (meta and lapse may be gone)
    assert {k.split(":", 3)[3].split(":")[0] for k in budget} >= {"init", "status"}
    channel = store.registry._ns(ns)[3]
    assert channel.startswith(f"iox:reg:{{{server}}}:")
    slots = await _slots(admin, [*registry_keys, *budget, channel])
    assert len(slots) == 1, slots  # ONE slot: registry keys, channel and budget keys


async def test_a_first_wait_whose_within_ends_while_the_cluster_is_mapped_subscribes_later(
    paused_cluster: RedisCluster, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every server stopped: a registry's first step in a namespace, a ``wait`` with a
    ``within`` (0.2 s) shorter than mapping the cluster takes to time out (0.5 s), ends while
    the channel is being routed. Once the servers resume, the next step in the namespace
    subscribes: it does not wait for a confirmation that was never coming (2 s a step; a
    minute here, so that no machine's speed blurs the two), and a
    decision made through another client wakes a waiter within a second (``within`` 30 s)."""
    caplog.set_level(logging.DEBUG, logger="instantly_oauth_async")
    cluster = paused_cluster
    async with _registries_of_one_session(cluster) as (decider, registry, ns, channel):
        cluster.pause()
        try:
            began = anyio.current_time()
            await registry.wait(ns, "s1", within=0.2)  # its first step, cut short while routed
            assert anyio.current_time() - began < 0.45  # before the map's 0.5 s timeout
            assert not any(sub.channels for sub in registry._subscriptions.values())
        finally:
            cluster.resume()
        await anyio.to_thread.run_sync(cluster.wait_ok, 10.0)
        # A wait for the lost confirmation would now take a minute: timed against that, not
        # against 1 s (the step maps the cluster again, redis-py's parse of Redis's COMMAND
        # table among it: 0.2 s of CPU idle, 1.09 s in a run beside three other test workers).
        monkeypatch.setattr(subscriptions_module, "_CONFIRM_WITHIN", 60.0)
        with anyio.fail_after(20):  # no wait for a lost confirmation
            entry = await registry.get(ns, "s1")  # the next step subscribes (and is confirmed)
        assert entry is not None and not entry.decided
        assert any(channel in sub.channels and sub.pubsub is not None
                   for sub in registry._subscriptions.values())
        learned: list[float] = []
        async with anyio.create_task_group() as group:
            group.start_soon(_learn, registry, ns, learned)
            with anyio.fail_after(5):
                while not registry._waiters.get(ns, {}).get("s1"):  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # no event to await
            sent = anyio.current_time()
            await decider.decide(ns, "s1", "success", ANSWER, fence=1, retention=600)
        assert learned[0] - sent < 1.0, learned[0] - sent  # through SSUBSCRIBE, not ``within``
        assert registry._refused is None
        ours = [r for r in caplog.records if r.name.startswith("instantly_oauth_async")]
        assert not [r for r in ours if r.levelno >= logging.WARNING], caplog.text
