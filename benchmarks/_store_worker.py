"""One process of benchmark row 9 (``benchmarks/_stores.py``), on a SQLiteStore or a RedisStore:
``python -m benchmarks._store_worker MODE --store sqlite:PATH|redis://HOST:PORT/0 ...``.

The API key comes from INSTANTLY_API_KEY. Every line on stdout is for the parent:

- ``fleet``: opens the store and a manager at the simulator's limits (``--factor``: the
  documented ones at 1), says ``ready``, waits for ``go`` on stdin, then bulk-connects
  ``--count`` mailboxes playing each person (the consent form submitted over HTTP at once), and
  prints one JSON line: results, the store's decisions made after ``go`` and how long each took
  as the event loop awaited it. A decision is one transaction on SQLite (``BEGIN IMMEDIATE``,
  handed to the store's thread and answered) and one script step on Redis (several may share a
  round trip; a posted step, which nobody awaits, is counted but has no latency).
- ``owner``: a manager that starts ``--count`` sessions (``session ID`` each), says ``ready``
  and polls them until stdin closes; each outcome it writes to the registry is announced as
  ``decided ID T`` *before* the write is sent (T: ``time.monotonic()``, CLOCK_MONOTONIC, which
  every process of the host reads alike).
- ``watch``: a manager that reads session ids from stdin, ``attach()``-es each (``attached
  ID``) and awaits its result (``seen ID T STATUS``), until stdin closes and every result came.

Timing goes through private attributes of the stores on purpose (``SQLiteStore._db.run``,
``RedisStore._batch.run``): the one place every decision of each passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio

from instantly_oauth_async import OAuthManager, OAuthSession, RateLimit
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.sqlite import SQLiteStore
from instantly_oauth_async.testing import SimulatorLimits

Store = SQLiteStore | RedisStore
#: The longest any mode runs (seconds): a bound for every wait below.
LIMIT = 900.0


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def open_store(spec: str) -> Store:
    if spec.startswith("sqlite:"):
        return SQLiteStore(spec.removeprefix("sqlite:"))
    if spec.startswith("redis://"):
        return RedisStore.from_url(spec)
    raise SystemExit(f"--store must be sqlite:PATH or redis://...: {spec!r}")


class Decisions:
    """The decisions of one store after :meth:`start`: count, round trips, latencies."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.took: list[float] = []
        self.measuring = False
        self._base = (0, 0)
        target: Any = store._db if isinstance(store, SQLiteStore) else store._batch
        run: Callable[..., Awaitable[Any]] = target.run

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await run(*args, **kwargs)
            finally:
                if self.measuring:
                    self.took.append(time.perf_counter() - start)

        target.run = timed

    def _counts(self) -> tuple[int, int]:
        """(decisions, round trips) so far."""
        if isinstance(self.store, SQLiteStore):
            return len(self.took), len(self.took)
        steps = sum(self.store.steps.values()) - self.store.steps["(posted alone)"]
        return steps, self.store.round_trips

    def start(self) -> None:
        self.took.clear()
        self.measuring = True
        self._base = self._counts()

    def report(self) -> dict[str, Any]:
        decisions, trips = self._counts()
        return {"took": self.took, "decisions": decisions - self._base[0],
                "trips": trips - self._base[1]}


async def _lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _manager(store: Store, args: argparse.Namespace, **extra: Any) -> OAuthManager:
    # The simulator's limits (the documented ones at factor 1, so the manager's defaults), with
    # ``extra`` winning over any of its keys (a pacing it may hold too, such as poll_interval).
    kwargs = {**SimulatorLimits().compressed(args.factor).manager_limits(), **extra}
    return OAuthManager(os.environ["INSTANTLY_API_KEY"], base_url=args.base_url, store=store,
                        fetch_account=False, **kwargs)


async def fleet(args: argparse.Namespace) -> dict[str, Any]:
    stdin = await _lines()
    store = open_store(args.store)
    report: dict[str, Any] = {}
    async with store, aiohttp.ClientSession() as browser, anyio.create_task_group() as people:
        decisions = Decisions(store)
        # The connection (and Redis's script) made before the start, as a running app has them.
        await store.take([("iox:bench:warm-up", RateLimit(10**6, per=1))], [])

        async def act(session: OAuthSession) -> None:
            email = f"{session.session_id[:12]}@{args.name}.io"
            async with browser.post(session.auth_url,
                                    data={"action": "allow", "email": email}) as response:
                response.raise_for_status()

        def person(session: OAuthSession) -> None:
            people.start_soon(act, session)

        async with _manager(store, args, poll_interval=5.0 / args.factor) as manager:
            _say("ready")
            with anyio.fail_after(LIMIT):
                go = (await stdin.readline()).decode().strip()
            if go != "go":
                raise SystemExit(f"expected go, got {go!r}")
            decisions.start()
            ok = 0
            with anyio.fail_after(LIMIT):
                async for result in manager.connect_many(
                        "google", args.count, on_session=person, max_pending=args.count):
                    ok += result.ok
            stats = manager.stats()
        report.update(ok=ok, rate_limited=stats.rate_limited, **decisions.report())
    return report


async def owner(args: argparse.Namespace) -> dict[str, Any]:
    stdin = await _lines()
    async with open_store(args.store) as store, \
            _manager(store, args, poll_interval=0.5 / args.factor) as manager:
        registry: Any = store.registry
        decide = registry.decide

        async def announced(ns: str, session_id: str, *a: Any, **kw: Any) -> Any:
            _say(f"decided {session_id} {time.monotonic()!r}")
            return await decide(ns, session_id, *a, **kw)

        registry.decide = announced
        for _ in range(args.count):
            _say(f"session {(await manager.start('google')).session.session_id}")
        _say("ready")
        with anyio.fail_after(LIMIT):
            await stdin.read()  # until the parent closes it
    return {}


async def watch(args: argparse.Namespace) -> dict[str, Any]:
    stdin = await _lines()

    async def await_one(session_id: str, pending: Any) -> None:
        result = await pending.result()
        _say(f"seen {session_id} {time.monotonic()!r} {result.status.value}")

    async with open_store(args.store) as store, _manager(store, args) as manager:
        with anyio.fail_after(LIMIT):
            async with anyio.create_task_group() as group:
                for _ in range(100_000):  # bounded: one session id a line, until stdin closes
                    session_id = (await stdin.readline()).decode().strip()
                    if not session_id:
                        break
                    group.start_soon(await_one, session_id, await manager.attach(session_id))
                    _say(f"attached {session_id}")
    return {}


MODES = {"fleet": fleet, "owner": owner, "watch": watch}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--store", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--name", default="w")
    args = parser.parse_args()
    _say(json.dumps(asyncio.run(MODES[args.mode](args))))


if __name__ == "__main__":
    main()
