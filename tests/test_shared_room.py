"""Managers sharing one ``aiohttp.ClientSession`` share its cap on status reads under way
(issue 26): the server never sees more than 100 of all of theirs at a time, and a manager
that closes with reads under way gives their room back to the others."""

from __future__ import annotations

import asyncio
import functools

import aiohttp
import anyio
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


async def test_managers_on_one_session_have_at_most_100_reads_in_flight_together(
    slow_sim: Simulator,
) -> None:
    """Three workspaces, 60 sessions each due at once, on one session whose pool holds 100
    connections: the server never sees more than 100 of their reads at a time."""
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
            assert room.cap == _MAX_STEPS == 100
            assert 50 < most <= 100
        assert room.steps == 0 and not room.waiting  # all closed: nothing left counted


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
                    while room.steps < 100:  # noqa: ASYNC110 - no event to await
                        await anyio.sleep(0.01)
            # Closed with its reads at the cap: the other manager reads at once.
            assert room.steps < 100
            pending = await stays.start("google")
            slow_sim.complete(pending.session.session_id, "ann@acme.io")
            with anyio.fail_after(10):
                result = await pending
            assert result.email == "ann@acme.io"
        assert room.steps == 0


async def test_schedulers_at_the_cap_are_woken_one_at_a_time_once_a_quarter_is_free() -> None:
    room = _Room(8)
    loop = asyncio.get_running_loop()
    room.steps = 8
    waiters = [loop.create_future() for _ in range(4)]
    room.waiting.extend(waiters)
    waiters[0].cancel()  # a scheduler cancelled as its manager closed: skipped
    room.ended()
    assert not any(w.done() for w in waiters[1:])  # 7 under way: no batch yet
    room.ended()
    assert [w.done() for w in waiters[1:]] == [True, False, False]  # 6: the first waiting
    room.wake_one()
    assert [w.done() for w in waiters[1:]] == [True, True, False]  # passed on, room unused
    room.steps = 8
    room.wake_one()
    assert not waiters[3].done()
    room.ended(8)
    assert waiters[3].done() and not room.waiting
