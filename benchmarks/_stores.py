"""Row 9: SQLiteStore beside RedisStore (issue 22), in one run, at the documented limits.

Fleets: 4 and then 16 worker processes (``benchmarks/_store_worker.py``) on one host share one
workspace through one store: a SQLite file, then a real redis-server on loopback. The simulator
(this process) keeps the documented limits, not compressed (``--quick``: 60x), and each fleet
wants 150 Google sessions: two windows' worth, so the ideal span from the first init to the
last is one window (60 s). Every worker opens its store and manager, then waits at a barrier:
all start together, so no process's start-up counts as rate lost. Each person answers at once
(one status read a session, at the default 5 s poll interval).

From the same fleets: each store's decisions made by all workers after the barrier (a
transaction on SQLite; a script step on Redis, beside its round trips), per API request the
simulator saw (inits and status reads), and their latency as the event loop awaited them.

Watchers: an owner process starts 60 sessions (10 quick) and polls them; a watcher process
``attach()``-es each and awaits its result; this process completes the sessions at random
moments (uniform gaps of 0-100 ms). The delay runs from the moment the owner begins the write of
an outcome to the registry to the moment the watcher's ``await pending.result()`` returns
(CLOCK_MONOTONIC in both). SQLite has no pub/sub: its watchers poll the file every 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import anyio
import attrs

from instantly_oauth_async.testing import Simulator, SimulatorLimits

from ._common import Row, percentile, utilisation

ROOT = Path(__file__).resolve().parent.parent
#: Two windows' worth of inits: one window is the ideal span (the minimum for a rate figure).
INITS = 150
BENCH = "9 stores"


class Child:
    """A worker process, its stdout read line by line; its stderr kept in a file, shown when
    it fails."""

    def __init__(self, process: asyncio.subprocess.Process, err: IO[bytes]) -> None:
        self.process = process
        self.err = err

    @classmethod
    async def spawn(cls, argv: Sequence[str], env: dict[str, str], err_path: Path) -> Child:
        from tests._redis import _die_with_parent  # noqa: PLC0415 - the tests' helper

        err = err_path.open("w+b")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks._store_worker", *argv, env=env, cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
                preexec_fn=_die_with_parent,  # one prctl call, no locks taken
                limit=1 << 24,  # the fleet report's line holds every latency
            )
        except BaseException:
            err.close()
            raise
        return cls(process, err)

    def _failed(self, what: str) -> AssertionError:
        self.err.flush()
        self.err.seek(0)
        tail = self.err.read().decode(errors="replace")[-3000:]
        return AssertionError(f"worker {self.process.pid}: {what}\n{tail}")

    async def line(self) -> str:
        assert self.process.stdout is not None
        text = (await self.process.stdout.readline()).decode().strip()
        if not text:
            await self.process.wait()
            raise self._failed("ended early")
        return text

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())
        await self.process.stdin.drain()

    async def report(self) -> dict[str, Any]:
        """Close stdin, then the last line: the worker's JSON report."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        out, _ = await self.process.communicate()
        if self.process.returncode != 0:
            raise self._failed(f"exit status {self.process.returncode}")
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result


@asynccontextmanager
async def children() -> AsyncIterator[list[Child]]:
    """The workers started inside: killed (by PID) and reaped at the end, whatever happened."""
    started: list[Child] = []
    try:
        yield started
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            for child in started:
                if child.process.returncode is None:
                    child.process.kill()
            for child in started:
                await child.process.wait()
                if child.process.stdin is not None:
                    child.process.stdin.close()
                child.err.close()


@attrs.frozen
class Fleet:
    store: str
    workers: int
    ratio: float
    inits: int
    polls: int
    rejected: int
    decisions: int
    trips: int
    took: list[float]
    #: seconds from the first init to the last of the first window's (where the rate is lost:
    #: the second window's last init goes a window after the first window's last slot ended)
    burst: float

    def per_request(self, count: int) -> float:
        return count / max(self.inits + self.polls, 1)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


async def fleet(store: str, spec: str, *, workers: int, factor: float, folder: str) -> Fleet:
    window = 60 / factor
    async with Simulator(limits=SimulatorLimits().compressed(factor)) as sim, \
            children() as started:
        workspace = sim.add_workspace("stores")
        env = {**os.environ, "INSTANTLY_API_KEY": workspace.api_key, "PYTHONPATH": str(ROOT)}
        for i, count in enumerate(_split(INITS, workers)):
            started.append(await Child.spawn(
                ["fleet", "--store", spec, "--base-url", sim.url, "--factor", str(factor),
                 "--count", str(count), "--name", f"w{i}"], env,
                Path(folder) / f"{store}-{workers}-{i}.err"))
        with anyio.fail_after(120):
            for child in started:
                if (said := await child.line()) != "ready":
                    raise AssertionError(f"a worker said {said!r}, not ready")
        for child in started:
            await child.send("go")
        with anyio.fail_after(3 * window + 120):
            reports = [await child.report() for child in started]
    times = sorted(t for ts in sim.init_times.values() for t in ts)
    return Fleet(store, workers, utilisation(times, 75, window), len(times),
                 sum(1 for r in sim.requests if r.kind == "status"),
                 sum(1 for r in sim.requests if r.status == 429),
                 sum(int(r["decisions"]) for r in reports),
                 sum(int(r["trips"]) for r in reports),
                 [float(t) for r in reports for t in r["took"]],
                 times[min(74, len(times) - 1)] - times[0] if times else 0.0)


async def watchers(spec: str, *, count: int, factor: float, folder: str, seed: int
                   ) -> list[float]:
    """Seconds from the owner's write of each outcome to the watcher's result."""
    rng = random.Random(seed)
    decided: dict[str, float] = {}
    seen: dict[str, float] = {}
    async with Simulator(limits=SimulatorLimits().compressed(factor)) as sim, \
            children() as started:
        workspace = sim.add_workspace("watch")
        env = {**os.environ, "INSTANTLY_API_KEY": workspace.api_key, "PYTHONPATH": str(ROOT)}
        common = ["--store", spec, "--base-url", sim.url, "--factor", str(factor)]
        tag = spec.split(":", maxsplit=1)[0]
        owner = await Child.spawn(["owner", *common, "--count", str(count)], env,
                                  Path(folder) / f"owner-{tag}.err")
        started.append(owner)
        watcher = await Child.spawn(["watch", *common], env, Path(folder) / f"watch-{tag}.err")
        started.append(watcher)
        with anyio.fail_after(120):
            ids = [(await owner.line()).removeprefix("session ") for _ in range(count)]
            if (said := await owner.line()) != "ready":
                raise AssertionError(f"the owner said {said!r}, not ready")
            for sid in ids:
                await watcher.send(sid)
                if (said := await watcher.line()) != f"attached {sid}":
                    raise AssertionError(f"the watcher said {said!r}")

        async def owner_lines() -> None:
            for _ in range(10 * count):  # bounded: at most a few writes a session
                word, sid, at = (await owner.line()).split()
                if word == "decided" and sid in ids:
                    decided.setdefault(sid, float(at))
                if len(decided) == count:
                    return

        async def watcher_lines() -> None:
            for _ in range(count):
                word, sid, at, status = (await watcher.line()).split()
                if (word, status) != ("seen", "success"):
                    raise AssertionError(f"the watcher said {word} {sid} {status}")
                seen[sid] = float(at)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                group.start_soon(owner_lines)
                group.start_soon(watcher_lines)
                for sid in ids:
                    await anyio.sleep(rng.uniform(0.0, 0.1))  # a person answers
                    sim.complete(sid, f"{sid[:12]}@watch.io")
            await owner.report()
            await watcher.report()
    return [seen[sid] - decided[sid] for sid in ids]


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.2f}"


async def run(*, quick: bool) -> list[Row]:
    sys.path.insert(0, str(ROOT))
    from tests._redis import RedisServer  # noqa: PLC0415 - the tests' helper, from a checkout

    factor = 60.0 if quick else 1.0
    sizes = (2, 4) if quick else (4, 16)
    watched = 10 if quick else 60
    fleets: list[Fleet] = []
    delays: dict[str, list[float]] = {}
    server = RedisServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="iox-stores-") as folder:
            for workers in sizes:
                db = Path(folder) / f"fleet-{workers}.db"
                fleets.append(await fleet("SQLite", f"sqlite:{db}", workers=workers,
                                          factor=factor, folder=folder))
                fleets.append(await fleet("Redis", server.url, workers=workers, factor=factor,
                                          folder=folder))
            for store, spec in (("SQLite", f"sqlite:{Path(folder) / 'watch.db'}"),
                                ("Redis", server.url)):
                delays[store] = await watchers(spec, count=watched, factor=factor,
                                               folder=folder, seed=9)
    finally:
        server.close()

    rows = [Row(BENCH, f"{f.workers} processes, one workspace, {f.store}: {f.inits} inits, "
                f"{f.rejected} x 429; the first 75 sent in {f.burst:.2f} s",
                f"{f.ratio:.1%} of allowed", ">= 98%, 0 x 429",
                f.ratio >= 0.98 and f.rejected == 0) for f in fleets]
    for f in fleets:
        if f.store == "SQLite":
            what = (f"{f.workers} processes, SQLite: a decision (one transaction) p50 / p99; "
                    "decisions per API request")
            per = f"{f.per_request(f.decisions):.2f}"
        else:
            what = (f"{f.workers} processes, Redis: a decision (one script step, awaited) "
                    "p50 / p99; decisions (round trips) per API request")
            per = f"{f.per_request(f.decisions):.2f} ({f.per_request(f.trips):.2f})"
        rows.append(Row(BENCH, what, f"{_ms(f.took, 50)} / {_ms(f.took, 99)} ms; {per}"))
    for store, late in delays.items():
        sqlite = store == "SQLite"
        rows.append(Row(
            BENCH, f"attach() in another process, {store}: owner's write to the awaiter's "
            f"result, p50 / p99 ({len(late)} outcomes)",
            f"{_ms(late, 50)} / {_ms(late, 99)} ms", "p99 <= 250 ms" if sqlite else "",
            percentile(late, 99) <= 0.25 if sqlite else None))
    return rows
