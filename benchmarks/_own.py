"""``python -m benchmarks._own [MANAGERS] [--without PART,...]``: row 8's saturation case (1
manager, or MANAGERS sharing one ``ClientSession``, 2,000 pending sessions in all) with the
network taken away: each status read answers at once (one event-loop pass) with the answer a
real read gave, so the CPU per read is the manager's own (scheduler, slots, leases, tally,
queues) and the event loop's, without aiohttp's. Three spans of 3 s, so their spread shows.
Not a row: what benchmarks/README.md's "the manager's own CPU per read" figures come from.

``--without`` takes guarantees' parts out, to price each on its own (the figure is then no
manager a user could run): ``budget`` (a read's slot of the status share and the standard
budget: granted at once, released as nothing), ``leases`` (every read allowed by its lease),
``deadlines`` (no deadline set from an answer's ``Date``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import aiohttp
import anyio

from instantly_oauth_async._limits.limiter import FairLimiter, Grant
from instantly_oauth_async._manager.deadlines import Deadlines
from instantly_oauth_async._manager.fleet import Fleet
from instantly_oauth_async._stores.store import MemoryStore
from instantly_oauth_async._wire.client import InstantlyClient
from instantly_oauth_async._wire.models import OAuthStatus

from ._common import ServerProcess
from ._cpu import _managers, _span, _start_many, _status_reads

_NO_GRANT = Grant(0.0, None, False)


async def _granted(self: FairLimiter, **_: Any) -> Grant:
    return _NO_GRANT


async def _released(self: FairLimiter, grant: Grant) -> None:
    return None


#: What ``--without`` replaces, by part: (class, attribute, stand-in).
PARTS: dict[str, list[tuple[type, str, Any]]] = {
    "budget": [(FairLimiter, "acquire", _granted), (FairLimiter, "release", _released)],
    "leases": [(Fleet, "may_read", lambda self, session_id: True)],
    "deadlines": [(Deadlines, "set_deadline", lambda self, pending, deadline: None)],
}


async def main(managers_count: int, *, sessions: int = 2000, spans: int = 3,
               seconds: float = 3.0, without: tuple[str, ...] = ()) -> list[float]:
    """Prints, and returns, the CPU per read (us) of ``spans`` spans of ``seconds``."""
    with contextlib.ExitStack() as stack:
        for part in without:
            for owner, name, stand_in in PARTS[part]:
                stack.enter_context(_replaced(owner, name, stand_in))
        return await _measure(managers_count, sessions=sessions, spans=spans,
                              seconds=seconds, label=f" without {'+'.join(without)}"
                              if without else "")


@contextlib.contextmanager
def _replaced(owner: type, name: str, stand_in: Any) -> Iterator[None]:
    real = owner.__dict__.get(name)  # None: inherited (put back by deleting the stand-in)
    setattr(owner, name, stand_in)
    try:
        yield
    finally:
        if real is None:
            delattr(owner, name)
        else:
            setattr(owner, name, real)


async def _measure(managers_count: int, *, sessions: int, spans: int, seconds: float,
                   label: str) -> list[float]:
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
                print(f"{managers_count} manager(s), no network{label}: "
                      f"{span.per_read_us:.1f} us/read of this process's CPU "
                      f"({span.gc_per_read_us:.1f} in the garbage collector), "
                      f"{span.rate:,.0f} reads/s", flush=True)
        finally:  # (the managers close with the real one: a smoke test runs in a test process)
            InstantlyClient.get_oauth_status = real  # type: ignore[method-assign]
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks._own")
    parser.add_argument("managers", type=int, nargs="?", default=1)
    parser.add_argument("--without", default="", help=f"parts: {', '.join(PARTS)}")
    args = parser.parse_args()
    parts = tuple(part for part in args.without.split(",") if part)
    if unknown := set(parts) - set(PARTS):
        parser.error(f"no such part: {', '.join(sorted(unknown))}")
    anyio.run(functools.partial(main, args.managers, without=parts))
