"""Row 6: the workspace's standard budget at its documented limits, through a network that jitters.

The simulator, in its own process (so the measuring one holds only the client), keeps the
standard limit exactly as documented (100 per second and 6,000 per minute; its init limits are
out of the way) and delays every request a uniform 0 to J seconds on its way in and again on its
way out. The manager's ``status_limit`` is the whole standard budget, so its polls of 200 pending
sessions are what fills the window. After the sessions are made and one window has passed,
utilisation is measured on the requests the server accepted over 10 s, as in rows 1 and 5: the
span the sliding window allows for that many (whole windows of 100) over the span they took.
(Counting requests per second instead depends on where the 10 s cut the batches of 100 that the
window lets through: 91-100% for the same run.) Beside it, the same run with status slots timed
from the grant (the behaviour before leases covered status reads): requests let go at a window's
edge reach the server bunched by the network. With leases, a slot is busy for a window plus its
request's round trip, so no scheme that guarantees 0 x 429 without knowing when the server saw
a request can pass ``1 / (1 + margin / per + round trip / per)``: 97.5% at a 20 ms mean.
"""

from __future__ import annotations

import aiohttp
import anyio

from instantly_oauth_async import OAuthManager, RateLimit
from instantly_oauth_async._manager.budget import DEFAULT_STANDARD_LIMIT

from ._common import OPEN, Row, ServerProcess, start_many, utilisation


async def _run(
    jitter: float, *, leased: bool, seconds: float, sessions: int
) -> tuple[int, int, float]:
    """(requests accepted while measuring, 429s in the whole run, utilisation)."""
    async with ServerProcess("--open-inits", "--jitter", repr(jitter)) as (url, key), \
            aiohttp.ClientSession() as http:
        async with OAuthManager(
            key, base_url=url, init_limit=OPEN, ip_init_limit=OPEN,
            standard_limit=DEFAULT_STANDARD_LIMIT, status_limit=DEFAULT_STANDARD_LIMIT,
            poll_interval=0.5, fetch_account=False,
        ) as manager:
            if not leased:
                # The old behaviour: a status slot counted from its grant only.
                manager._reads._hold = 0.0  # private, on purpose: the comparison row
            await start_many(manager, sessions)
            await anyio.sleep(1.0)  # one window on: the inits' slots are back
            async with http.get(f"{url}/bench/log") as response:
                begin = max(at for at, _ in await response.json())
            await anyio.sleep(seconds)
        async with http.get(f"{url}/bench/log") as response:
            served = await response.json()
    times = [at for at, status in served if begin < at <= begin + seconds and status == 200]
    rejected = sum(1 for _, status in served if status == 429)
    second: RateLimit = DEFAULT_STANDARD_LIMIT[0]
    return len(times), rejected, utilisation(times, second.count, second.per)


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
