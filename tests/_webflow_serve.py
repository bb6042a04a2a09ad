"""Serving a ConnectFlow on loopback for the tests: a minimal app of each framework around it
(aiohttp, and Starlette under a real uvicorn), whose "who is signed in" is the ``X-User``
header (a stand-in: the flow only ever asks the app's own callable)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Mount

from instantly_oauth_async.web import ConnectFlow
from instantly_oauth_async.web import aiohttp as flow_aiohttp
from instantly_oauth_async.web import asgi as flow_asgi


def user_of(request: Any) -> str | None:
    user: str | None = request.headers.get("X-User")
    return user


async def async_user_of(request: Any) -> str | None:  # a coroutine function works as well
    return user_of(request)


@asynccontextmanager
async def served(kind: str, flow: ConnectFlow, *, prefix: str = "") -> AsyncIterator[str]:
    """``flow`` served at ``prefix`` by a fresh app of ``kind``; yields the base URL."""
    if kind == "aiohttp":
        app = web.Application()
        if prefix:
            app.add_subapp(prefix, flow_aiohttp.connect_app(flow, user_of=async_user_of))
        else:
            flow_aiohttp.install(app, flow, user_of=user_of)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()
        return
    routes = flow_asgi.connect_routes(lambda: flow, user_of=async_user_of if prefix else user_of)
    star = Starlette(routes=[Mount(prefix, routes=routes)] if prefix else routes)
    server = uvicorn.Server(uvicorn.Config(star, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    listener = socket.create_server(("127.0.0.1", 0))  # listening now: requests wait in backlog
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [listener])
            try:
                yield f"http://127.0.0.1:{listener.getsockname()[1]}"
            finally:
                flow.end_streams()
                server.should_exit = True
    finally:
        listener.close()
