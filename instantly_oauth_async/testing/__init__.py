"""Test helpers that ship with the library: a faithful simulator of the API and a fake clock.

``Simulator`` is a real ``aiohttp.web`` server on loopback that enforces the documented limits;
point an ``InstantlyClient`` or ``OAuthManager`` at ``sim.url`` to test your own code without the
real API.
"""

from ._simulator import (
    CannedResponse,
    Faults,
    LoggedRequest,
    SimSession,
    Simulator,
    SimulatorLimits,
    Workspace,
)

__all__ = [
    "CannedResponse",
    "Faults",
    "LoggedRequest",
    "SimSession",
    "Simulator",
    "SimulatorLimits",
    "Workspace",
]
