"""Row 8: the client's CPU per status read at saturation, the manager's beside a bare request's.

The simulator runs in another process with its limits out of the way, so nothing waits on a
budget and every figure is this process's CPU time (``time.process_time``) over the status
reads it made in the same span: what each read costs the caller's process, whatever the
server takes; each row also says how much of it the garbage collector's passes took
(``gc.callbacks``). Every variant runs side by side in one run, each between two raw spans and set
against their mean (the VM's speed drifts by 10-30% within a run); the client and manager
cases three times, the median ratio given with its spread:

- raw aiohttp (``session.get`` plus ``response.json()``) and ``InstantlyClient.get_oauth_status``,
  32 tasks each reading the same pending session in a loop;
- one ``OAuthManager`` polling 2,000 pending sessions, ``poll_interval`` a millisecond, so its
  scheduler always has a session due (saturation: reads/s is what one core gives);
- 20 and 100 managers (workspaces) sharing one ``aiohttp.ClientSession`` and one store, 2,000
  sessions between them;
- the one-manager case on ``RedisStore`` (a redis-server on loopback, started here) and on
  ``SQLiteStore``: the store's cost per read (redis-server's own CPU is not counted);
- scale: S sessions made pending under tracemalloc (bytes held per session, the registry's
  entries included), then polled on the default status budget (50/s) for a span that holds
  several heartbeats and adoption passes: CPU per poll at 10,000 and at 100,000 (row 3's
  method with a longer span; everything periodic over all sessions is in the figure).
"""

from __future__ import annotations

import gc
import itertools
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TypedDict

import aiohttp
import anyio

from instantly_oauth_async import InstantlyClient, OAuthManager, RateLimit
from instantly_oauth_async._manager.budget import DEFAULT_STATUS_LIMIT
from instantly_oauth_async._stores.store import MemoryStore, Store

from ._common import OPEN, Row, ServerProcess, status_readers


class _Each(TypedDict):
    sessions: int
    warm: float
    seconds: float


ROOT = Path(__file__).resolve().parent.parent
BENCH = "8 cpu"


class Span:
    """Reads counted, CPU time spent and the garbage collector's share of it over one measured
    span, after a warm-up."""

    def __init__(self, reads: int, cpu: float, wall: float, gc_cpu: float = 0.0) -> None:
        self.reads, self.cpu, self.wall, self.gc_cpu = reads, cpu, wall, gc_cpu

    @property
    def per_read_us(self) -> float:
        return self.cpu / max(self.reads, 1) * 1e6

    @property
    def gc_per_read_us(self) -> float:
        return self.gc_cpu / max(self.reads, 1) * 1e6

    @property
    def rate(self) -> float:
        return self.reads / self.wall


class _Collections:
    """The CPU time of the garbage collector's passes while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            self.cpu += time.process_time() - self._began


async def _span(count: Callable[[], int], warm: float, seconds: float) -> Span:
    await anyio.sleep(warm)
    collections = _Collections()
    gc.callbacks.append(collections)
    try:
        reads, cpu, wall = count(), time.process_time(), time.perf_counter()
        await anyio.sleep(seconds)
        return Span(count() - reads, time.process_time() - cpu, time.perf_counter() - wall,
                    collections.cpu)
    finally:
        gc.callbacks.remove(collections)


async def _loops(one: Callable[[], Awaitable[object]], tasks: int, warm: float,
                 seconds: float) -> Span:
    done = 0
    stop = False

    async def loop() -> None:
        nonlocal done
        while not stop:
            await one()
            done += 1

    async with anyio.create_task_group() as group:
        for _ in range(tasks):
            group.start_soon(loop)
        span = await _span(lambda: done, warm, seconds)
        stop = True
    return span


def _status_reads(managers: list[OAuthManager]) -> int:
    return sum(sum(m.stats().requests.get("status", {}).values()) for m in managers)


async def _start_many(managers: list[OAuthManager], count: int, inflight: int = 64) -> None:
    """``count`` Google sessions spread over ``managers``, by ``inflight`` tasks at a time (a
    task a start would leave asyncio's task set sized for ``count`` tasks, which tracemalloc
    would count against the sessions)."""
    started = iter(range(count))

    async def starter() -> None:
        for i in started:
            await managers[i % len(managers)].start("google")

    async with anyio.create_task_group() as group:
        for _ in range(min(inflight, count)):
            group.start_soon(starter)


@asynccontextmanager
async def _managers(url: str, key: str, http: aiohttp.ClientSession, store: Store, n: int,
                    *, poll_interval: float,
                    status_limit: RateLimit | tuple[RateLimit, ...] = OPEN,
                    ) -> AsyncIterator[list[OAuthManager]]:
    async with AsyncExitStack() as stack:
        managers = [
            await stack.enter_async_context(OAuthManager(
                key, base_url=url, init_limit=OPEN, ip_init_limit=OPEN, standard_limit=OPEN,
                status_limit=status_limit, fetch_account=False, start_timeout=600,
                poll_interval=poll_interval, session=http, store=store,
                workspace=f"bench-{i}"))
            for i in range(n)]
        yield managers


async def _polling(url: str, key: str, http: aiohttp.ClientSession, store: Store, *, n: int,
                   sessions: int, warm: float, seconds: float) -> Span:
    async with _managers(url, key, http, store, n, poll_interval=0.001) as managers:
        await _start_many(managers, sessions)
        return await _span(lambda: _status_reads(managers), warm, seconds)


async def _scale(url: str, key: str, sessions: int, seconds: float, interval: float
                 ) -> tuple[float, float, Span]:
    """(KiB per pending session, of which the budgets' slot logs, span polling them on the
    default status budget)."""
    async with aiohttp.ClientSession() as http:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        async with _managers(url, key, http, MemoryStore(), 1, poll_interval=interval,
                             status_limit=DEFAULT_STATUS_LIMIT) as managers:
            await _start_many(managers, sessions)
            held = tracemalloc.get_traced_memory()[0] - before
            # The slots the inits spent, each kept a window (60 s): here every session was
            # started within the minute, under limits out of the way (at the documented limits
            # a log holds at most its budget's count: 75, 150, 6,000).
            logs = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, "*/_limits/limiter.py")])
            spent = sum(stat.size for stat in logs.statistics("filename"))
            tracemalloc.stop()
            span = await _span(lambda: _status_reads(managers), 1.0, seconds)
    return held / sessions / 1024, spent / sessions / 1024, span


async def _distinct_reader(url: str, key: str, http: aiohttp.ClientSession,
                           client: InstantlyClient, count: int) -> Callable[[], Awaitable[None]]:
    """A raw aiohttp GET and ``json()`` of ``count`` pending sessions in turn."""
    ids: list[str] = []

    async def init(times: int) -> None:
        ids.extend([(await client.init_oauth("google")).session_id for _ in range(times)])

    async with anyio.create_task_group() as group:
        for _ in range(16):
            group.start_soon(init, -(-count // 16))
    urls = itertools.cycle([f"{url}/api/v2/oauth/session/status/{sid}" for sid in ids])
    headers = {"Authorization": f"Bearer {key}"}

    async def read() -> None:
        async with http.get(next(urls), headers=headers) as response:
            await response.json()

    return read


def _redis_server() -> object:
    sys.path.insert(0, str(ROOT))
    from tests._redis import RedisServer  # noqa: PLC0415 - the tests' helper, from a checkout

    server = RedisServer()
    server.start()
    return server


async def run(*, quick: bool) -> list[Row]:
    from instantly_oauth_async.redis import RedisStore  # noqa: PLC0415 - the redis extra
    from instantly_oauth_async.sqlite import SQLiteStore  # noqa: PLC0415

    warm, seconds = (0.1, 0.3) if quick else (1.0, 3.0)
    rounds = 1 if quick else 3
    sessions = 100 if quick else 2000
    scale_sizes = (100, 300) if quick else (10_000, 100_000)
    scale_seconds, interval = (1.0, 0.5) if quick else (16.0, 5.0)
    # Each case is measured between two raw spans and set against their mean: this VM's speed
    # drifts by 10-30% within a run, so a ratio against raw spans minutes away says little.
    # The CPU cases run ``rounds`` times; a row gives the median ratio and the spread.
    cases: dict[str, list[tuple[Span, float]]] = {}
    raws: list[Span] = []
    redis = _redis_server()
    try:
        async with ServerProcess("--open") as (url, key):
            async with aiohttp.ClientSession() as http, \
                    InstantlyClient(key, base_url=url, session=http) as client:
                raw, library = await status_readers(url, key, http, client)
                distinct = await _distinct_reader(url, key, http, client, sessions)
                each = _Each(sessions=sessions, warm=warm, seconds=seconds)

                async def on_redis() -> Span:
                    async with RedisStore.from_url(redis.url) as store:  # type: ignore[attr-defined]
                        return await _polling(url, key, http, store, n=1, **each)

                async def on_sqlite() -> Span:
                    with tempfile.TemporaryDirectory(prefix="iox-bench-") as tmp:
                        async with SQLiteStore(Path(tmp) / "bench.db") as lite:
                            return await _polling(url, key, http, lite, n=1, **each)

                def managers(n: int) -> Callable[[], Awaitable[Span]]:
                    return lambda: _polling(url, key, http, MemoryStore(), n=n, **each)

                measures: dict[str, Callable[[], Awaitable[Span]]] = {
                    "client": lambda: _loops(library, 32, warm, seconds),
                    "distinct": lambda: _loops(distinct, 100, warm, seconds),
                    "one": managers(1), "20": managers(20), "100": managers(100)}
                raws.append(await _loops(raw, 32, warm, seconds))
                order = [*list(measures) * rounds, "redis", "sqlite"]
                measures.update(redis=on_redis, sqlite=on_sqlite)
                for name in order:
                    span = await measures[name]()
                    raws.append(await _loops(raw, 32, warm, seconds))
                    around = (raws[-2].per_read_us + raws[-1].per_read_us) / 2
                    cases.setdefault(name, []).append((span, span.per_read_us / around))
            small_kib, _, small = await _scale(url, key, scale_sizes[0], scale_seconds,
                                                 interval)
            big_kib, big_logs, big = await _scale(url, key, scale_sizes[1], scale_seconds,
                                                  interval)
    finally:
        redis.close()  # type: ignore[attr-defined]

    def row(name: str, what: str, goal: float | None = None) -> Row:
        measured = sorted(cases[name], key=lambda pair: pair[1])
        span, ratio = measured[len(measured) // 2]  # the median
        spread = "" if len(measured) == 1 else \
            f", median of {len(measured)} ({measured[0][1]:.2f}-{measured[-1][1]:.2f}x)"
        return Row(BENCH, f"{what}: {span.rate:,.0f} reads/s, {span.gc_per_read_us:.1f} us/read "
                   f"in the garbage collector{spread}",
                   f"{span.per_read_us:.0f} us/read = {ratio:.2f}x raw",
                   "" if goal is None else f"<= {goal:.1f}x raw",
                   None if goal is None else ratio <= goal)

    raw_us = sorted(span.per_read_us for span in raws)

    n = sessions
    scale_ratio = big.per_read_us / small.per_read_us
    return [
        Row(BENCH, f"raw aiohttp GET + json(), 32 concurrent, before and after each case: "
            f"{len(raws)} spans, {raws[0].rate:,.0f} reads/s in the first (each ratio below is "
            "against the mean of the two raw spans around it)",
            f"{raw_us[0]:.0f}-{raw_us[-1]:.0f} us/read", ""),
        row("client", "InstantlyClient.get_oauth_status, 32 concurrent"),
        row("distinct", f"raw aiohttp reading {n} sessions in turn, 100 concurrent (a poller's "
            "reads: a new URL each, which yarl's parse cache does not hold)"),
        row("one", f"1 OAuthManager polling {n} pending sessions", 1.5),
        row("20", f"20 OAuthManagers (workspaces), one ClientSession, {n // 20} pending each"),
        row("100", f"100 OAuthManagers (workspaces), one ClientSession, {n // 100} pending each",
            1.6),
        row("redis", f"1 OAuthManager on RedisStore, {n} pending"),
        row("sqlite", f"1 OAuthManager on SQLiteStore, {n} pending"),
        Row(BENCH, f"memory per pending session at {scale_sizes[1]:,} (tracemalloc; registry "
            f"included; {big_logs * 1024:.0f} B of it the init budgets' slots of the last "
            f"minute); {small_kib:.2f} KiB at {scale_sizes[0]:,}", f"{big_kib:.2f} KiB",
            "<= 1 KiB", big_kib <= 1.0),
        Row(BENCH, f"CPU per poll on the default 50/s budget, {scale_seconds:g} s: "
            f"{small.per_read_us:.0f} us at {scale_sizes[0]:,} ({small.reads} polls), "
            f"{big.per_read_us:.0f} us at {scale_sizes[1]:,} ({big.reads} polls)",
            f"{scale_ratio:.2f}x", "<= 1.2x", scale_ratio <= 1.2),
    ]
