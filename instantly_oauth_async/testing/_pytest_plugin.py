"""A pytest plugin: a started simulator and a manager pointed at it, one fixture each.

Installed with the library (the ``pytest11`` entry point ``instantly_oauth_async``), so a user's
test needs no conftest and no import::

    @pytest.mark.anyio                      # or @pytest.mark.asyncio with pytest-asyncio
    async def test_connect(instantly_manager, instantly_simulator):
        pending = await instantly_manager.start("google")
        instantly_simulator.complete(pending.session.session_id, "ann@acme.io")
        assert (await pending).ok

Fixtures (each function-scoped):

* ``instantly_simulator_limits``: the :class:`SimulatorLimits` the simulator enforces; the
  documented ones compressed 60 times (a minute lasts one second). Override it in a conftest to
  change them.
* ``instantly_simulator``: a started :class:`Simulator` on a free loopback port, closed after the
  test. A person's part is played by its methods: ``complete(session_id, email)``, ``deny``,
  ``fail``, ``expire``, ``session_for(auth_url)``, ``pending_sessions()``.
* ``instantly_workspace``: a workspace of that simulator (``.api_key``).
* ``instantly_manager``: an open ``OAuthManager`` with that key, at the simulator's URL and
  with ``instantly_simulator.limits.manager_limits()`` (so its polling and waits are
  compressed too), closed after the test.

The simulator and the manager run on the test's own event loop, which either plugin provides:
anyio's (always there, since anyio is a dependency: mark the test ``@pytest.mark.anyio``) or
pytest-asyncio's, in strict or auto mode (``@pytest.mark.asyncio``, on the function-scoped loop).
Each public fixture is a plain function that asks the async plugin running the test for the
matching async fixture, so neither plugin is required and neither sees an async fixture it
does not own. aiohttp needs asyncio, so anyio's trio backend is refused with a clear message.

Nothing imports this module but pytest: ``instantly_oauth_async`` and its ``testing`` never
import pytest, and the module is private, so the package's namespace stays as it was. pytest
imports it (and so the library) at start-up, as it does any plugin living in its library's
package; ``-p no:instantly_oauth_async`` turns it off. A server starts only for a test that asks.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import pytest

from .._manager.manager import OAuthManager
from ._rules import SimulatorLimits
from ._simulator import Simulator, Workspace

__all__ = [
    "instantly_manager",
    "instantly_simulator",
    "instantly_simulator_limits",
    "instantly_workspace",
]

# pytest-asyncio's strict mode handles only the fixtures its own decorator marks.
_asyncio_fixture: Callable[..., Callable[[Callable[..., Any]], object]] | None
try:
    _asyncio_fixture = importlib.import_module("pytest_asyncio").fixture
except ImportError:  # not installed: anyio's plugin it is
    _asyncio_fixture = None


# -- what a user asks for --------------------------------------------------------------------

@pytest.fixture
def instantly_simulator_limits() -> SimulatorLimits:
    """The simulator's rules: the documented limits, every duration compressed 60 times."""
    return SimulatorLimits().compressed(60)


@pytest.fixture
def instantly_simulator(request: pytest.FixtureRequest) -> Simulator:
    """A started simulator on the test's event loop, closed after the test."""
    value: Simulator = request.getfixturevalue(f"_instantly_simulator_{_async_plugin(request)}")
    return value


@pytest.fixture
def instantly_workspace(instantly_simulator: Simulator) -> Workspace:
    """A workspace of ``instantly_simulator``; its ``api_key`` is the one the manager uses."""
    return instantly_simulator.add_workspace("acme")


@pytest.fixture
def instantly_manager(request: pytest.FixtureRequest) -> OAuthManager:
    """An open ``OAuthManager`` at ``instantly_simulator``, its limits and pacing compressed as
    the simulator's are; closed after the test."""
    value: OAuthManager = request.getfixturevalue(f"_instantly_manager_{_async_plugin(request)}")
    return value


def _async_plugin(request: pytest.FixtureRequest) -> Literal["anyio", "asyncio"]:
    """Which plugin runs this test's coroutine, so the fixtures share its event loop."""
    if "anyio_backend" in request.fixturenames:
        backend = request.getfixturevalue("anyio_backend")
        name = backend if isinstance(backend, str) else backend[0]
        if name != "asyncio":
            pytest.fail(f"{request.fixturename} runs on asyncio only (aiohttp does), not on "
                        f"anyio's {name!r} backend", pytrace=False)
        return "anyio"
    if (request.node.get_closest_marker("asyncio") is not None
            and request.config.pluginmanager.has_plugin("asyncio")):
        return "asyncio"
    pytest.fail(f"{request.fixturename} needs an async test on asyncio: mark it "
                "@pytest.mark.anyio (anyio's plugin) or @pytest.mark.asyncio (pytest-asyncio)",
                pytrace=False)


# -- the async fixtures behind them, one per plugin ------------------------------------------

@contextlib.asynccontextmanager
async def _simulator(limits: SimulatorLimits) -> AsyncIterator[Simulator]:
    async with Simulator(limits=limits) as simulator:
        yield simulator


@contextlib.asynccontextmanager
async def _manager(simulator: Simulator, workspace: Workspace) -> AsyncIterator[OAuthManager]:
    async with OAuthManager(workspace.api_key, base_url=simulator.url,
                            **simulator.limits.manager_limits()) as manager:
        yield manager


# anyio's plugin runs these for a test that uses ``anyio_backend`` (``@pytest.mark.anyio``).
@pytest.fixture(name="_instantly_simulator_anyio")
async def _simulator_on_anyio(instantly_simulator_limits: SimulatorLimits
                              ) -> AsyncIterator[Simulator]:
    async with _simulator(instantly_simulator_limits) as simulator:
        yield simulator


@pytest.fixture(name="_instantly_manager_anyio")
async def _manager_on_anyio(instantly_simulator: Simulator, instantly_workspace: Workspace
                            ) -> AsyncIterator[OAuthManager]:
    async with _manager(instantly_simulator, instantly_workspace) as manager:
        yield manager


# pytest-asyncio runs these (marked by its own decorator, so strict mode takes them too): two
# more functions, since its decorator marks the function it is given.
if _asyncio_fixture is not None:
    @_asyncio_fixture(name="_instantly_simulator_asyncio")
    async def _simulator_on_asyncio(instantly_simulator_limits: SimulatorLimits
                                    ) -> AsyncIterator[Simulator]:
        async with _simulator(instantly_simulator_limits) as simulator:
            yield simulator

    @_asyncio_fixture(name="_instantly_manager_asyncio")
    async def _manager_on_asyncio(instantly_simulator: Simulator,
                                  instantly_workspace: Workspace) -> AsyncIterator[OAuthManager]:
        async with _manager(instantly_simulator, instantly_workspace) as manager:
            yield manager
