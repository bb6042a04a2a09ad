"""Row 5: worker processes sharing one workspace's init budget through a real redis-server.

Each worker (tests/_fleet_worker.py) bulk-connects its share and plays the person over HTTP;
the simulator (limits compressed) runs here. Utilisation is the ideal span over the span taken.
Redis round trips are counted by each worker's store (its budgets and its session registry share
them) and divided by the API requests the simulator saw (inits and status reads).

Three runs: 4 processes whose people answer at once (one status read a session: the registry's
two writes a session weigh most there), the same with people who take a second (about five
reads a session, as people do), and 16 processes (time compressed 6x rather than 10x).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import attrs

from instantly_oauth_async.testing import Simulator, SimulatorLimits

from ._common import Row, utilisation

ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class Fleet:
    ratio: float
    inits: int
    polls: int
    rejected: int
    trips: int

    @property
    def per_request(self) -> float:
        return self.trips / max(self.inits + self.polls, 1)


async def fleet(server_url: str, *, workers: int, each: int, factor: float,
                think: float = 0.0) -> Fleet:
    window = 60 / factor
    async with Simulator(limits=SimulatorLimits().compressed(factor)) as sim:
        workspace = sim.add_workspace("fleet")
        env = {**os.environ, "INSTANTLY_API_KEY": workspace.api_key, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "tests._fleet_worker", "--redis", server_url,
                "--base-url", sim.url, "--count", str(each), "--window", str(window),
                "--think", str(think)]
        reports: list[dict[str, object]] = []

        async def worker(i: int) -> None:
            done = await anyio.run_process([*argv, "--name", f"w{i}"], env=env, cwd=ROOT,
                                           stderr=subprocess.PIPE)
            reports.append(json.loads(done.stdout.decode().strip().splitlines()[-1]))

        with anyio.fail_after(900):
            async with anyio.create_task_group() as group:
                for i in range(workers):
                    group.start_soon(worker, i)
    times = sorted(t for ts in sim.init_times.values() for t in ts)
    steps: dict[str, int] = {}
    for r in reports:
        for k, v in dict(r["steps"]).items():  # type: ignore[call-overload]
            steps[k] = steps.get(k, 0) + int(v)
    if os.environ.get("IOX_STEPS"):
        print(f"{workers} workers, think {think}: steps {dict(sorted(steps.items()))}",
              file=sys.stderr)
    return Fleet(utilisation(times, 75, window), len(times),
                 sum(1 for r in sim.requests if r.kind == "status"),
                 sum(1 for r in sim.requests if r.status == 429),
                 sum(int(str(r["round_trips"])) for r in reports))


async def run(*, quick: bool) -> list[Row]:
    sys.path.insert(0, str(ROOT))
    from tests._redis import RedisServer  # noqa: PLC0415 - the tests' helper, from a checkout

    factor = 60.0 if quick else 10.0
    server = RedisServer()
    server.start()
    try:
        four = await fleet(server.url, workers=4, each=40 if quick else 150, factor=factor)
        thinking = await fleet(server.url, workers=4, each=10 if quick else 75, factor=factor,
                               think=0.1 if quick else 1.0)
        # 18 processes on this 2-core machine: time compressed 6x (a 10 s init window), so the
        # event loops' wake-up delays, which compression magnifies, weigh about as little as
        # they do in a fleet on its own cores.
        sixteen = await fleet(server.url, workers=4 if quick else 16, each=5 if quick else 40,
                              factor=factor if quick else 6.0)
    finally:
        server.close()

    def fill(f: Fleet, workers: int, goal: float) -> Row:
        return Row("5 fleet", f"{workers} processes, one workspace, Redis: {f.inits} inits, "
                   f"{f.rejected} x 429", f"{f.ratio:.1%} of allowed",
                   f">= {goal:.0%}, 0 x 429", f.ratio >= goal and f.rejected == 0)

    def trips(f: Fleet, what: str) -> Row:
        return Row("5 fleet", f"Redis round trips per API request, {what} "
                   f"({f.polls / max(f.inits, 1):.1f} reads a session)",
                   f"{f.per_request:.2f}", "<= 1.5", f.per_request <= 1.5)

    return [fill(four, 4, 0.95),
            trips(four, "4 processes, people answer at once"),
            trips(thinking, "4 processes, people take a second"),
            fill(sixteen, 4 if quick else 16, 0.98),
            trips(sixteen, f"{4 if quick else 16} processes, people answer at once")]
