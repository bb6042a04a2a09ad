"""Row 4: detection latency, from a person's consent to the result resolving.

S sessions pending on a fixed status budget of B polls/s: round-robin, each session is read every
S/B seconds (never faster than ``poll_interval``), so the ideal latency is uniform over that
cycle: p50 = cycle/2, p95 = 0.95 cycle. A sample of sessions is completed at random moments
through the simulator's control channel (another process) and timed until ``await pending``.
"""

from __future__ import annotations

import random
import time

import aiohttp
import anyio

from instantly_oauth_async import OAuthManager, PendingConnection, RateLimit

from ._common import OPEN, Row, ServerProcess, percentile, start_many


async def _one_size(url: str, key: str, sessions: int, budget: int, sample: int) -> Row:
    poll_interval = 0.5
    cycle = max(sessions / budget, poll_interval)
    async with OAuthManager(key, base_url=url, init_limit=OPEN, ip_init_limit=OPEN,
                            status_limit=RateLimit(budget, per=1), poll_interval=poll_interval,
                            standard_limit=OPEN,
                            fetch_account=False) as manager, aiohttp.ClientSession() as http:
        pending = await start_many(manager, sessions)
        latencies: list[float] = []
        rng = random.Random(sessions)

        async def person(p: PendingConnection, delay: float) -> None:
            await anyio.sleep(delay)
            async with http.post(f"{url}/bench/complete/{p.session.session_id}") as response:
                response.raise_for_status()
            done = time.perf_counter()
            await p
            latencies.append(time.perf_counter() - done)

        async with anyio.create_task_group() as group:
            for p in rng.sample(pending, sample):
                group.start_soon(person, p, rng.uniform(0, cycle))
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    ratio = p95 / (0.95 * cycle)
    return Row("4 latency", f"{sessions} pending, budget {budget}/s: p50 / p95 "
               f"(ideal {cycle / 2:.2f} / {0.95 * cycle:.2f} s)",
               f"{p50:.2f} / {p95:.2f} s (p95 {ratio:.2f}x ideal)", "")


async def run(*, quick: bool) -> list[Row]:
    sizes = (20, 50) if quick else (100, 1_000, 10_000)
    budget = 500
    rows = []
    async with ServerProcess("--open") as (url, key):
        for size in sizes:
            rows.append(await _one_size(url, key, size, budget, min(100, size)))  # noqa: PERF401
    return rows
