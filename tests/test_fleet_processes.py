"""The fleet with real processes, real signals and a real redis-server (issue 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from instantly_oauth_async import OAuthManager, SessionStatus
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.testing import Simulator, SimulatorLimits
from tests._redis import RedisServer

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
LEASE = 1.5


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_sessions_of_an_owner_killed_9_are_adopted_and_resolved_once(
    redis_server: RedisServer,
) -> None:
    async with Simulator(limits=SimulatorLimits().compressed(20)) as sim:
        key = sim.add_workspace().api_key
        owner = subprocess.Popen(  # noqa: S603, ASYNC220 - our own worker, killed below
            [sys.executable, "-m", "tests._owner_worker", "--redis", redis_server.url,
             "--base-url", sim.url, "--count", "3", "--lease", str(LEASE)],
            cwd=ROOT, env={**os.environ, "INSTANTLY_API_KEY": key},
            stdout=subprocess.PIPE, text=True)
        try:
            assert owner.stdout is not None
            ids: list[str] = []
            with anyio.fail_after(30):
                while (line := await anyio.to_thread.run_sync(owner.stdout.readline)) \
                        and line.strip() != "ready":
                    ids.append(line.strip())
            assert len(ids) == 3
            async with RedisStore.from_url(redis_server.url) as store, OAuthManager(
                key, base_url=sim.url, store=store, poll_interval=0.1, fetch_account=False,
                session_lease=LEASE, status_timeout=LEASE / 4,
            ) as survivor:
                attached = [await survivor.attach(sid) for sid in ids]
                with anyio.fail_after(10):  # the owner reads them: a read of each was logged
                    await sim.wait_for(lambda: all(
                        any(r.kind == "status" and r.path.endswith(sid) for r in sim.requests)
                        for sid in ids))
                assert survivor.stats().requests == {}  # it waits; the owner polls
                owner.send_signal(signal.SIGKILL)
                owner.wait(timeout=10)
                for sid in ids:
                    sim.complete(sid, f"{sid[:8]}@acme.io")
                with anyio.fail_after(10 * LEASE):  # adopted within a lease and a beat or two
                    results = [await p for p in attached]
            assert [r.status for r in results] == [SessionStatus.SUCCESS] * 3
            consumed = [r for r in sim.requests if r.kind == "status" and r.status == 200]
            assert all(sum(1 for r in consumed if r.path.endswith(sid)) >= 1 for sid in ids)
            # each one-time answer was read once: no second reader got a 404
            assert not [r for r in sim.requests if r.kind == "status" and r.status == 404]
        finally:
            if owner.poll() is None:
                owner.kill()
                owner.wait(timeout=10)
            if owner.stdout is not None:
                owner.stdout.close()


async def test_an_owner_stopped_past_its_lease_is_fenced_out_when_it_wakes(
    redis_server: RedisServer,
) -> None:
    """SIGSTOP the owner past its lease: another manager adopts the session and reads its
    one-time answer; on SIGCONT the stale owner reads nothing (its lease has lapsed by the
    store's clock), its renew is refused, and it learns the stored outcome from the registry."""
    async with Simulator(limits=SimulatorLimits().compressed(20)) as sim:
        key = sim.add_workspace().api_key
        owner = subprocess.Popen(  # noqa: S603, ASYNC220 - our own worker, stopped below
            [sys.executable, "-m", "tests._owner_worker", "--redis", redis_server.url,
             "--base-url", sim.url, "--count", "1", "--lease", str(LEASE)],
            cwd=ROOT, env={**os.environ, "INSTANTLY_API_KEY": key},
            stdout=subprocess.PIPE, text=True)
        try:
            assert owner.stdout is not None
            stdout = owner.stdout
            with anyio.fail_after(30):
                sid = (await anyio.to_thread.run_sync(stdout.readline)).strip()
                assert (await anyio.to_thread.run_sync(stdout.readline)).strip() == "ready"
                await sim.wait_for(lambda: any(
                    r.kind == "status" and r.path.endswith(sid) for r in sim.requests))
            owner.send_signal(signal.SIGSTOP)
            async with RedisStore.from_url(redis_server.url) as store, OAuthManager(
                key, base_url=sim.url, store=store, poll_interval=0.1, fetch_account=False,
                session_lease=LEASE, status_timeout=LEASE / 4,
            ) as survivor:
                attached = await survivor.attach(sid)
                with anyio.fail_after(10 * LEASE):  # adopted once the lease lapsed
                    while sid not in survivor._poller.pending:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                sim.complete(sid, "ann@acme.io")
                with anyio.fail_after(10 * LEASE):
                    result = await attached
                assert result.status is SessionStatus.SUCCESS
                reads_before_wake = sum(1 for r in sim.requests
                                        if r.kind == "status" and r.path.endswith(sid))
                owner.send_signal(signal.SIGCONT)
                with anyio.fail_after(10 * LEASE):  # the woken owner learns the stored answer
                    line = (await anyio.to_thread.run_sync(stdout.readline)).split()
                assert line == ["result", sid, "success"]
            reads = [r for r in sim.requests if r.kind == "status" and r.path.endswith(sid)]
            assert len(reads) == reads_before_wake  # the stale owner read nothing on waking
            assert not [r for r in reads if r.status == 404]
        finally:
            if owner.poll() is None:
                owner.send_signal(signal.SIGCONT)
                owner.kill()
                owner.wait(timeout=10)
            if owner.stdout is not None:
                owner.stdout.close()
