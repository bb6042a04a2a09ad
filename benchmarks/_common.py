"""What every benchmark shares: a row of the table, and the arithmetic of sliding windows."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import anyio
import anyio.abc
import attrs

from instantly_oauth_async import InstantlyClient, OAuthManager, PendingConnection, RateLimit

#: Init limits out of the way, for benchmarks that need many sessions and measure something else.
OPEN = RateLimit(10**6, per=60)


@attrs.frozen
class Row:
    """One line of the table: ``figure`` against ``target`` (None: shown for comparison only)."""

    bench: str
    what: str
    figure: str
    target: str = ""
    ok: bool | None = None


def ideal_span(accepted: int, per_window: int, window: float) -> float:
    """Seconds from the first to the last of ``accepted`` inits in the best schedule a sliding
    window of ``per_window`` per ``window`` allows (batches one window apart)."""
    return (-(-accepted // per_window) - 1) * window


def utilisation(times: list[float], per_window: int, window: float) -> float:
    """The allowed rate achieved: the ideal span over the span taken (1.0 when too few)."""
    if len(times) <= per_window:
        return 1.0
    return ideal_span(len(times), per_window, window) / (max(times) - min(times))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated; 0.0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


Read = Callable[[], Awaitable[None]]


async def status_readers(url: str, key: str, http: aiohttp.ClientSession,
                         client: InstantlyClient) -> tuple[Read, Read]:
    """Two ways to read one new session's status, for a side-by-side ratio: a raw aiohttp GET
    and ``json()`` on ``http``, and ``client.get_oauth_status`` (on the same session)."""
    session = await client.init_oauth("google")
    status_url = f"{url}/api/v2/oauth/session/status/{session.session_id}"
    headers = {"Authorization": f"Bearer {key}"}

    async def raw() -> None:
        async with http.get(status_url, headers=headers) as response:
            await response.json()

    async def library() -> None:
        await client.get_oauth_status(session.session_id)

    return raw, library


async def start_many(manager: OAuthManager, count: int) -> list[PendingConnection]:
    """``count`` Google sessions, 64 inits in flight at a time."""
    pending: list[PendingConnection] = []
    limiter = anyio.CapacityLimiter(64)

    async def one() -> None:
        async with limiter:
            pending.append(await manager.start("google"))

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one)
    return pending


class ServerProcess:
    """``benchmarks._server`` in a child process: ``async with ServerProcess() as (url, key)``."""

    def __init__(self, *args: str) -> None:
        self._args = args
        self._process: anyio.abc.Process | None = None

    async def __aenter__(self) -> tuple[str, str]:
        root = Path(__file__).parent.parent  # path arithmetic, no I/O
        self._process = await anyio.open_process(
            [sys.executable, "-m", "benchmarks._server", *self._args], cwd=root,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
        )
        assert self._process.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await self._process.stdout.receive(1)
        info = json.loads(line)
        return str(info["url"]), str(info["api_key"])

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            await self._process.stdin.aclose()
            with anyio.fail_after(10):
                await self._process.wait()
            await self._process.aclose()
