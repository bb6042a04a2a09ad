"""Row 3: 10,000 pending sessions in one process, beside a naive poll-loop-per-session client.

The simulator runs in another process, so tracemalloc here sees only the client: bytes per
pending session are (traced memory with them pending - before) / sessions, everything the manager
keeps included (tasks, records, budget logs, the connection pool's share). Then, while they poll
on the default status budget, a probe sleeping 10 ms measures event-loop lag, and process CPU
time is divided by the polls made. The naive client runs ``while True: poll; sleep(5)`` per
session against a simulator with the documented limits; its request rate is what the workspace
budget (100/s) would have to absorb.
"""

from __future__ import annotations

import time
import tracemalloc

import aiohttp
import anyio

from instantly_oauth_async import InstantlyClient, InstantlyError, OAuthManager

from ._common import OPEN, Row, ServerProcess, percentile, start_many


async def _lag_probe(seconds: float) -> list[float]:
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        before = time.perf_counter()
        await anyio.sleep(0.01)
        lags.append(time.perf_counter() - before - 0.01)
    return lags


async def _pending(sessions: int, seconds: float) -> list[Row]:
    async with ServerProcess("--open") as (url, key):
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        async with OAuthManager(key, base_url=url, init_limit=OPEN, ip_init_limit=OPEN,
                                standard_limit=OPEN, fetch_account=False,
                                start_timeout=600) as manager:
            await start_many(manager, sessions)  # the list goes before the figure is read
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            polls_before = sum(manager.stats().requests.get("status", {}).values())
            cpu = time.process_time()
            lags = await _lag_probe(seconds)
            cpu = time.process_time() - cpu
            polls = sum(manager.stats().requests.get("status", {}).values()) - polls_before
    per_session = held / sessions / 1024
    p99 = percentile(lags, 99) * 1000
    return [
        Row("3 scale", f"{sessions} pending sessions: memory per session (tracemalloc)",
            f"{per_session:.2f} KiB", "<= 4 KiB", per_session <= 4),
        Row("3 scale", f"event-loop lag p99 while they poll ({len(lags)} probes, {seconds:g} s)",
            f"{p99:.1f} ms", "<= 20 ms", p99 <= 20),
        Row("3 scale", f"CPU per poll ({polls} polls on the default 50/s budget)",
            f"{cpu / max(polls, 1) * 1e6:.0f} us", ""),
    ]


async def _naive(loops: int, seconds: float) -> Row:
    sent = rejected = 0
    async with ServerProcess() as (url, key), aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0)
    ) as http, InstantlyClient(key, base_url=url, session=http) as client:
        async def loop() -> None:
            nonlocal sent, rejected
            while True:
                sent += 1
                try:
                    await client.get_oauth_status("no-such-session")
                except InstantlyError as exc:
                    rejected += getattr(exc, "status", 0) == 429
                await anyio.sleep(5)

        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as group:
                for _ in range(loops):
                    group.start_soon(loop)
    rate = sent / seconds
    return Row("3 scale", f"naive: {loops} loops of poll+sleep(5) for {seconds:g} s",
               f"{rate:.0f} req/s = {rate / 100:.1f}x the 100/s budget; "
               f"{rejected / max(sent, 1):.0%} got 429", "")


async def run(*, quick: bool) -> list[Row]:
    sessions, seconds = (200, 1.0) if quick else (10_000, 10.0)
    rows = await _pending(sessions, seconds)
    rows.append(await _naive(sessions, 2.0 if quick else 10.0))
    return rows
