"""Row 7: what instrumentation costs on the status path, side by side in one run.

Four managers share one ``aiohttp.ClientSession`` and one simulator in another process (limits
out of the way, so nothing waits); each reads the same pending session's status the way the
poller does, a slot of the status budget and then the request (``Reads.slot`` and
``Reads.status``, which tell the hooks a ``BudgetWaited`` and a ``RequestFinished``). They differ
only in what listens: nothing; a hook that does nothing; no hook but the library's logger at
DEBUG with a handler writing to a null stream (two records per read: the client's and the
Tally's); ``OpenTelemetryHook`` on the real SDK with an in-memory reader. Interleaved blocks in
a shuffled order, medians of the per-block means, as in row 2. A last row times the hooks alone,
called with the two events of a read, without the network's noise around them.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager, nullcontext

import aiohttp

from instantly_oauth_async import (
    BudgetWaited,
    Event,
    Hook,
    InstantlyClient,
    OAuthManager,
    RateLimit,
    RequestFinished,
)
from instantly_oauth_async._observe.events import Hooks

from ._common import Row, ServerProcess

UNLIMITED = RateLimit(10**7, per=1)
TARGET = 1.03


class _Null:
    """A stream that keeps nothing: the cost measured is the logging, not the disk."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _noop(event: Event) -> None:
    pass


@contextmanager
def _logging_at_debug() -> Iterator[None]:
    """The library's logger at DEBUG with a handler writing to a null stream, for a while."""
    library = logging.getLogger("instantly_oauth_async")
    handler = logging.StreamHandler(_Null())
    level = library.level
    library.addHandler(handler)
    library.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        library.removeHandler(handler)
        library.setLevel(level)


VARIANTS = {  # name: (what the row says, target met when the ratio is at most TARGET)
    "no-op hook": ("a hook that does nothing", True),
    "OpenTelemetry": ("OpenTelemetryHook, SDK with an in-memory reader (metrics)", True),
    "logging": ("no hook; library logger at DEBUG to a null stream", False),
}


async def run(*, quick: bool) -> list[Row]:
    # Here, not at the top: only this row needs the SDK (the test extra has it).
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

    from instantly_oauth_async.otel import OpenTelemetryHook  # noqa: PLC0415

    rounds, block = (3, 20) if quick else (40, 200)
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    otel = OpenTelemetryHook(meters)
    hooks: dict[str, list[Hook]] = {
        "none": [], "no-op hook": [_noop], "logging": [], "OpenTelemetry": [otel]}
    try:
        walls, cpus = await _measure(hooks, rounds, block)
    finally:
        meters.shutdown()
    base, base_cpu = statistics.median(walls["none"]), statistics.median(cpus["none"])
    rows = []
    for name, (what, target) in VARIANTS.items():
        wall = statistics.median(walls[name])
        ratio = wall / base
        more_cpu = (statistics.median(cpus[name]) - base_cpu) * 1e6
        rows.append(Row(
            "7 hooks", f"status read, {what}: {wall * 1e6:.0f} us vs {base * 1e6:.0f} us with "
            f"none ({rounds}x{block} each, interleaved)",
            f"ratio {ratio:.3f}; CPU {more_cpu:+.0f} us/read",
            f"<= {TARGET:.2f}" if target else "", (ratio <= TARGET) if target else None))
    rows.append(_direct(otel, 2_000 if quick else 50_000))
    return rows


async def _measure(hooks: dict[str, list[Hook]], rounds: int, block: int
                   ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of wall time and of this process's CPU per read, per block, by variant."""
    walls: dict[str, list[float]] = {name: [] for name in hooks}
    cpus: dict[str, list[float]] = {name: [] for name in hooks}
    async with ServerProcess("--open") as (url, key), aiohttp.ClientSession() as http, \
            AsyncExitStack() as stack:
        client = InstantlyClient(key, base_url=url, session=http)
        session_id = (await client.init_oauth("google")).session_id
        readers: dict[str, Callable[[], Awaitable[None]]] = {}
        for name, listening in hooks.items():
            manager = await stack.enter_async_context(OAuthManager(
                key, base_url=url, session=http, standard_limit=UNLIMITED,
                status_limit=UNLIMITED, hooks=listening))
            readers[name] = _reader(manager, session_id)

        async def timed(name: str) -> tuple[float, float]:
            with _logging_at_debug() if name == "logging" else nullcontext():
                read = readers[name]
                started, used = time.perf_counter(), time.process_time()
                for _ in range(block):
                    await read()
                return ((time.perf_counter() - started) / block,
                        (time.process_time() - used) / block)

        for name in hooks:  # warm every path up, the SDK's attribute storage too
            await timed(name)
        order = list(hooks)
        for _ in range(rounds):
            random.shuffle(order)
            for name in order:
                wall, cpu = await timed(name)
                walls[name].append(wall)
                cpus[name].append(cpu)
    return walls, cpus


def _reader(manager: OAuthManager, session_id: str) -> Callable[[], Awaitable[None]]:
    reads = manager._reads  # private, on purpose: the poller's own path for one read

    async def read() -> None:
        grant = await reads.slot()
        await reads.status(session_id, grant, provider="google")

    return read


def _direct(otel: Hook, count: int) -> Row:
    """The hooks' own CPU per read: the two events of one read, emitted ``count`` times."""
    events: tuple[Event, ...] = (
        BudgetWaited("read", None, 0.0001, True),
        RequestFinished("status", "google", 200, None, 0.0006, 1, None, "127.0.0.1", 8080))
    per_read = {}
    for name, hooks in (("none", Hooks()), ("no-op", Hooks([_noop])), ("otel", Hooks([otel]))):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(count):
                if hooks:
                    for event in events:
                        hooks.emit(event)
            best = min(best, (time.perf_counter() - started) / count)
        per_read[name] = best * 1e6
    return Row("7 hooks", f"the hooks alone, the two events of one read ({count} reads, "
               "best of 3)", f"no-op {per_read['no-op'] - per_read['none']:.2f} us, "
               f"OpenTelemetry {per_read['otel'] - per_read['none']:.1f} us per read")
