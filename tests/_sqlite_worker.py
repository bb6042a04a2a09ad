"""A process on a SQLiteStore, run by tests/test_sqlite_processes.py: ``python -m
tests._sqlite_worker MODE --db PATH ...``. Each mode prints one JSON line at the end (or lines
as it goes, as said), and nothing else on stdout.

- ``fleet``: bulk-connects ``--count`` mailboxes through a manager on the store, playing each
  person too (as tests/_fleet_worker.py does on Redis); reports the store's decisions and how
  long each took from the event loop (submitted to answered).
- ``churn``: a victim to be killed with SIGKILL: loops on big transactions (registering
  sessions, renewing all their leases at once, taking slots) until killed. Prints ``ready``.
- ``taker``: says ``taking``, then takes slots of one budget for ``--seconds`` or until the
  ``--stop`` file exists (asking in the fleet-wide line, as a FairLimiter does), with a
  registry step between; reports each grant as the times
  (CLOCK_MONOTONIC) just before its step was asked and just after it answered.
- ``watch``: for each session id read from stdin, prints ``waiting ID`` and then ``seen ID T``
  once the registry says it is decided (T: CLOCK_MONOTONIC), waiting on the registry only.
- ``loop``: takes slots until a step raises; prints ``ready``, then the error as JSON.
- ``owner``: a manager (1.5 s leases, compressed 20x limits) starts ``--count`` sessions,
  prints each id, then ``ready``, and polls them until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from instantly_oauth_async import OAuthManager, OAuthSession, RateLimit
from instantly_oauth_async.sqlite import SQLiteStore
from instantly_oauth_async.testing import SimulatorLimits

NS = "iox:test:sqlite:procs"


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _timed(store: SQLiteStore, took: list[float], writes: list[float]) -> None:
    """Time every transaction of the store (and those that write), as the event loop sees
    them: from handed to the thread to answered."""
    run = store._db.run

    async def timed(job: Any, *, write: bool = True) -> Any:
        start = time.perf_counter()
        try:
            return await run(job, write=write)
        finally:
            took.append(time.perf_counter() - start)
            if write:
                writes.append(took[-1])

    store._db.run = timed  # type: ignore[method-assign]


async def fleet(args: argparse.Namespace) -> dict[str, Any]:
    took: list[float] = []
    writes: list[float] = []
    async with SQLiteStore(args.db) as store, aiohttp.ClientSession() as browser, \
            anyio.create_task_group() as people:
        _timed(store, took, writes)

        async def act(session: OAuthSession) -> None:
            email = f"{session.session_id[:12]}@{args.name}.io"
            async with browser.post(session.auth_url,
                                    data={"action": "allow", "email": email}) as response:
                response.raise_for_status()

        def person(session: OAuthSession) -> None:
            people.start_soon(act, session)

        window = args.window
        async with OAuthManager(
            os.environ["INSTANTLY_API_KEY"], base_url=args.base_url, store=store,
            poll_interval=0.2, fetch_account=False, request_timeout=3.0, status_timeout=3.0,
            init_limit=RateLimit(75, per=window), ip_init_limit=RateLimit(150, per=window),
            standard_limit=(RateLimit(100, per=window / 60), RateLimit(6000, per=window)),
            status_limit=(RateLimit(round(100 * args.status_share), per=window / 60),
                          RateLimit(round(6000 * args.status_share), per=window)),
        ) as manager:
            ok = 0
            async for result in manager.connect_many("google", args.count, on_session=person,
                                                     max_pending=args.count):
                ok += result.ok
            stats = manager.stats()
    return {"ok": ok, "rate_limited": stats.rate_limited, "took": took, "writes": writes}


async def churn(args: argparse.Namespace) -> dict[str, Any]:
    async with SQLiteStore(args.db) as store:
        registry, owner, n = store.registry, f"victim{os.getpid()}", 0
        specs = [("churn:k", RateLimit(1_000_000, per=1))]
        fences: dict[str, int] = {}
        for i in range(200):
            sid = f"{owner}:{i}"
            fences[sid] = (await registry.register(NS, sid, "x" * 500, owner=owner, lease=2,
                                                   retention=600)).fence
        _say("ready")
        while True:  # until killed: each step a transaction of its own, the renew a long one
            await registry.renew(NS, owner, fences, lease=2)
            await store.take(specs, [], lease=f"{owner}:{n}", hold=1)
            await store.release(specs, f"{owner}:{n}")
            n += 1


async def taker(args: argparse.Namespace) -> dict[str, Any]:
    granted: list[tuple[float, float]] = []
    specs = [("taker:k", RateLimit(args.limit, per=args.window, margin=0))]
    asker = f"taker{os.getpid()}"
    stop = Path(args.stop) if args.stop else None
    async with SQLiteStore(args.db) as store:
        began = time.monotonic()
        end = began + args.seconds
        _say("taking")
        while (before := time.monotonic()) < end and not (stop is not None and stop.exists()):
            wait, _ = await store.take(specs, [], asker=asker)
            if wait > 0:
                await anyio.sleep(min(wait, end - time.monotonic()))
                continue
            granted.append((before, time.monotonic()))
            await store.registry.orphans(NS)
        ended = time.monotonic()
        await store.leave(specs, asker)
    return {"granted": granted, "seconds": ended - began}


async def watch(args: argparse.Namespace) -> dict[str, Any]:
    async with SQLiteStore(args.db) as store:
        registry = store.registry
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            _say(f"waiting {line}")
            while (entry := await registry.get(NS, line)) is None or not entry.decided:
                await registry.wait(NS, line, 5.0)
            _say(f"seen {line} {time.monotonic()!r}")
    return {}


async def loop_until_error(args: argparse.Namespace) -> dict[str, Any]:
    specs = [("loop:k", RateLimit(1_000_000, per=1))]
    async with SQLiteStore(args.db) as store:
        _say("ready")
        try:
            while True:
                await store.take(specs, [])
                await anyio.sleep(0.01)
        except Exception as exc:  # noqa: BLE001 - the point: report what the step raised
            return {"error": type(exc).__name__, "message": str(exc),
                    "code": getattr(exc, "code", None)}


async def owner(args: argparse.Namespace) -> dict[str, Any]:
    async with SQLiteStore(args.db) as store, OAuthManager(
            os.environ["INSTANTLY_API_KEY"], base_url=args.base_url, store=store,
            **SimulatorLimits().compressed(20).manager_limits(poll_interval=0.05),
            session_lease=1.5, status_timeout=0.5) as manager:
        for _ in range(args.count):
            _say((await manager.start("google")).session.session_id)
        _say("ready")
        await anyio.sleep_forever()
    return {}


MODES = {"fleet": fleet, "churn": churn, "taker": taker, "watch": watch,
         "loop": loop_until_error, "owner": owner}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--db", required=True)
    parser.add_argument("--base-url", default="")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--stop", default="", help="taker: stop once this file exists")
    parser.add_argument("--status-share", type=float, default=0.5)
    parser.add_argument("--name", default="w")
    args = parser.parse_args()
    _say(json.dumps(asyncio.run(MODES[args.mode](args))))


if __name__ == "__main__":
    main()
