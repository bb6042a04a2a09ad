"""The long soak for leaks (not part of the suite): ``python -m tests.leak_soak --minutes 10``
(or ``--sessions 100000``: until that many sessions were made).

Round after round, one manager creates 200 sessions against a simulator in another process;
70% are allowed through the simulator's control channel, 30% cancelled, and every result is
awaited. Every 30 s it prints the round, sessions made, RSS, open file descriptors,
tracemalloc's current figure, asyncio tasks, pending sessions and the entries of the in-process
session registry (decided ones leave ``--retention`` seconds after their outcome; cancelled
ones are read once more after their deadline, which the simulator's ``--session-ttl`` sets).
Flat is what we want: once the retention and the session life have passed, the last row
should match the earlier ones within noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import time
import tracemalloc

import aiohttp
import anyio

from benchmarks._common import OPEN, ServerProcess
from instantly_oauth_async import InstantlyError, OAuthManager, PendingConnection, RateLimit
from instantly_oauth_async._stores.registry import MemoryRegistry


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def settle(pending: PendingConnection) -> None:
    with contextlib.suppress(InstantlyError):  # cancelled ones raise SessionCancelledError
        await pending


async def soak(minutes: float, sessions: int, retention: float, ttl: float) -> None:
    rng = random.Random(1)  # noqa: S311 - a seeded script, not security
    tracemalloc.start()
    end = time.monotonic() + minutes * 60
    next_report, rounds = 0.0, 0
    print(f"{'t (s)':>6} {'rounds':>7} {'sessions':>9} {'RSS KiB':>9} {'fds':>5} "
          f"{'traced KiB':>11} {'tasks':>6} {'pending':>8} {'registry':>9}")
    async with ServerProcess("--open", "--session-ttl", repr(ttl)) as (url, key), \
            aiohttp.ClientSession() as http, \
            OAuthManager(key, base_url=url, init_limit=OPEN, ip_init_limit=OPEN,
                         poll_interval=0.05, status_limit=RateLimit(2000, per=1),
                         standard_limit=RateLimit(2000, per=1), expiry_grace=1.0,
                         retention=retention, fetch_account=True) as manager:
        registry = manager._fleet.registry if manager._fleet is not None else None
        started = time.monotonic()
        # bounded by --minutes and --sessions
        while time.monotonic() < end and rounds * 200 < sessions:
            pendings = [await manager.start("google") for _ in range(200)]
            for p in pendings:
                if rng.random() < 0.7:
                    async with http.post(f"{url}/bench/complete/{p.session.session_id}") as r:
                        r.raise_for_status()
                else:
                    p.cancel()
            for p in pendings:
                await settle(p)
            rounds += 1
            now = time.monotonic() - started
            if now >= next_report or rounds * 200 >= sessions:
                next_report += 30
                fds = len(os.listdir("/proc/self/fd"))
                held = len(registry) if isinstance(registry, MemoryRegistry) else -1
                print(f"{now:6.0f} {rounds:7d} {rounds * 200:9d} {rss_kib():9d} {fds:5d} "
                      f"{tracemalloc.get_traced_memory()[0] // 1024:11d} "
                      f"{len(asyncio.all_tasks()):6d} {manager.stats().pending:8d} "
                      f"{held:9d}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.leak_soak")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sessions", type=int, default=10**9)
    parser.add_argument("--retention", type=float, default=60.0,
                        help="the manager's retention of decided outcomes (seconds)")
    parser.add_argument("--session-ttl", type=float, default=60.0,
                        help="the simulator's session life (seconds)")
    args = parser.parse_args()
    anyio.run(soak, args.minutes, args.sessions, args.retention, args.session_ttl)


if __name__ == "__main__":
    main()
