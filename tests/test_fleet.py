"""The manager on the session registry (issue 14, in process; the multi-process tests come with
the Redis registry): attach() from another manager, outcomes written ahead, leases released on
close and adopted, unknown ids typed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from instantly_oauth_async import (
    ConfigurationError,
    MemoryStore,
    OAuthManager,
    SessionStatus,
    Store,
)
from instantly_oauth_async._fleet import UnknownSessionError
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.testing import Simulator, SimulatorLimits
from tests._redis import RedisServer

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
async def test_a_closing_owner_releases_and_another_manager_adopts_at_once(
    csim: Simulator, make: MakeManager, redis_server: RedisServer, kind: str
) -> None:
    """With a 30 s lease the periodic adoption pass comes every 20 s: only the release, which
    the registry tells every manager of, explains an adoption within 5 s."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "memory":
            shared = MemoryStore()
            stores: list[Store] = [shared, shared]
        else:
            stores = [await stack.enter_async_context(RedisStore.from_url(redis_server.url))
                      for _ in range(2)]
        survivor = await stack.enter_async_context(make(store=stores[0], session_lease=30.0))
        owner = make(store=stores[1], session_lease=30.0)
        async with owner:
            pending = await owner.start("google")
            sid = pending.session.session_id
            attached = await survivor.attach(sid)
            with anyio.fail_after(10):
                await csim.wait_for(lambda: _reads(csim, sid) >= 1)
        read_by_owner = _reads(csim, sid)
        with anyio.fail_after(5):  # the survivor adopts it and polls it
            await csim.wait_for(lambda: _reads(csim, sid) > read_by_owner)
        assert sid in survivor._poller.pending
        csim.deny(sid)
        with anyio.fail_after(10):
            result = await attached
        assert result.status is SessionStatus.ERROR


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
