"""The manager on the session registry (issue 14, in process; the multi-process tests come with
the Redis registry): attach() from another manager, outcomes written ahead, leases released on
close and adopted, unknown ids typed."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from instantly_oauth_async import (
    ConfigurationError,
    ConnectResult,
    MemoryStore,
    OAuthManager,
    OAuthSession,
    OutcomeLostError,
    SessionStatus,
    Store,
)
from instantly_oauth_async._limits.clock import SystemClock
from instantly_oauth_async._manager.deadlines import Deadlines
from instantly_oauth_async._manager.fleet import Fleet, UnknownSessionError
from instantly_oauth_async._manager.fleetside import FleetSide
from instantly_oauth_async._manager.pending import PendingConnection
from instantly_oauth_async._manager.writeahead import HOLDERS_OUTCOME
from instantly_oauth_async._stores.registry import MemoryRegistry, Registry
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.testing import Network, Simulator, SimulatorLimits
from tests._reads import overlapping_reads
from tests._sessions import session_named

pytestmark = pytest.mark.anyio

MakeManager = Callable[..., OAuthManager]


@pytest.fixture
async def csim() -> AsyncIterator[Simulator]:
    async with Simulator(limits=SimulatorLimits().compressed(20)) as simulator:
        yield simulator


@pytest.fixture
def make(csim: Simulator) -> MakeManager:
    store = MemoryStore()
    key = csim.add_workspace().api_key

    def factory(**kwargs: Any) -> OAuthManager:
        options: dict[str, Any] = {
            "base_url": csim.url, **csim.limits.manager_limits(), "poll_interval": 0.05,
            "expiry_grace": 1.0, "store": store, "session_lease": 1.5, "status_timeout": 0.5}
        options.update(kwargs)
        return OAuthManager(key, **options)

    return factory


def _reads(sim: Simulator, session_id: str) -> int:
    return sum(1 for r in sim.requests if r.kind == "status" and r.path.endswith(session_id))


async def test_attach_from_another_manager_gets_the_same_result_and_spends_nothing(
    csim: Simulator, make: MakeManager
) -> None:
    async with make() as owner, make() as other:
        pending = await owner.start("google", expected_email="ann@acme.io")
        sid = pending.session.session_id
        attached = await other.attach(sid)
        assert attached.session == pending.session and attached.expected_email == "ann@acme.io"
        csim.complete(sid, "ann@acme.io")
        with anyio.fail_after(10):
            mine, theirs = await pending, await attached
        assert mine == theirs and mine.status is SessionStatus.SUCCESS
        assert other.stats().requests == {}  # the watcher sent nothing
        again = await other.attach(sid)  # decided: straight from the registry
        with anyio.fail_after(5):
            assert await again == mine


async def test_unknown_ids_are_a_typed_error(make: MakeManager) -> None:
    async with make() as manager:
        with pytest.raises(UnknownSessionError, match="nope"):
            await manager.attach("nope")


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_closing_owner_hands_over_at_once_after_its_read_in_flight(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """The owner closes while a status read is on the wire (each way takes 0.6 s). Its lease is
    kept until that read is back, then let go; the other manager adopts at once: within 5 s,
    where its periodic pass (2/3 of a 30 s lease) would take 20 s; and the simulator never saw
    two reads of the session at the same time. (With 0.2 s each way, a machine at load 8 once
    ran the test's next line after the answer was back: the read was no longer in flight.)"""
    network = Network(latency=0.6, kinds=frozenset({"status"}))
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(
            Simulator(limits=SimulatorLimits().compressed(20), network=network))
        if kind == "memory":
            shared = MemoryStore()
            stores: list[Store] = [shared, shared]
        else:
            url = request.getfixturevalue("redis_server").url
            stores = [await stack.enter_async_context(RedisStore.from_url(url))
                      for _ in range(2)]
        key = sim.add_workspace().api_key
        options: dict[str, Any] = {
            "base_url": sim.url, **sim.limits.manager_limits(), "poll_interval": 0.05,
            "expiry_grace": 1.0, "session_lease": 30.0, "status_timeout": 2.0}
        survivor = await stack.enter_async_context(
            OAuthManager(key, store=stores[0], **options))
        async with OAuthManager(key, store=stores[1], **options) as owner:
            pending = await owner.start("google")
            sid = pending.session.session_id
            attached = await survivor.attach(sid)
            with anyio.fail_after(10):  # the server has it: its answer is 0.6 s away
                await sim.wait_for(lambda: _reads(sim, sid) >= 1)
            assert owner._poller.busy() == {sid}
        read_by_owner = _reads(sim, sid)
        with anyio.fail_after(5):  # the survivor adopts it and polls it
            await sim.wait_for(lambda: _reads(sim, sid) > read_by_owner)
        assert sid in survivor._poller.pending
        sim.deny(sid)
        with anyio.fail_after(10):
            result = await attached
        assert result.status is SessionStatus.ERROR
        assert overlapping_reads(sim, sid) == []


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_one_adoption_takes_every_orphan_and_a_closing_fleet_takes_none(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """150 sessions let go at once: one adoption takes them all (a look sees 100; it looks
    again while it finds that many). A fleet that has begun to close adopts nothing."""
    async with contextlib.AsyncExitStack() as stack:
        registry: Registry
        if kind == "memory":
            registry = MemoryRegistry(SystemClock())
        else:
            url = request.getfixturevalue("redis_server").url
            registry = (await stack.enter_async_context(RedisStore.from_url(url))).registry
        ns = f"test-{uuid.uuid4().hex}"

        def fleet(owner: str) -> Fleet:
            return Fleet(registry, ns, owner, lease=30, retention=600, read_margin=1)

        fences = {}
        for i in range(150):
            entry = await registry.register(ns, f"s{i}", "{}", owner="gone", lease=30,
                                            retention=600)
            fences[entry.session_id] = entry.fence
        await registry.release(ns, "gone", fences)
        closing = fleet("closing")
        await closing.release_all()
        assert await closing.adopt() == []
        adopter = fleet("adopter")
        won = await adopter.adopt()
        assert sorted(e.session_id for e in won) == sorted(fences)
        assert all(e.owner == "adopter" and e.fence == 2 for e in won)
        assert await registry.orphans(ns) == []


async def test_only_one_manager_polls_a_session(csim: Simulator, make: MakeManager) -> None:
    async with make() as a, make() as b:
        pending = await a.start("google")
        sid = pending.session.session_id
        with anyio.fail_after(10):
            await csim.wait_for(lambda: _reads(csim, sid) >= 10)
        assert sid not in b._poller.pending
        assert b.stats().requests.get("status", {}) == {}


def test_status_timeout_must_fit_in_the_lease() -> None:
    with pytest.raises(ConfigurationError, match="half of session_lease"):
        OAuthManager("key", session_lease=10, status_timeout=5)


async def _fenced_out() -> tuple[MemoryRegistry, str, Fleet, Fleet, OAuthSession, int]:
    """Session "s", registered by the manager "was", which let it go and has not learnt it
    (it still counts its fence), and adopted since by "holder"."""
    registry = MemoryRegistry(SystemClock())
    ns = f"test-{uuid.uuid4().hex}"
    was = Fleet(registry, ns, "was", lease=30, retention=600, read_margin=1)
    holder = Fleet(registry, ns, "holder", lease=30, retention=600, read_margin=1)
    session = session_named("s")
    await was.register(session, None)
    fence = was.fences["s"]
    await registry.release(ns, "was", {"s": fence})
    was.fences["s"] = fence  # (it has not learnt that it let go)
    assert [e.session_id for e in await holder.adopt()] == ["s"]
    return registry, ns, was, holder, session, fence


async def test_a_lost_verdict_of_a_session_another_manager_holds_is_not_stored_nor_given() -> None:
    """A manager still counting a fence of a session another manager has since adopted finds
    no read possible and calls it lost: its write is fenced out, and "no answer could be had"
    is not its to give (the holder is reading it and stores the real outcome; the chaos soak
    saw the two differ): ``write`` says so (``HOLDERS_OUTCOME``: wait for the holder's outcome
    on the registry). An answer it read itself still stands alone (it may be the one-time one)."""
    registry, ns, was, _, session, fence = await _fenced_out()
    lost = OutcomeLostError("s", "no status read could be made")
    assert await was.write("s", None, lost) is HOLDERS_OUTCOME
    entry = await registry.get(ns, "s")
    assert entry is not None and entry.outcome is None and entry.owner == "holder"
    was.fences["s"] = fence
    answer = ConnectResult(session, SessionStatus.SUCCESS, "ann@acme.io")
    assert await was.write("s", answer, None) == (answer, None)


async def test_a_handle_whose_lost_verdict_is_fenced_out_gets_the_holders_outcome() -> None:
    """The same fenced-out manager concludes its handle lost: the handle does not end then
    (nothing is given that the holder may contradict), and it ends with what the holder
    stores, from the registry (the hand-off in ``FleetSide.conclude``)."""
    _, _, was, holder, session, _ = await _fenced_out()
    pending = PendingConnection(session, None)
    deadlines = Deadlines(SystemClock(), was, poll_interval=0.05, expiry_grace=1.0)
    side = FleetSide(was, SystemClock(), None, deadlines,  # type: ignore[arg-type]
                     {"s": pending}, poll_interval=0.05, adopted=lambda entry: None)
    answer = ConnectResult(session, SessionStatus.SUCCESS, "ann@acme.io")
    async with anyio.create_task_group() as group:
        side._group = group  # (its heartbeat and adoption are not this test's; no scheduler)
        await side.conclude(pending, None, OutcomeLostError("s", "no status read was made"))
        await anyio.lowlevel.checkpoint()
        assert not pending.done()
        await holder.write("s", answer, None)
        with anyio.fail_after(5):
            assert await pending == answer
