"""A web app with a "Connect mailbox" button, on aiohttp, showing the result live.

    python examples/aiohttp_app.py          # then open http://127.0.0.1:8080

Without INSTANTLY_API_KEY it runs against the built-in simulator, whose consent page stands in
for Google's. The button asks the app for a session, opens its ``auth_url`` in a popup and
listens on a server-sent-events stream that delivers the result when the person is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator

from aiohttp import web

from instantly_oauth_async import InstantlyError, OAuthManager, PendingConnection
from instantly_oauth_async.testing import Simulator

MANAGER = web.AppKey("manager", OAuthManager)
PENDING = web.AppKey("pending", dict[str, PendingConnection])

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Connect a mailbox</title></head>
<body>
  <h1>Connect a mailbox</h1>
  <button id="connect">Connect mailbox</button>
  <p id="result" aria-live="polite"></p>
  <script>
    document.getElementById("connect").onclick = async () => {
      const popup = window.open("", "consent");  // opened now: a click may open windows
      const answer = await fetch("/connect", {method: "POST"});
      if (!answer.ok) { popup.close(); result.textContent = "Could not start"; return; }
      const session = await answer.json();
      popup.location = session.auth_url;
      result.textContent = "Waiting for you to allow access...";
      const events = new EventSource(`/events/${session.session_id}`);
      events.addEventListener("result", (event) => {
        const r = JSON.parse(event.data);
        result.textContent = r.ok ? `Connected ${r.email}` : `Not connected: ${r.reason}`;
        events.close();
      });
    };
  </script>
</body></html>
"""


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def connect(request: web.Request) -> web.Response:
    try:
        pending = await request.app[MANAGER].start("google", timeout=30)
    except InstantlyError as exc:  # typed: show the person something useful, log the rest
        raise web.HTTPServiceUnavailable(text=type(exc).__name__) from None
    request.app[PENDING][pending.session.session_id] = pending
    return web.json_response({"session_id": pending.session.session_id,
                              "auth_url": pending.session.auth_url})


async def events(request: web.Request) -> web.StreamResponse:
    pending = request.app[PENDING].get(request.match_info["session_id"])
    if pending is None:
        raise web.HTTPNotFound
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        result = await pending  # shared: any number of tabs may wait on one session
        payload = {"ok": result.ok, "email": result.email,
                   "reason": result.error_description or result.status.value}
    except InstantlyError as exc:
        payload = {"ok": False, "email": None, "reason": type(exc).__name__}
    await response.write(f"event: result\ndata: {json.dumps(payload)}\n\n".encode())
    request.app[PENDING].pop(pending.session.session_id, None)
    return response


def make_app(manager: OAuthManager) -> web.Application:
    """The app around a manager the caller opened (and will close)."""
    app = web.Application()
    app[MANAGER] = manager
    app[PENDING] = {}
    app.router.add_get("/", index)
    app.router.add_post("/connect", connect)
    app.router.add_get("/events/{session_id}", events)
    return app


@contextlib.asynccontextmanager
async def manager_for_this_run() -> AsyncIterator[tuple[OAuthManager, str]]:
    """The real API with INSTANTLY_API_KEY; otherwise the simulator. Yields (manager, where)."""
    key = os.environ.get("INSTANTLY_API_KEY")
    if key:
        async with OAuthManager(key) as manager:
            yield manager, "the Instantly API"
        return
    async with Simulator() as sim:
        workspace = sim.add_workspace("example")
        async with OAuthManager(workspace.api_key, base_url=sim.url, poll_interval=1) as manager:
            yield manager, f"the simulator at {sim.url}"


async def main(port: int = 8080) -> None:
    async with manager_for_this_run() as (manager, where):
        runner = web.AppRunner(make_app(manager))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"http://127.0.0.1:{port} (sessions from {where}); Ctrl-C stops")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
