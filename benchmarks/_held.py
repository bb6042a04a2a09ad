"""``python -m benchmarks._held [SESSIONS] [SECONDS]``: what a pending session holds as it is
polled, not only once started (row 8 measures memory before any read): SESSIONS (500) pending
on one manager, read five times a second each against a simulator in another process, limits
out of the way; every 2 s, the reaper's heap entries per session (64 B each). Not a row: the
figures benchmarks/README.md's "Row 8, third pass" quotes for the deadline entries polling used
to leave behind. (tracemalloc's growth is no guide here: the connection pool's buffers and, with
the limits out of the way, a minute of every read's slots are counted in it.)
"""

from __future__ import annotations

import sys

import aiohttp
import anyio

from instantly_oauth_async._stores.store import MemoryStore

from ._common import ServerProcess
from ._cpu import _managers, _start_many


async def main(sessions: int = 500, seconds: float = 12.0, every: float = 2.0) -> list[float]:
    """Prints, and returns, the heap entries a session each ``every`` seconds."""
    found: list[float] = []
    async with ServerProcess("--open") as (url, key), aiohttp.ClientSession() as http, \
            _managers(url, key, http, MemoryStore(), 1, poll_interval=0.2) as managers:
        manager = managers[0]
        await _start_many(managers, sessions)
        for step in range(round(seconds / every)):
            await anyio.sleep(every)
            heap = manager._poller._deadlines.watched() / sessions
            found.append(heap)
            print(f"{(step + 1) * every:4.0f} s: {heap:.2f} deadline entries a session, "
                  f"{sum(manager.stats().requests.get('status', {}).values()) / sessions:.0f} "
                  "status reads a session", flush=True)
    return found


if __name__ == "__main__":
    args = sys.argv[1:]
    anyio.run(main, int(args[0]) if args else 500, float(args[1]) if len(args) > 1 else 12.0)
