"""A web app with a "Connect mailbox" button, on aiohttp, showing the result live.

    APP_PASSWORD=choose-one python examples/aiohttp_app.py [PORT]   # then open http://127.0.0.1:8080

Without INSTANTLY_API_KEY it runs against the built-in simulator, whose consent page stands in
for Google's. Sign in with any name and APP_PASSWORD; the button asks the app for a session,
opens its ``auth_url`` in a popup and listens on a server-sent-events stream that delivers the
result when the person is done.

Every session spends the workspace's init budget (75 a minute) and is polled until it ends, so
``POST /connect`` is guarded as a real app must guard it (``Connections``): only a signed-in user
may connect, a user gets at most one pending connection (asking again gives back the same one),
the pending connections are bounded in all, and each leaves as soon as its result is decided,
it fails or it expires. The sign-in itself (``Login``) is a stand-in for your app's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from instantly_oauth_async import InstantlyError, OAuthManager, PendingConnection
from instantly_oauth_async.testing import Simulator

# --- STAND-IN for your app's real sign-in: replace it with your own sessions or middleware ---
# Anyone who knows the shared APP_PASSWORD signs in under a name of their choice and gets a
# cookie "<name>.<HMAC of the name>", signed with a key made at start-up. Its one job here is to
# tell who is asking, so that a stranger cannot spend the workspace's init budget.

COOKIE = "user"
USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Login:
    def __init__(self, password: str) -> None:
        if not password:
            raise ValueError("the shared password must not be empty")
        self._password = password.encode()
        self._key = secrets.token_bytes(32)  # cookies end with the process

    def sign_in(self, user: str, password: str) -> str | None:
        """The cookie for ``user`` when ``password`` is right, else None."""
        if USER_NAME.fullmatch(user) and hmac.compare_digest(password.encode(), self._password):
            return f"{user}.{self._sign(user)}"
        return None

    def user_of(self, cookie: str | None) -> str | None:
        """Who a cookie belongs to, or None when the app did not sign it."""
        user, _, signature = (cookie or "").rpartition(".")
        if USER_NAME.fullmatch(user) and hmac.compare_digest(signature.encode(),
                                                             self._sign(user).encode()):
            return user
        return None

    def _sign(self, user: str) -> str:
        return hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()

# --- end of the stand-in ----------------------------------------------------------------------


class TooManyPending(Exception):
    """Every slot is taken: some sessions must end before another may start."""


class Connections:
    """The pending connections, one per user at most, ``limit`` in all, none kept once decided.

    An entry is the task that starts the user's session; a watcher awaits the session and drops
    the entry when its result is decided, it fails or it expires (the manager gives every session
    an end), so nothing here grows past ``limit``.
    """

    def __init__(self, manager: OAuthManager, *, limit: int = 100) -> None:
        self._manager = manager
        self._limit = limit
        self._starts: dict[str, asyncio.Task[PendingConnection]] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._starts)

    async def connect(self, user: str) -> PendingConnection:
        """The user's pending connection; a new session only when they have none."""
        start = self._starts.get(user)
        if start is None:
            if len(self._starts) >= self._limit:
                raise TooManyPending
            start = asyncio.create_task(self._manager.start("google", timeout=30))
            start.add_done_callback(lambda task: self._started(user, task))
            self._starts[user] = start
        return await asyncio.shield(start)  # a request that goes away leaves the start alone

    def get(self, user: str, session_id: str) -> PendingConnection | None:
        """The user's pending connection if it is ``session_id``."""
        start = self._starts.get(user)
        if start is None or not start.done() or start.cancelled() or start.exception():
            return None
        pending = start.result()
        return pending if pending.session.session_id == session_id else None

    def _started(self, user: str, start: asyncio.Task[PendingConnection]) -> None:
        if start.cancelled() or start.exception() is not None:
            self._forget(user, start)  # no session: the user may try again
            return
        watcher = asyncio.create_task(self._watch(user, start))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, user: str, start: asyncio.Task[PendingConnection]) -> None:
        with contextlib.suppress(InstantlyError):  # any end will do: the streams report it
            await start.result()
        self._forget(user, start)

    def _forget(self, user: str, start: asyncio.Task[PendingConnection]) -> None:
        if self._starts.get(user) is start:
            del self._starts[user]

    async def aclose(self) -> None:
        """Stop starting and polling: nobody is left to hear the results."""
        tasks = [*self._starts.values(), *self._watchers]
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                result = task.result()
                if isinstance(result, PendingConnection):
                    result.cancel()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._starts.clear()


LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
  <h1>Sign in</h1>
  <form method="post" action="/login">
    <label>Name <input id="user" name="user" autocomplete="username" required></label>
    <label>Password <input id="password" name="password" type="password"
                           autocomplete="current-password" required></label>
    <button id="sign-in" type="submit">Sign in</button>
  </form>
</body></html>
"""

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

LOGIN = web.AppKey("login", Login)
CONNECTIONS = web.AppKey("connections", Connections)


def user_of(request: web.Request) -> str | None:
    return request.app[LOGIN].user_of(request.cookies.get(COOKIE))


async def index(request: web.Request) -> web.Response:
    page = PAGE if user_of(request) else LOGIN_PAGE
    return web.Response(text=page, content_type="text/html")


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    cookie = request.app[LOGIN].sign_in(str(form.get("user", "")), str(form.get("password", "")))
    if cookie is None:
        raise web.HTTPForbidden(text="wrong name or password")
    response = web.Response(status=303, headers={"Location": "/"})
    # SameSite: another site's page cannot POST /connect as the user; add secure=True on HTTPS
    response.set_cookie(COOKIE, cookie, httponly=True, samesite="Lax")
    return response


async def connect(request: web.Request) -> web.Response:
    user = user_of(request)
    if user is None:
        raise web.HTTPUnauthorized(text="sign in first")
    try:
        pending = await request.app[CONNECTIONS].connect(user)
    except TooManyPending:
        raise web.HTTPServiceUnavailable(text="too many connections pending; try again later",
                                         headers={"Retry-After": "60"}) from None
    except InstantlyError as exc:  # typed: show the person something useful, log the rest
        raise web.HTTPServiceUnavailable(text=type(exc).__name__) from None
    return web.json_response({"session_id": pending.session.session_id,
                              "auth_url": pending.session.auth_url})


async def events(request: web.Request) -> web.StreamResponse:
    user = user_of(request)
    if user is None:
        raise web.HTTPUnauthorized(text="sign in first")
    pending = request.app[CONNECTIONS].get(user, request.match_info["session_id"])
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
    return response


def make_app(manager: OAuthManager, *, password: str, max_pending: int = 100) -> web.Application:
    """The app around a manager the caller opened (and will close). ``password`` is the stand-in
    sign-in's shared secret; ``max_pending`` bounds the pending connections of all users."""
    app = web.Application()
    app[LOGIN] = Login(password)
    app[CONNECTIONS] = Connections(manager, limit=max_pending)

    async def close_connections(app: web.Application) -> None:
        await app[CONNECTIONS].aclose()

    app.on_cleanup.append(close_connections)
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
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


async def main(password: str, port: int = 8080) -> None:
    async with manager_for_this_run() as (manager, where):
        runner = web.AppRunner(make_app(manager, password=password))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        port = runner.addresses[0][1]  # the one picked when asked for port 0
        print(f"http://127.0.0.1:{port} (sessions from {where}); Ctrl-C stops", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    if not os.environ.get("APP_PASSWORD"):
        sys.exit("set APP_PASSWORD: the password people sign in with (a stand-in for your app's)")
    asyncio.run(main(os.environ["APP_PASSWORD"], int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
