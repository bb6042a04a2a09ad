from __future__ import annotations

import gc
import logging
import os
import sysconfig
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from instantly_oauth_async import InstantlyClient
from instantly_oauth_async.testing import Network, Simulator, SimulatorLimits, Workspace
from tests._redis import RedisServer
from tests._tree import LIBRARY, ROOT, SOURCE, SOURCE_VARIABLE

# Property tests give the same verdict on every run in CI (and under scripts/mutation, which sets
# HYPOTHESIS_PROFILE=ci): the examples are derived from each test's name, not drawn at random,
# and no database of past failures replays examples from another run. Elsewhere hypothesis draws
# new examples each run (the "default" profile), so a developer's runs keep exploring.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


def pytest_configure(config: pytest.Config) -> None:
    """With INSTANTLY_OAUTH_SOURCE set (.ci/run's wheel step), the tests are there to try the
    installed wheel: refuse to run them against anything else, a checkout above all."""
    if not os.environ.get(SOURCE_VARIABLE):
        return
    sites = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    if not any(LIBRARY.is_relative_to(site) for site in sites) or \
            LIBRARY.is_relative_to(SOURCE) or LIBRARY.is_relative_to(ROOT):
        pytest.exit(f"{SOURCE_VARIABLE} is set, so these tests must run against the installed "
                    f"wheel, but instantly_oauth_async was imported from {LIBRARY}, not from "
                    f"this Python's site-packages ({', '.join(map(str, sorted(sites)))}): run "
                    "them from a folder without the package dir, in a venv with the wheel "
                    "installed (not editable)", returncode=4)


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    # aiohttp is asyncio-only. Debug mode reports never-retrieved exceptions and unclosed
    # transports with where they were made; it slows the loop several times over, so the tests
    # that measure rates (marked ``timing``) run without it.
    return "asyncio", {"debug": request.node.get_closest_marker("timing") is None}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move every object that exists once the tests are collected (modules, items, hypothesis
    strategies: some 160,000) out of the cyclic collector's reach, for good. Each test's
    ``gc.collect()`` below then walks only what was made since, which holds whatever a test
    leaves behind: about 0.1 s less a test. Garbage is collected first, so none is kept."""
    gc.collect()
    gc.freeze()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.startswith("Executing "):  # debug mode's slow-callback notes
            self.messages.append(message.splitlines()[0])


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """Fail a test that leaves a task pending, an exception unretrieved, or a client session or
    connector unclosed: asyncio and aiohttp report those through the event loop's exception
    handler (the ``asyncio`` logger), which warnings-as-errors does not see."""
    handler = _Collect()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()  # what the test dropped, collected now, so it reports now
    finally:
        logger.removeHandler(handler)
    assert handler.messages == [], handler.messages


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, one per test module, stopped by its PID."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


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
async def slow_sim() -> AsyncIterator[Simulator]:
    """Limits out of the way; every status read takes 0.2 s each way, so reads pile up."""
    big = 10**6
    limits = SimulatorLimits(init_per_workspace=big, init_per_ip=big, api_per_second=big,
                             api_per_minute=big)
    async with Simulator(limits=limits, network=Network(latency=0.2,
                                                        kinds=frozenset({"status"}))) as sim:
        yield sim


@pytest.fixture
async def csim() -> AsyncIterator[Simulator]:
    """Limits as documented, durations compressed 20x: a 60 s window lasts 3 s, a session lives
    30 s."""
    async with Simulator(limits=SimulatorLimits().compressed(20)) as simulator:
        yield simulator


@pytest.fixture
def workspace(sim: Simulator) -> Workspace:
    return sim.add_workspace("acme")


@pytest.fixture
async def client(sim: Simulator, workspace: Workspace) -> AsyncIterator[InstantlyClient]:
    async with InstantlyClient(workspace.api_key, base_url=sim.url) as c:
        yield c
