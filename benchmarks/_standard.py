"""Row 6: the workspace's standard budget at its documented limits, through a network that jitters.

The simulator keeps the standard limit exactly as documented (100 per second and 6,000 per
minute; its init limits are out of the way) and delays every request a uniform 0 to J seconds on
its way in and again on its way out. The manager's ``status_limit`` is the whole standard budget,
so its polls of many pending sessions are what fills the window. After the sessions are made,
the row counts the requests the server accepted over the measured seconds: utilisation is that
rate over the 100 per second the window allows. Beside it, the same run with status slots timed
from the grant (the library's behaviour before leases covered status reads): the requests it
lets go at a window's edge reach the server bunched by the network.
"""

from __future__ import annotations

import anyio

from instantly_oauth_async import OAuthManager, RateLimit
from instantly_oauth_async._budget import DEFAULT_STANDARD_LIMIT
from instantly_oauth_async.testing import Network, Simulator, SimulatorLimits

from ._common import OPEN, Row, start_many


async def _run(
    jitter: float, *, leased: bool, seconds: float, sessions: int
) -> tuple[int, int, float]:
    """(requests accepted while measuring, 429s in the whole run, utilisation)."""
    limits = SimulatorLimits(init_per_workspace=10**6, init_per_ip=10**6)
    async with Simulator(limits=limits, network=Network(jitter=jitter, seed=1)) as sim:
        workspace = sim.add_workspace("bench")
        async with OAuthManager(
            workspace.api_key, base_url=sim.url, init_limit=OPEN, ip_init_limit=OPEN,
            standard_limit=DEFAULT_STANDARD_LIMIT, status_limit=DEFAULT_STANDARD_LIMIT,
            poll_interval=0.5, fetch_account=False,
        ) as manager:
            if not leased:
                # The old behaviour: a status slot counted from its grant only.
                manager._reads._hold = 0.0  # private, on purpose: the comparison row
            await start_many(manager, sessions)
            begin = sim.clock() + 1.0  # one window on: the inits' slots are back
            await anyio.sleep(1.0 + seconds)
            end = begin + seconds
    accepted = sum(1 for r in sim.requests if begin <= r.at < end and r.status == 200)
    rejected = sum(1 for r in sim.requests if r.status == 429)
    per_second: RateLimit = DEFAULT_STANDARD_LIMIT[0]
    return accepted, rejected, accepted / seconds / (per_second.count / per_second.per)


async def run(*, quick: bool) -> list[Row]:
    # 200 sessions polled every 0.5 s want 400 reads/s against the 100/s allowed.
    seconds, sessions = (0.3, 20) if quick else (10.0, 200)
    rows = []
    for jitter, leased, target in ((0.0, True, False), (0.02, True, True),
                                   (0.02, False, False), (0.04, True, False)):
        accepted, rejected, ratio = await _run(jitter, leased=leased, seconds=seconds,
                                               sessions=sessions)
        how = "leases (grant to answer)" if leased else "timed from the grant (the old way)"
        delay = f"0-{jitter * 1000:.0f} ms each way" if jitter else "no delay"
        what = (f"100/s + 6,000/min, {delay}, {how}: "
                f"{accepted} in {seconds:g} s, {rejected} x 429")
        if target:
            rows.append(Row("6 standard", what, f"{ratio:.1%} of allowed", ">= 97%, 0 x 429",
                            ratio >= 0.97 and rejected == 0))
        else:
            rows.append(Row("6 standard", what, f"{ratio:.1%} of allowed"))
    return rows
