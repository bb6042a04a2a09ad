"""Row 2: the cost of the library per request, against raw aiohttp on the same session.

The simulator runs in another process; both sides GET the same pending session's status over one
shared ``aiohttp.ClientSession``, in interleaved blocks so drift hits both alike. Raw is
``session.get(url, headers=...)`` plus ``await response.json()``; the library is
``InstantlyClient.get_oauth_status`` (checks, a capped read, a typed record).
"""

from __future__ import annotations

import random
import statistics
import time

import aiohttp

from instantly_oauth_async import InstantlyClient

from ._common import Row, ServerProcess, status_readers


async def run(*, quick: bool) -> list[Row]:
    rounds, block = (3, 20) if quick else (30, 200)
    async with ServerProcess("--open") as (url, key), aiohttp.ClientSession() as http, \
            InstantlyClient(key, base_url=url, session=http) as client:
        raw, library = await status_readers(url, key, http, client)

        variants = {"raw": raw, "library": library}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for variant in variants.values():  # warm up both
            for _ in range(block):
                await variant()
        order = list(variants)
        for _ in range(rounds):
            random.shuffle(order)
            for name in order:
                started = time.perf_counter()
                for _ in range(block):
                    await variants[name]()
                times[name].append((time.perf_counter() - started) / block)
    raw_us = statistics.median(times["raw"]) * 1e6
    lib_us = statistics.median(times["library"]) * 1e6
    ratio = lib_us / raw_us
    return [Row("2 overhead",
                f"get_oauth_status {lib_us:.0f} us vs raw aiohttp {raw_us:.0f} us "
                f"({rounds}x{block} each, interleaved)",
                f"ratio {ratio:.3f}", "<= 1.10", ratio <= 1.10)]
