"""The "Connect mailbox" app of aiohttp_app.py, in FastAPI (extra ``examples``).

    python examples/fastapi_app.py          # then open http://127.0.0.1:8000

The manager lives as long as the app (FastAPI's lifespan); the page and the flow are the same:
``POST /connect`` gives the ``auth_url``, ``GET /events/{session_id}`` streams the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, StreamingResponse

from examples.aiohttp_app import PAGE
from instantly_oauth_async import InstantlyError, OAuthManager, PendingConnection


def make_app(api_key: str, *, base_url: str | None = None, **manager_options: object) -> FastAPI:
    pending: dict[str, PendingConnection] = {}
    holder: list[OAuthManager] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        options = {"base_url": base_url} if base_url else {}
        async with OAuthManager(api_key, **options, **manager_options) as manager:  # type: ignore[arg-type]
            holder.append(manager)
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return PAGE

    @app.post("/connect")
    async def connect() -> dict[str, str]:
        try:
            p = await holder[0].start("google", timeout=30)
        except InstantlyError as exc:
            raise HTTPException(503, type(exc).__name__) from None
        pending[p.session.session_id] = p
        return {"session_id": p.session.session_id, "auth_url": p.session.auth_url}

    @app.get("/events/{session_id}")
    async def events(session_id: str) -> StreamingResponse:
        p = pending.get(session_id)
        if p is None:
            raise HTTPException(404)

        async def stream() -> AsyncIterator[bytes]:
            try:
                result = await p
                payload = {"ok": result.ok, "email": result.email,
                           "reason": result.error_description or result.status.value}
            except InstantlyError as exc:
                payload = {"ok": False, "email": None, "reason": type(exc).__name__}
            pending.pop(session_id, None)
            yield f"event: result\ndata: {json.dumps(payload)}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(make_app(os.environ["INSTANTLY_API_KEY"]), host="127.0.0.1", port=8000)
