"""Managers sharing one ``aiohttp.ClientSession`` share its cap on status reads under way
(issue 26): the server never sees more than 90 of all of theirs at a time (nine tenths of its
pool, the rest left for other requests), and a manager that closes with reads under way gives
their room back to the others."""

from __future__ import annotations

import asyncio
import functools

import aiohttp
import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from instantly_oauth_async import OAuthManager, RateLimit
from instantly_oauth_async._manager.scheduler import _MAX_STEPS, _ROOMS, _Room
from instantly_oauth_async._stores.store import MemoryStore
from instantly_oauth_async.testing import Simulator

pytestmark = pytest.mark.anyio
BIG = 10**6
OPEN = RateLimit(BIG, per=1)


def _more(sim: Simulator, seen: int) -> bool:
    return len(sim.requests) > seen


def _manager(sim: Simulator, key: str, http: aiohttp.ClientSession) -> OAuthManager:
    return OAuthManager(key, base_url=sim.url, session=http, init_limit=OPEN,
                        ip_init_limit=OPEN, standard_limit=OPEN, status_limit=OPEN,
                        poll_interval=0.05, fetch_account=False, store=MemoryStore())


async def test_managers_on_one_session_have_at_most_90_reads_in_flight_together(
    slow_sim: Simulator,
) -> None:
    """Three workspaces, 60 sessions each due at once, on one session whose pool holds 100
    connections: the server never sees more than 90 of their reads at a time (nine tenths of
    the pool: the rest is for the session's other requests)."""
    keys = [slow_sim.add_workspace(f"ws{i}").api_key for i in range(3)]
    most = 0
    async with aiohttp.ClientSession() as http:
        async with _manager(slow_sim, keys[0], http) as one, \
                _manager(slow_sim, keys[1], http) as two, \
                _manager(slow_sim, keys[2], http) as three:
            managers = (one, two, three)
            async with anyio.create_task_group() as group:
                for manager in managers:
                    for _ in range(60):
                        group.start_soon(manager.start, "google")
            with anyio.fail_after(30):
                while sum(sum(m.stats().requests.get("status", {}).values())
                          for m in managers) < 400:
                    most = max(most, len(slow_sim.in_flight("status")))
                    await slow_sim.wait_for(functools.partial(_more, slow_sim,
                                                              len(slow_sim.requests)))
            room = _ROOMS[http]
            assert room.cap == 90 and _MAX_STEPS == 100
            assert 50 < most <= 90
        assert room.steps == 0 and not room.waiting  # all closed: nothing left counted


@pytest.mark.parametrize(("pool", "cap"), [(20, 18), (1, 1)])
async def test_the_callers_own_requests_on_a_shared_session_are_answered_while_it_polls(
    slow_sim: Simulator, pool: int, cap: int,
) -> None:
    """A session whose pool holds 20 connections (or one), a manager polling 60 sessions on it
    (each read 0.4 s, always one due): its reads take at most 18 connections (the one), and
    the caller's own requests on the session are answered meanwhile, not kept waiting for a
    connection by workers going on with their next read (on a pool of one, none does)."""
    key = slow_sim.add_workspace("ws").api_key
    most = 0
    connector = aiohttp.TCPConnector(limit=pool)
    async with aiohttp.ClientSession(connector=connector) as http, \
            _manager(slow_sim, key, http) as manager:
        async with anyio.create_task_group() as group:
            for _ in range(60):
                group.start_soon(manager.start, "google")
        with anyio.fail_after(30):
            while manager.stats().requests.get("status", {}).get(200, 0) < 5 * cap:
                most = max(most, len(slow_sim.in_flight("status")))
                await slow_sim.wait_for(functools.partial(_more, slow_sim,
                                                          len(slow_sim.requests)))
        for _ in range(10):  # reads go on meanwhile: all 60 sessions are due
            with anyio.fail_after(2):
                async with http.get(f"{slow_sim.url}/api/v2/accounts/ann@acme.io",
                                    headers={"Authorization": f"Bearer {key}"}) as response:
                    assert response.status == 404
            most = max(most, len(slow_sim.in_flight("status")))
        assert _ROOMS[http].cap == cap
        assert cap / 2 < most <= cap


async def test_a_manager_closing_with_reads_under_way_gives_their_room_back(
    slow_sim: Simulator,
) -> None:
    keys = [slow_sim.add_workspace(f"ws{i}").api_key for i in range(2)]
    async with aiohttp.ClientSession() as http:
        async with _manager(slow_sim, keys[0], http) as stays:
            async with _manager(slow_sim, keys[1], http) as leaves:
                async with anyio.create_task_group() as group:
                    for _ in range(150):
                        group.start_soon(leaves.start, "google")
                room = _ROOMS[http]
                with anyio.fail_after(10):
                    while room.steps < room.cap:  # noqa: ASYNC110 - no event to await
                        await anyio.sleep(0.01)
            # Closed with its reads at the cap: the other manager reads at once.
            assert room.steps < room.cap
            pending = await stays.start("google")
            slow_sim.complete(pending.session.session_id, "ann@acme.io")
            with anyio.fail_after(10):
                result = await pending
            assert result.email == "ann@acme.io"
        assert room.steps == 0


async def test_schedulers_at_the_cap_are_woken_one_at_a_time_as_places_come_free() -> None:
    room = _Room(8)
    loop = asyncio.get_running_loop()
    room.steps = 8
    waiters = [loop.create_future() for _ in range(5)]
    room.waiting.extend(waiters)
    waiters[0].cancel()  # a scheduler cancelled as its manager closed: skipped
    room.wake_one()
    assert not any(w.done() for w in waiters[1:])  # 8 under way: no place
    room.ended()
    assert [w.done() for w in waiters[1:]] == [True, False, False, False]  # 7: the first
    room.ended()
    assert [w.done() for w in waiters[1:]] == [True, False, False, False]  # it has yet to run
    room.resumed(waiters[1])  # it runs: takes what it has due, then leaves room unused
    room.wake_one()
    assert [w.done() for w in waiters[1:]] == [True, True, False, False]  # passed on
    room.resumed(waiters[2])
    room.steps = 8
    room.wake_one()
    assert not waiters[3].done()
    room.ended(8)
    assert waiters[3].done() and room.woken is waiters[3]
    room.ended(0)  # no room for the next while the one woken has yet to run
    assert not waiters[4].done()
    room.resumed(waiters[3])  # cancelled as its manager closes: Scheduler.run gives its
    room.ended(0)  # steps not begun back, waking the next in its place
    assert waiters[4].done() and not room.waiting


async def test_a_scheduler_woken_by_the_room_takes_what_it_has_due_in_one_go(
    slow_sim: Simulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workspaces on one session, 150 sessions each, reads slow: the schedulers are woken
    for room at most once per 8 reads (their workers go on with their reads, and one woken
    takes what it has due in one go), not about every other read, as 100 managers were."""
    keys = [slow_sim.add_workspace(f"ws{i}").api_key for i in range(2)]
    wakes = 0
    real = _Room.resumed

    def counted(room: _Room, wake: asyncio.Future[None]) -> None:
        nonlocal wakes
        wakes += 1
        real(room, wake)

    async with aiohttp.ClientSession() as http, _manager(slow_sim, keys[0], http) as one, \
            _manager(slow_sim, keys[1], http) as two:
        async with anyio.create_task_group() as group:
            for manager in (one, two):
                for _ in range(150):
                    group.start_soon(manager.start, "google")
        monkeypatch.setattr(_Room, "resumed", counted)
        with anyio.fail_after(30):
            while sum(sum(m.stats().requests.get("status", {}).values())
                      for m in (one, two)) < 600:
                await slow_sim.wait_for(functools.partial(_more, slow_sim,
                                                          len(slow_sim.requests)))
        reads = sum(sum(m.stats().requests.get("status", {}).values()) for m in (one, two))
        monkeypatch.undo()
    assert 0 < wakes <= reads // 8  # (8-30 in 600 reads; a wake-up every other read before)
