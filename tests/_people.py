"""Simulated people for tests that drive sessions they did not create themselves."""

from __future__ import annotations

from instantly_oauth_async.testing import Simulator


async def allow_everyone(sim: Simulator, domain: str) -> None:
    """Allow every session that appears on ``sim``, each with its own mailbox at ``domain``.

    Runs until cancelled; it wakes on the server's own requests, not on a timer.
    """
    done: set[str] = set()
    while True:
        await sim.wait_for(lambda: bool(set(sim.sessions) - done))
        for sid in set(sim.sessions) - done:
            sim.complete(sid, f"{sid[:8]}@{domain}")
            done.add(sid)
