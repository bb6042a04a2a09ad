"""Row 1: init utilisation against the sliding window, beside two naive clients.

Three simulators in one event loop, limits compressed in time, one workspace each: the
library's OAuthManager; a client pacing itself with ``aiolimiter.AsyncLimiter(75, window)`` as
aiolimiter's docs suggest; and a client that sleeps a fixed ``window / 75`` between inits. Each
wants ``windows * 75`` sessions. The naive ones do not retry a 429 (a retry would only be
another rejection that counts towards the server's escalating blocks).
"""

from __future__ import annotations

import contextlib

import anyio
from aiolimiter import AsyncLimiter

from instantly_oauth_async import InstantlyClient, OAuthManager, RateLimit, RateLimitedError
from instantly_oauth_async.testing import Simulator, SimulatorLimits

from ._common import Row, utilisation

PER_WINDOW = 75


async def _library(sim: Simulator, key: str, wanted: int, window: float) -> None:
    async with OAuthManager(
        key, base_url=sim.url, init_limit=RateLimit(PER_WINDOW, per=window),
        ip_init_limit=RateLimit(150, per=window), fetch_account=False,
        status_limit=RateLimit(5, per=1), poll_interval=60,
    ) as manager, anyio.create_task_group() as group:
        for _ in range(wanted):
            group.start_soon(manager.start, "google")
        # The sessions stay pending; leaving cancels their polls.


async def _send(client: InstantlyClient) -> None:
    with contextlib.suppress(RateLimitedError):  # counted by the simulator's log
        await client.init_oauth("google")


async def _aiolimiter(sim: Simulator, key: str, wanted: int, window: float) -> None:
    limiter = AsyncLimiter(PER_WINDOW, window)
    async with InstantlyClient(key, base_url=sim.url) as client, \
            anyio.create_task_group() as group:
        for _ in range(wanted):
            async with limiter:
                group.start_soon(_send, client)


async def _fixed_gap(sim: Simulator, key: str, wanted: int, window: float) -> None:
    async with InstantlyClient(key, base_url=sim.url) as client:
        for _ in range(wanted):
            await _send(client)
            await anyio.sleep(window / PER_WINDOW)


async def run(*, quick: bool) -> list[Row]:
    factor = 60.0 if quick else 5.0
    windows = 2 if quick else 4
    window = 60 / factor
    wanted = windows * PER_WINDOW
    limits = SimulatorLimits().compressed(factor)
    clients = {"OAuthManager": _library, "aiolimiter(75, 60)": _aiolimiter,
               "fixed gap 0.8 s": _fixed_gap}
    sims = {name: Simulator(limits=limits) for name in clients}
    rows: list[Row] = []
    for sim in sims.values():
        await sim.start()
    try:
        with anyio.fail_after(window * (windows + 3) + 60):
            async with anyio.create_task_group() as group:
                for name, client in clients.items():
                    sim = sims[name]
                    group.start_soon(client, sim, sim.add_workspace(name).api_key, wanted, window)
    finally:
        for sim in sims.values():
            await sim.aclose()
    for name, sim in sims.items():
        accepted = sorted(t for ts in sim.init_times.values() for t in ts)
        rejected = sum(1 for r in sim.requests if r.kind == "init" and r.status == 429)
        mine = name == "OAuthManager"
        if len(accepted) == wanted:
            ratio = utilisation(accepted, PER_WINDOW, window)
            figure = f"{ratio:.1%} of allowed"
        else:
            ratio, figure = 0.0, "never finished"
        rows.append(Row(
            "1 init rate", f"{name}: {len(accepted)}/{wanted} accepted, {rejected} x 429",
            figure, ">= 99%, 0 x 429" if mine else "",
            (ratio >= 0.99 and rejected == 0) if mine else None,
        ))
    return rows
