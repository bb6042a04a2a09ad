"""What issue 26's cuts keep: a bounded number of reads in flight, and an in-process registry
that holds no serialized copy of a pending session yet hands out the same text as before."""

from __future__ import annotations

import functools
import json
from typing import cast

import aiohttp
import anyio
import pytest

from instantly_oauth_async import OAuthManager, RateLimit
from instantly_oauth_async._manager.fleet import decode_session, encode_session
from instantly_oauth_async._manager.scheduler import _MAX_STEPS
from instantly_oauth_async._stores.registry import Entry, MemoryRegistry
from instantly_oauth_async._stores.store import MemoryStore
from instantly_oauth_async.testing import FakeClock, Simulator, SimulatorLimits

pytestmark = pytest.mark.anyio
BIG = 10**6
OPEN = RateLimit(BIG, per=1)


def _more(sim: Simulator, seen: int) -> bool:
    return len(sim.requests) > seen


async def test_a_manager_has_at_most_100_status_reads_in_flight(slow_sim: Simulator) -> None:
    """150 sessions due at once, a connection pool without a limit: the server never sees more
    than 100 of the manager's reads at a time (and does see them pile up towards that)."""
    workspace = slow_sim.add_workspace("acme")
    most = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, \
            OAuthManager(workspace.api_key, base_url=slow_sim.url, session=http,
                         init_limit=OPEN, ip_init_limit=OPEN, standard_limit=OPEN,
                         status_limit=OPEN, poll_interval=0.05, fetch_account=False,
                         store=MemoryStore()) as manager:
        # At once: one after another, each start would wait behind the reads of the sessions
        # started before it, and on a busy machine all 450 reads could be done before the last
        # start (the loop below would then see none in flight).
        async with anyio.create_task_group() as group:
            for _ in range(150):
                group.start_soon(manager.start, "google")
        with anyio.fail_after(20):
            while sum(manager.stats().requests.get("status", {}).values()) < 450:
                most = max(most, len(slow_sim.in_flight("status")))
                await slow_sim.wait_for(functools.partial(_more, slow_sim,
                                                          len(slow_sim.requests)))
    assert _MAX_STEPS == 100
    assert 50 < most <= 100


class _Records:
    def __init__(self) -> None:
        self.made = 0

    def _as_registered(self) -> str:
        self.made += 1
        return '{"a":1}'


async def test_the_memory_registry_keeps_records_and_hands_out_their_text() -> None:
    reg = MemoryRegistry(FakeClock(100.0))
    data = _Records()
    entry = await reg.register("ns", "s1", data, owner="a", lease=15, retention=60)
    assert entry == Entry("s1", '{"a":1}', 100.0, "a", 1, 115.0, None, 0)
    kept: object = reg._entries["ns"]["s1"].data
    assert kept is data  # kept as given, not as text
    assert await reg.get("ns", "s1") == entry
    await reg.renew("ns", "a", {"s1": 1}, lease=15)
    kept = cast("object", reg._entries["ns"]["s1"].data)
    assert kept is data
    claimed = await reg.claim("ns", "s1", "a", lease=15)
    assert claimed is not None and claimed.data == '{"a":1}' and claimed.fence == 2
    decided = await reg.decide("ns", "s1", "{}", 3, fence=2, retention=60)
    assert decided is not None and decided.data == '{"a":1}' and decided.outcome == "{}"
    assert await reg.decide("ns", "s1", "{}", 1, fence=None, retention=60) == decided
    assert await reg.decide("ns", "s1", "{}", 3, fence=1, retention=60) == decided
    again = await reg.register("ns", "s1", "other", owner="b", lease=15, retention=60)
    assert again == decided
    assert data.made == 7  # made each time an entry left (7 steps), never kept


async def test_a_manager_on_the_memory_store_holds_no_json_copy_of_its_sessions() -> None:
    """The registry entry and the fleet's record of a pending session hold the manager's own
    records; attach() and the registry's readers get the same JSON as before."""
    limits = SimulatorLimits(init_per_workspace=BIG, init_per_ip=BIG)
    async with Simulator(limits=limits) as sim:
        workspace = sim.add_workspace("acme")
        store = MemoryStore()
        async with OAuthManager(workspace.api_key, base_url=sim.url, store=store,
                                fetch_account=False, poll_interval=0.05) as manager, \
                OAuthManager(workspace.api_key, base_url=sim.url, store=store,
                             fetch_account=False) as other:
            pending = await manager.start("google", expected_email="ann@acme.io")
            sid = pending.session.session_id
            fleet = manager._fleet
            assert fleet is not None
            kept: object = store.registry._entries[fleet.ns][sid].data
            assert kept is pending  # the handle itself: no copy of its records, no wrapper
            assert fleet.data_of(sid) is kept and sid not in fleet._data  # no entry of its own
            entry = await store.registry.get(fleet.ns, sid)
            assert entry is not None
            assert json.loads(entry.data) == json.loads(
                encode_session(pending.session, "ann@acme.io"))
            assert decode_session(entry.data) == (pending.session, "ann@acme.io")
            handle = await other.attach(sid)
            sim.complete(sid, "ann@acme.io")
            with anyio.fail_after(20):
                result = await handle
            assert result.ok and result.session == pending.session


async def test_a_session_polled_all_its_life_keeps_one_deadline_entry() -> None:
    """Each answer's ``Date`` (whole seconds) sets the deadline again: reckoned at a read made
    just after the server's second turned, it comes out up to a second earlier than at one made
    just before. Such a move is no news (the deadline is known to a second): it adds no entry to
    the reaper's heap. (Each one did, left there until its own time, about ten minutes on: a
    session polled every 5 s had dozens, 64 B each, and the heap grew as it was polled.)"""
    clock = FakeClock()
    async with Simulator(clock=clock) as sim:
        key = sim.add_workspace().api_key
        async with OAuthManager(key, base_url=sim.url, store=MemoryStore(clock), clock=clock,
                                **{**sim.limits.manager_limits(), "poll_interval": 0.7},
                                fetch_account=False) as manager:
            started = [await manager.start("google") for _ in range(5)]
            with anyio.fail_after(20):
                while sum(p._polls for p in started) < 5 * 40:  # bounded by fail_after
                    await clock.run_for(0.7)
            watched = manager._poller._deadlines.watched()
            assert not any(p.done() for p in started)
            assert watched <= 2 * len(started), watched
