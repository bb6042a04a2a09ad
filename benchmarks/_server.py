"""A simulator in its own process, so the process that measures holds only the client.

``python -m benchmarks._server`` prints one JSON line ``{"url": ..., "api_key": ...}`` and serves
until its stdin closes. Limits are raised out of the way (``--open``), kept as documented and
compressed (``--factor F``), or documented for the standard budget with the init limits out of
the way (``--open-inits``); ``--jitter J`` delays each request 0-J s each way; with ``--open``,
``--session-ttl S`` sets how long a session lives (a day by default). ``GET /bench/log``
returns ``[[at, status], ...]`` of the API requests served, in the server's time.
"""

from __future__ import annotations

import argparse
import json
import sys

import anyio
from aiohttp import web

from instantly_oauth_async.testing import Network, Simulator, SimulatorLimits

API_KEY = "bench_key_not_a_secret"
OPEN = 10**9


async def serve(factor: float, open_limits: bool, open_inits: bool, jitter: float,
                session_ttl: float) -> None:
    limits = SimulatorLimits().compressed(factor)
    if open_limits:
        limits = SimulatorLimits(init_per_workspace=OPEN, init_per_ip=OPEN, api_per_second=OPEN,
                                 api_per_minute=OPEN, session_ttl=session_ttl)
    elif open_inits:
        limits = SimulatorLimits(init_per_workspace=OPEN, init_per_ip=OPEN)
    sim = Simulator(limits=limits, network=Network(jitter=jitter, seed=1))

    async def complete(request: web.Request) -> web.Response:
        """Control channel for benchmarks: a person allows this session."""
        sid = request.match_info["sid"]
        sim.complete(sid, f"{sid[:12]}@bench.io")
        return web.Response(text="ok")

    async def log(request: web.Request) -> web.Response:
        """Control channel for benchmarks: what the server saw, and when."""
        served = [[r.at, r.status] for r in sim.requests if r.kind in ("init", "status")]
        return web.json_response(served)

    sim.app.router.add_post("/bench/complete/{sid}", complete)
    sim.app.router.add_get("/bench/log", log)
    async with sim:
        sim.add_workspace("bench", api_key=API_KEY)
        print(json.dumps({"url": sim.url, "api_key": API_KEY}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--open", action="store_true")
    parser.add_argument("--open-inits", action="store_true")
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--session-ttl", type=float, default=86400.0,
                        help="with --open: how long a session lives (seconds)")
    args = parser.parse_args()
    anyio.run(serve, args.factor, args.open, args.open_inits, args.jitter, args.session_ttl)


if __name__ == "__main__":
    main()
