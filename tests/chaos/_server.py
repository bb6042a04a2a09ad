"""The simulator in its own process, with the people and a control channel.

``python -m tests.chaos._server CONFIG_JSON`` prints one JSON line ``{"url": ...}`` and serves
until its stdin closes. Besides the API it serves, under ``/chaos/``:

- ``POST /chaos/hint`` ``{"sid", "email"}``: the expected_email a worker started a session with;
- ``POST /chaos/network`` ``{"latency", "jitter"}``: the API's delays on the wire, each way;
- ``GET /chaos/log``: every API request the server logged (``LoggedRequest`` as JSON);
- ``GET /chaos/truth``: what each person did (``_people.Person`` as JSON).

Status answers are lost on the wire at random (``Faults(reset_after=..., kinds={"status"})``:
the server acts, then drops the connection).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from instantly_oauth_async.testing import Faults, Network, Simulator

from ._config import API_KEY, Config
from ._people import People
from ._procs import spawn, stop


def _app_routes(sim: Simulator, people: People, config: Config) -> None:
    async def hint(request: web.Request) -> web.Response:
        body = await request.json()
        people.hint(str(body["sid"]), str(body["email"]))
        return web.Response(text="ok")

    async def network(request: web.Request) -> web.Response:
        body = await request.json()
        sim.network = Network(latency=float(body["latency"]), jitter=float(body["jitter"]),
                              seed=config.seed)
        return web.Response(text="ok")

    async def log(request: web.Request) -> web.Response:
        rows = [{"at": r.at, "kind": r.kind, "path": r.path, "status": r.status,
                 "outcome": r.outcome, "ip": r.ip, "received": r.received,
                 "answered": r.answered}
                for r in sim.requests if r.kind in ("init", "status", "account")]
        return web.json_response(rows)

    async def truth(request: web.Request) -> web.Response:
        return web.json_response(people.truth())

    sim.app.router.add_post("/chaos/hint", hint)
    sim.app.router.add_post("/chaos/network", network)
    sim.app.router.add_get("/chaos/log", log)
    sim.app.router.add_get("/chaos/truth", truth)


async def serve(config: Config) -> None:
    sim = Simulator(limits=config.limits(), faults=Faults(
        reset_after=config.wire_loss, kinds=frozenset({"status"}), seed=config.seed))
    people = People(sim, config.seed, config.ttl)
    _app_routes(sim, people, config)
    async with sim, anyio.create_task_group() as group:
        sim.add_workspace("chaos", api_key=API_KEY)
        group.start_soon(people.run)
        print(json.dumps({"url": sim.url}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin
        group.cancel_scope.cancel()


class SimProcess:
    """The parent's side: ``async with SimProcess(config) as sim: sim.url``."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def __aenter__(self) -> SimProcess:
        self._process = process = await spawn(
            [sys.executable, "-m", "tests.chaos._server", self._config.to_json()],
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = await process.stdout.readline()
        self.url = str(json.loads(line)["url"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            assert process.stdin is not None
            process.stdin.close()
            await stop(process, grace=10)

    async def _get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
            response.raise_for_status()
            return await response.json()

    async def post(self, path: str, body: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as http, \
                http.post(self.url + path, json=body) as response:
            response.raise_for_status()

    async def log(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._get("/chaos/log")
        return rows

    async def truth(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self._get("/chaos/truth")
        return rows


def main() -> None:
    anyio.run(serve, Config.from_json(sys.argv[1]))


if __name__ == "__main__":
    main()
