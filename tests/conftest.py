from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from instantly_oauth_async import InstantlyClient
from instantly_oauth_async.testing import Simulator, SimulatorLimits, Workspace


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp is asyncio-only.
    return "asyncio"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


@pytest.fixture
async def fast_sim() -> AsyncIterator[Simulator]:
    """Limits as documented, durations compressed 60x: a 60 s window lasts 1 s."""
    async with Simulator(limits=SimulatorLimits().compressed(60)) as simulator:
        yield simulator


@pytest.fixture
def workspace(sim: Simulator) -> Workspace:
    return sim.add_workspace("acme")


@pytest.fixture
async def client(sim: Simulator, workspace: Workspace) -> AsyncIterator[InstantlyClient]:
    async with InstantlyClient(workspace.api_key, base_url=sim.url) as c:
        yield c
