"""Row 5: four worker processes sharing one workspace's init budget through a real redis-server.

Each worker (tests/_fleet_worker.py) bulk-connects its share and plays the person over HTTP;
the simulator (limits compressed) runs here. Utilisation is the ideal span over the span taken.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio

from instantly_oauth_async.testing import Simulator, SimulatorLimits

from ._common import Row, utilisation

ROOT = Path(__file__).resolve().parent.parent


async def run(*, quick: bool) -> list[Row]:
    sys.path.insert(0, str(ROOT))
    from tests._redis import RedisServer  # noqa: PLC0415 - the tests' helper, from a checkout

    factor, each, workers = (60.0, 40, 4) if quick else (10.0, 150, 4)
    window = 60 / factor
    server = RedisServer()
    server.start()
    try:
        async with Simulator(limits=SimulatorLimits().compressed(factor)) as sim:
            workspace = sim.add_workspace("fleet")
            env = {**os.environ, "INSTANTLY_API_KEY": workspace.api_key, "PYTHONPATH": str(ROOT)}
            argv = [sys.executable, "-m", "tests._fleet_worker", "--redis", server.url,
                    "--base-url", sim.url, "--count", str(each), "--window", str(window)]
            reports: list[dict[str, object]] = []

            async def worker(i: int) -> None:
                done = await anyio.run_process([*argv, "--name", f"w{i}"], env=env, cwd=ROOT,
                                               stderr=subprocess.PIPE)
                reports.append(json.loads(done.stdout.decode().strip().splitlines()[-1]))

            with anyio.fail_after(600):
                async with anyio.create_task_group() as group:
                    for i in range(workers):
                        group.start_soon(worker, i)
    finally:
        server.close()
    times = sorted(t for ts in sim.init_times.values() for t in ts)
    rejected = sum(1 for r in sim.requests if r.status == 429)
    ratio = utilisation(times, 75, window)
    trips = sum(int(str(r["round_trips"])) for r in reports)
    by: dict[str, int] = {}
    for r in reports:
        for k, v in dict(r.get("steps", {})).items():  # type: ignore[call-overload]
            by[k] = by.get(k, 0) + int(v)
    if os.environ.get("IOX_TRIPS"):
        print("trips by script:", dict(sorted(by.items())), "inits", len(times),
              "polls", sum(1 for r in sim.requests if r.kind == "status"), file=sys.stderr)
    polls = sum(1 for r in sim.requests if r.kind == "status")
    return [Row("5 fleet", f"{workers} processes, one workspace, Redis: {len(times)} inits, "
                f"{rejected} x 429", f"{ratio:.1%} of allowed", ">= 95%, 0 x 429",
                ratio >= 0.95 and rejected == 0),
            Row("5 fleet", "Redis round trips per request sent (inits and polls)",
                f"{trips / max(len(times) + polls, 1):.2f}", "")]
