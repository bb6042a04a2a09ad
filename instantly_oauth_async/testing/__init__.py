"""Test helpers that ship with the library: a faithful simulator of the API and a fake clock.

``Simulator`` is a real ``aiohttp.web`` server on loopback that enforces the documented limits;
point an ``InstantlyClient`` or ``OAuthManager`` at ``sim.url`` to test your own code without the
real API. ``FakeClock`` moves only when told to, for tests of anything that waits; the simulator
and the manager take the same one as ``clock=``.

pytest finds the fixtures ``instantly_simulator``, ``instantly_workspace`` and
``instantly_manager`` by itself (the ``pytest11`` entry point, ``_pytest_plugin``); this package
never imports pytest.
"""

from ._clock import FakeClock
from ._rules import SimulatorLimits
from ._sessions import SimSession
from ._simulator import LoggedRequest, Simulator, Workspace
from ._wire import CannedResponse, Faults, Network

__all__ = [
    "CannedResponse",
    "FakeClock",
    "Faults",
    "LoggedRequest",
    "Network",
    "SimSession",
    "Simulator",
    "SimulatorLimits",
    "Workspace",
]
