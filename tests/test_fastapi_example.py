"""The FastAPI example served by a real uvicorn on loopback, driven over HTTP."""

from __future__ import annotations

import json
import socket

import aiohttp
import anyio
import pytest
import uvicorn

from examples.fastapi_app import make_app
from instantly_oauth_async.testing import Simulator

pytestmark = pytest.mark.anyio


async def test_connect_then_the_event_stream_says_connected(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    app = make_app(workspace.api_key, base_url=sim.url, poll_interval=0.05)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    listener = socket.create_server(("127.0.0.1", 0))  # listening now: requests wait in backlog
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [listener])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/") as page:
                assert "Connect mailbox" in await page.text()
            async with http.post(f"{base}/connect") as answer:
                session = await answer.json()
            sim.complete(sim.session_for(session["auth_url"]).session_id, "ann@acme.io")
            with anyio.fail_after(10):
                async with http.get(f"{base}/events/{session['session_id']}") as stream:
                    body = (await stream.read()).decode()
        server.should_exit = True
    listener.close()
    data = json.loads(body.split("data: ", 1)[1])
    assert data == {"ok": True, "email": "ann@acme.io", "reason": "success"}
