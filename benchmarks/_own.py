"""``python -m benchmarks._own [MANAGERS]``: row 8's saturation case (1 manager, or MANAGERS
sharing one ``ClientSession``, 2,000 pending sessions in all) with the network taken away: each
status read answers at once (one event-loop pass) with the answer a real read gave, so the CPU
per read is the manager's own (scheduler, slots, leases, tally, heaps) and the event loop's,
without aiohttp's. Three spans of 3 s, so their spread shows. Not a row: what
benchmarks/README.md's "the manager's own CPU per read" figures come from.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import anyio

from instantly_oauth_async._stores.store import MemoryStore
from instantly_oauth_async._wire.client import InstantlyClient
from instantly_oauth_async._wire.models import OAuthStatus

from ._common import ServerProcess
from ._cpu import _managers, _span, _start_many, _status_reads


async def main(managers_count: int, *, sessions: int = 2000, spans: int = 3,
               seconds: float = 3.0) -> list[float]:
    """Prints, and returns, the CPU per read (us) of ``spans`` spans of ``seconds``."""
    found: list[float] = []
    async with ServerProcess("--open") as (url, key), aiohttp.ClientSession() as http, \
            _managers(url, key, http, MemoryStore(), managers_count,
                      poll_interval=0.001) as managers:
        await _start_many(managers, sessions)
        first = managers[0]
        session_id = next(iter(first._poller.pending))
        answer = await first._client.get_oauth_status(session_id)

        async def no_network(self: InstantlyClient, session_id: str, **_: Any) -> OAuthStatus:
            await asyncio.sleep(0)
            return answer

        real = InstantlyClient.get_oauth_status
        InstantlyClient.get_oauth_status = no_network  # type: ignore[method-assign]
        try:
            await anyio.sleep(min(0.5, seconds))
            for _ in range(spans):
                span = await _span(lambda: _status_reads(managers), 0.2, seconds)
                found.append(span.per_read_us)
                print(f"{managers_count} manager(s), no network: {span.per_read_us:.1f} us/read "
                      f"of this process's CPU, {span.rate:,.0f} reads/s", flush=True)
        finally:  # (the managers close with the real one: a smoke test runs in a test process)
            InstantlyClient.get_oauth_status = real  # type: ignore[method-assign]
    return found


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 1)
