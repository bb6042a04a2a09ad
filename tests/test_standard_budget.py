"""One standard budget per workspace that every request spends, held from grant to answer.

The server counts every request of a workspace (inits of both providers, status reads, account
reads, and whatever else the application sends) against one standard limit. These tests hold the
library to it at the edge users live at: the budget configured exactly as the server's window,
init bursts of both providers on top of full polling, a network that delays and reorders, and a
connection pool so small that granted requests queue in it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from instantly_oauth_async import (
    ConfigurationError,
    MemoryStore,
    OAuthManager,
    OAuthSession,
    RateLimit,
    SessionStatus,
    StartTimeoutError,
)
from instantly_oauth_async.testing import FakeClock, Network, Simulator, SimulatorLimits
from tests._windows import max_in_window

pytestmark = pytest.mark.anyio

OPEN = RateLimit(10**6, per=60)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


async def test_inits_status_account_and_caller_requests_spend_one_budget(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    async with OAuthManager(
        workspace.api_key, base_url=sim.url, store=MemoryStore(), poll_interval=0.01,
        init_limit=OPEN, ip_init_limit=OPEN, status_limit=OPEN,
        standard_limit=RateLimit(4, per=60),
    ) as manager:
        pending = await manager.start("google")  # 1: the init
        sim.complete(pending.session.session_id, "ann@acme.io")
        result = await pending  # 2: the status read, 3: the account read
        assert result.ok and result.account is not None
        async with manager.budget.slot():  # 4: the caller's own request
            pass
        with pytest.raises(StartTimeoutError):
            await manager.start("microsoft", timeout=0.3)  # another provider: the same budget
    assert [r.kind for r in sim.requests] == ["init", "status", "account"]


async def test_keys_of_one_named_workspace_share_its_budgets(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    second_key = sim.add_api_key(workspace)
    options: dict[str, Any] = {"base_url": sim.url, "store": MemoryStore(), "workspace": "acme",
               "init_limit": RateLimit(2, per=60)}
    async with OAuthManager(workspace.api_key, **options) as first, \
            OAuthManager(second_key, **options) as second:
        await first.start("google")
        await first.start("google")
        with pytest.raises(StartTimeoutError):
            await second.start("google", timeout=0.3)
    assert sum(r.kind == "init" for r in sim.requests) == 2


@pytest.mark.parametrize("hold", [0, -1.0, float("inf")])
async def test_a_caller_slot_needs_a_finite_positive_hold(sim: Simulator, hold: float) -> None:
    workspace = sim.add_workspace("acme")
    async with OAuthManager(workspace.api_key, base_url=sim.url) as manager:
        with pytest.raises(ConfigurationError):
            async with manager.budget.slot(hold=hold):
                pass


@pytest.mark.parametrize("bad", ["", "  "])
def test_an_empty_workspace_name_is_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        OAuthManager("k", base_url="http://127.0.0.1:1", workspace=bad)


async def test_a_caller_slot_stays_spent_until_its_block_is_left(sim: Simulator) -> None:
    clock = FakeClock()
    limit = RateLimit(1, per=1.0)
    workspace = sim.add_workspace("acme")
    entered, leave, second_in = anyio.Event(), anyio.Event(), anyio.Event()
    async with OAuthManager(workspace.api_key, base_url=sim.url, clock=clock,
                            standard_limit=limit) as manager:
        async def first() -> None:
            async with manager.budget.slot():
                entered.set()
                await leave.wait()

        async def second() -> None:
            async with manager.budget.slot():
                second_in.set()

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            await entered.wait()
            group.start_soon(second)
            await clock.run_for(10 * limit.window)  # ten windows while the first holds it
            assert not second_in.is_set() and manager.budget.waiting == 1
            leave.set()
            await clock.run_for(limit.window - 0.001)  # the slot counts one window from here
            assert not second_in.is_set()
            await clock.run_for(0.002)
            assert second_in.is_set()


# -- at the edge: the whole window, bursts, jitter, a small pool ------------------------------

FACTOR = 10
WINDOW = 60 / FACTOR  # the init window and the standard minute: 6 s
SECOND = 1 / FACTOR  # the standard second: 0.1 s
PER_PROVIDER = 60


@pytest.mark.timing
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("pool", "per_second"),
    [(None, 100), (2, 8)],
    ids=["default-pool", "pool-of-2"],
)
async def test_polling_the_whole_standard_window_with_init_bursts_and_jitter_gets_no_429(
    pool: int | None, per_second: int
) -> None:
    """Status reads may spend the whole standard budget (``status_limit`` equal to it); both
    providers send a burst of inits on top; every request waits 0-20 ms on its way in and again
    on its way out. With a pool of 2 connections, the standard window is set to what the pool
    can carry, so granted requests queue in the pool as well. Every session must end with its
    person's true outcome, and the server must never answer 429."""
    limits = SimulatorLimits(api_per_second=per_second).compressed(FACTOR)
    standard = (RateLimit(per_second, per=SECOND), RateLimit(6000, per=WINDOW))
    rng = random.Random(7)  # noqa: S311 - a seeded script of people, not security
    truth: dict[str, str | None] = {}  # session -> the mailbox allowed, None: denied
    async with Simulator(limits=limits, network=Network(jitter=0.02, seed=3)) as sim:
        workspace = sim.add_workspace("acme")
        connector = aiohttp.TCPConnector(limit=pool) if pool else None
        async with aiohttp.ClientSession(connector=connector) as http, OAuthManager(
            workspace.api_key, base_url=sim.url, session=http, store=MemoryStore(),
            init_limit=RateLimit(75, per=WINDOW), ip_init_limit=RateLimit(150, per=WINDOW),
            standard_limit=standard, status_limit=standard, poll_interval=0.02,
            request_timeout=10.0, status_timeout=10.0, session_lease=30.0,
        ) as manager, anyio.create_task_group() as people:

            async def act(session: OAuthSession) -> None:
                await anyio.sleep(rng.uniform(0.05, 1.0))  # the person reads, then clicks
                if rng.random() < 0.8:
                    email = f"{session.session_id[:10]}@acme.io"
                    truth[session.session_id] = email
                    sim.complete(session.session_id, email)
                else:
                    truth[session.session_id] = None
                    sim.deny(session.session_id)

            def person(session: OAuthSession) -> None:
                people.start_soon(act, session)

            async def run(provider: str) -> list[tuple[str, SessionStatus, str | None, bool]]:
                return [(r.session.session_id, r.status, r.email, r.account is not None)
                        async for r in manager.connect_many(
                            provider, PER_PROVIDER, on_session=person, max_pending=PER_PROVIDER)]

            results: list[tuple[str, SessionStatus, str | None, bool]] = []

            async def collect(provider: str) -> None:
                results.extend(await run(provider))

            with anyio.fail_after(100):
                async with anyio.create_task_group() as group:
                    group.start_soon(collect, "google")
                    group.start_soon(collect, "microsoft")

    assert [(r.kind, r.outcome) for r in sim.requests if r.status == 429] == []
    assert len(results) == 2 * PER_PROVIDER
    for sid, status, email, has_account in results:
        allowed = truth[sid]
        if allowed is None:
            assert status is SessionStatus.ERROR, sid
        else:
            assert (status, email, has_account) == (SessionStatus.SUCCESS, allowed, True), sid
    api = [r.at for r in sim.requests if r.kind in ("init", "status", "account")]
    assert max_in_window(api, SECOND) <= per_second
    assert sum(r.kind == "init" for r in sim.requests) == 2 * PER_PROVIDER
