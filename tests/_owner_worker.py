"""A manager of the fleet as its own process, run by tests/test_fleet_processes.py.

With ``--count N`` it starts N sessions through a RedisStore (the i-th with expected_email
``p<i>@<--expect-domain>`` when that is given) and prints each session id on its own line
(flushed); with ``--attach id,id,...`` it attaches to sessions other managers started. Then it
prints "ready", then each outcome as it learns it, until it is killed:
"result <id> <status> <reconciled 0/1>" or "error <id> <exception type>".

``--ip`` sends its requests from that loopback address (the simulator logs it, so a test can
tell whose read a request was); ``--clock-offset`` runs its manager and store on a clock that
many seconds off the host's; ``--die-before-write`` makes it SIGKILL itself when it is about to
write a session's outcome to the registry (after the server answered, before it is stored).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from typing import Any

import aiohttp
import anyio

from instantly_oauth_async import OAuthManager
from instantly_oauth_async._manager.fleet import Fleet
from instantly_oauth_async._manager.polling import PendingConnection
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.testing import SimulatorLimits


class OffsetClock:
    """What a host whose clock is wrong reads: ``offset`` seconds when it is made, then on at the
    host's pace. A negative offset reads negative, as a monotonic clock may (its reference point
    is undefined); offsetting the host's own reading would do so only while the machine's
    uptime is under the offset, which made the test's outcome depend on when it ran."""

    def __init__(self, offset: float) -> None:
        self.offset = offset - time.monotonic()

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def deadline(self, seconds: float) -> anyio.CancelScope:
        return anyio.CancelScope(deadline=anyio.current_time() + seconds)


def http_session(ip: str) -> aiohttp.ClientSession:
    """A client session whose connections leave from ``ip`` (any 127.x address on Linux)."""
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))
    if hasattr(session, "_retry_connection"):  # as the library's own: each request sent once
        session._retry_connection = False
    return session


def die_before_write() -> None:
    async def write(self: Fleet, *args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")  # pragma: no cover

    Fleet.write = write  # type: ignore[method-assign]


async def report(pending: PendingConnection) -> None:
    sid = pending.session.session_id
    try:
        result = await pending
    except Exception as exc:  # noqa: BLE001 - reported to the test, which judges it
        print("error", sid, type(exc).__name__, flush=True)
    else:
        print("result", sid, result.status.value, int(result.reconciled), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--attach", default="")
    parser.add_argument("--lease", type=float, required=True)
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--clock-offset", type=float, default=0.0)
    parser.add_argument("--expect-domain", default="")
    parser.add_argument("--die-before-write", action="store_true")
    parser.add_argument("--limits-factor", type=float, default=0.0,
                        help="the documented limits with durations divided by this (0: as "
                             "documented), and requests timing out as much sooner")
    args = parser.parse_args()
    limits: dict[str, Any] = {"poll_interval": 0.1}
    if args.limits_factor:
        limits = SimulatorLimits().compressed(args.limits_factor).manager_limits(poll_interval=0.1)
        limits["request_timeout"] = 30 / args.limits_factor
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.die_before_write:
        die_before_write()
    clock = OffsetClock(args.clock_offset)
    async with http_session(args.ip) as http, RedisStore.from_url(
        args.redis, clock=clock, retry_interval=0.2,
    ) as store, OAuthManager(
        os.environ["INSTANTLY_API_KEY"], base_url=args.base_url, store=store, clock=clock,
        session=http, fetch_account=False, session_lease=args.lease,
        status_timeout=args.lease / 4, **limits,
    ) as manager:
        pendings = []
        for i in range(args.count):
            email = f"p{i}@{args.expect_domain}" if args.expect_domain else None
            pending = await manager.start("google", expected_email=email)
            pendings.append(pending)
            print(pending.session.session_id, flush=True)
        pendings += [await manager.attach(sid) for sid in filter(None, args.attach.split(","))]
        print("ready", flush=True)
        async with anyio.create_task_group() as group:  # each outcome as this manager learns it
            for pending in pendings:
                group.start_soon(report, pending)
        await anyio.sleep(3600)  # until killed


if __name__ == "__main__":
    asyncio.run(main())
