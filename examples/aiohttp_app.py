"""A web app with a "Connect mailbox" button, on aiohttp, showing the result live: one process,
or many workers sharing a Redis.

    APP_PASSWORD=choose-one python examples/aiohttp_app.py [PORT]   # then open http://127.0.0.1:8080

Without INSTANTLY_API_KEY it runs against the built-in simulator, whose consent page stands in
for Google's. Sign in with any name and APP_PASSWORD; the button asks the app for a session,
opens its ``auth_url`` in a popup and listens on a server-sent-events stream that delivers the
result when the person is done.

Many workers, as a real deployment runs it: give each the same INSTANTLY_API_KEY, APP_PASSWORD
and Redis (``--redis URL``, or REDIS_URL), a port of its own, and put your load balancer in front
(no sticky sessions needed)::

    export INSTANTLY_API_KEY=... APP_PASSWORD=choose-one REDIS_URL=redis://10.0.0.5:6379/0
    python examples/aiohttp_app.py --host 0.0.0.0 8081 &
    python examples/aiohttp_app.py --host 0.0.0.0 8082 &

The pages that name a session (``/events/{id}``, ``/result/{id}``) find it with
``manager.attach(session_id)``, so any worker answers for a session any worker started, and no
worker keeps anything the others need. A worker that stops hands its sessions over: at once on
SIGTERM (a restart, a deploy), ``--session-lease`` seconds (15) after a crash; the event stream
of the person's page then reconnects, to any worker, and still gets the result.

Every session spends the workspace's init budget (75 a minute) and is polled until it ends, so
``POST /connect`` is guarded as a real app must guard it (``Connections``): only a signed-in user
may connect, a user gets at most one pending connection (asking again gives back the same one),
the pending connections are bounded in all, and each leaves as soon as its result is decided,
it fails or it expires. That guard lives in each worker's memory: with N workers a user may hold
up to N pending connections, and ``max_pending`` bounds each worker. The sign-in itself
(``Login``) is a stand-in for your app's own; ``/events`` and ``/result`` links carry a tag it
signs, so only the user who started a session may watch it, on any worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

from aiohttp import web

from instantly_oauth_async import (
    InstantlyError,
    OAuthManager,
    PendingConnection,
    Store,
    UnknownSessionError,
)
from instantly_oauth_async.testing import Simulator

# --- STAND-IN for your app's real sign-in: replace it with your own sessions or middleware ---
# Anyone who knows the shared APP_PASSWORD signs in under a name of their choice and gets a
# cookie "<name>.<HMAC of the name>", signed with a key derived from the password: so every worker
# given that password accepts the others' cookies, and they outlive a restart (a real app keeps a
# secret of its own for this). Its one job here is to tell who is asking, so that a stranger
# cannot spend the workspace's init budget.

COOKIE = "user"
USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Login:
    def __init__(self, password: str) -> None:
        if not password:
            raise ValueError("the shared password must not be empty")
        self._password = password.encode()
        self._key = hashlib.pbkdf2_hmac("sha256", self._password, b"example cookies", 100_000)

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

    def tag(self, user: str, session_id: str) -> str:
        """What a link to ``session_id`` carries to show that ``user`` started it."""
        return self._sign(f"{user}/{session_id}")  # a user name has no "/": never a cookie's

    def tagged(self, user: str, session_id: str, tag: str) -> bool:
        return hmac.compare_digest(tag.encode(), self.tag(user, session_id).encode())

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

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
      const events = new EventSource(session.events_url);  // reconnects by itself
      events.addEventListener("result", (event) => {
        const r = JSON.parse(event.data);
        result.textContent = r.ok ? `Connected ${r.email}` : `Not connected: ${r.reason}`;
        events.close();
      });
    };
  </script>
</body></html>
"""

RESULT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Connecting a mailbox</title></head>
<body>
  <h1>Connecting a mailbox</h1>
  <p id="result" aria-live="polite">Waiting for you to allow access...</p>
  <script>
    const stream = location.pathname.replace("/result/", "/events/") + location.search;
    const events = new EventSource(stream);  // this worker or, when it goes, another
    events.addEventListener("result", (event) => {
      const r = JSON.parse(event.data);
      result.textContent = r.ok ? `Connected ${r.email}` : `Not connected: ${r.reason}`;
      events.close();
    });
  </script>
</body></html>
"""

NOT_FOUND_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>No such session</title></head>
<body><h1>No such session</h1>
<p id="not-found">This link names no session of yours: it may be mistyped, belong to someone
else, or have ended long ago. Connect again from <a href="/">the start page</a>.</p>
</body></html>
"""


class Watching:
    """The sessions this worker's pages wait on, one handle each, from ``manager.attach()``: a
    session any worker started, found in the store's registry (the ``PendingConnection`` itself
    when this worker polls it). Only a cache, so that many pages share one handle: any worker can
    attach again. At most ``limit`` handles; decided ones make room for new ones."""

    def __init__(self, manager: OAuthManager, *, limit: int = 1000) -> None:
        self._manager = manager
        self._limit = limit
        self._handles: dict[str, PendingConnection] = {}

    async def attach(self, session_id: str) -> PendingConnection:
        """Raises ``UnknownSessionError`` for an id no worker registered (or long decided)."""
        pending = self._handles.get(session_id)
        if pending is None:
            if len(self._handles) >= self._limit:
                self._handles = {k: p for k, p in self._handles.items() if not p.done()}
                if len(self._handles) >= self._limit:
                    raise TooManyPending
            pending = await self._manager.attach(session_id)
            pending = self._handles.setdefault(session_id, pending)
        return pending


LOGIN = web.AppKey("login", Login)
CONNECTIONS = web.AppKey("connections", Connections)
WATCHING = web.AppKey("watching", Watching)
CLOSING = web.AppKey("closing", asyncio.Event)


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
    session_id = pending.session.session_id
    tagged = f"{quote(session_id, safe='')}?tag={request.app[LOGIN].tag(user, session_id)}"
    return web.json_response({"session_id": session_id, "auth_url": pending.session.auth_url,
                              "events_url": f"/events/{tagged}",  # served by any worker
                              "result_url": f"/result/{tagged}"})


async def watched(request: web.Request) -> PendingConnection:
    """The session the URL names, when the signed-in user started it; from any worker."""
    user = user_of(request)
    if user is None:
        raise web.HTTPUnauthorized(text="sign in first")
    session_id = request.match_info["session_id"]
    if not request.app[LOGIN].tagged(user, session_id, request.query.get("tag", "")):
        raise web.HTTPNotFound(text=NOT_FOUND_PAGE, content_type="text/html")
    try:
        return await request.app[WATCHING].attach(session_id)
    except UnknownSessionError:
        raise web.HTTPNotFound(text=NOT_FOUND_PAGE, content_type="text/html") from None
    except TooManyPending:
        raise web.HTTPServiceUnavailable(text="too many sessions watched; try again later",
                                         headers={"Retry-After": "10"}) from None
    except InstantlyError as exc:  # the store is away: the browser will ask again
        raise web.HTTPServiceUnavailable(text=type(exc).__name__) from None


async def result_page(request: web.Request) -> web.Response:
    await watched(request)  # a clear 404 page for a session that is not there
    return web.Response(text=RESULT_PAGE, content_type="text/html")


async def events(request: web.Request) -> web.StreamResponse:
    pending = await watched(request)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    # A stream cut short (this worker stops or dies) is opened again by the browser after
    # this many milliseconds, on whichever worker then answers.
    await response.write(b"retry: 1000\n\n")
    outcome = asyncio.ensure_future(payload_of(pending))  # shared: many tabs may wait on one
    closing = asyncio.ensure_future(request.app[CLOSING].wait())
    try:
        await asyncio.wait((outcome, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (outcome, closing):
            task.cancel()
        await asyncio.gather(outcome, closing, return_exceptions=True)
    if outcome.cancelled():  # this worker is stopping: end the stream, the browser asks again
        return response
    payload = outcome.result()
    await response.write(f"event: result\ndata: {json.dumps(payload)}\n\n".encode())
    return response


async def payload_of(pending: PendingConnection) -> dict[str, Any]:
    try:
        result = await pending
    except InstantlyError as exc:
        return {"ok": False, "email": None, "reason": type(exc).__name__}
    return {"ok": result.ok, "email": result.email,
            "reason": result.error_description or result.status.value}


def make_app(manager: OAuthManager, *, password: str, max_pending: int = 100) -> web.Application:
    """The app around a manager the caller opened (and will close). ``password`` is the stand-in
    sign-in's shared secret; ``max_pending`` bounds the pending connections of all users."""
    app = web.Application()
    app[LOGIN] = Login(password)
    app[CONNECTIONS] = Connections(manager, limit=max_pending)
    app[WATCHING] = Watching(manager)
    app[CLOSING] = asyncio.Event()

    async def end_streams(app: web.Application) -> None:  # first: the streams end, no result
        app[CLOSING].set()

    async def close_connections(app: web.Application) -> None:
        await app[CONNECTIONS].aclose()

    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(close_connections)
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    app.router.add_post("/connect", connect)
    app.router.add_get("/events/{session_id}", events)
    app.router.add_get("/result/{session_id}", result_page)
    return app


@contextlib.asynccontextmanager
async def manager_for_this_run(args: argparse.Namespace) -> AsyncIterator[tuple[OAuthManager,
                                                                                 str]]:
    """The real API with INSTANTLY_API_KEY (``--base-url``: another server, a staging one or a
    simulator of your own); otherwise the built-in simulator. Yields (manager, where)."""
    lease = args.session_lease
    options: dict[str, Any] = {"session_lease": lease, "status_timeout": min(5.0, lease / 4)}
    if args.poll_interval is not None:
        options["poll_interval"] = args.poll_interval
    key = os.environ.get("INSTANTLY_API_KEY")
    if not key:
        if args.redis:  # each worker would have a simulator of its own: nothing to share
            sys.exit("--redis needs INSTANTLY_API_KEY: the built-in simulator lives in one process")
        async with Simulator() as sim:
            workspace = sim.add_workspace("example")
            options = {"poll_interval": 1, **options}
            async with OAuthManager(workspace.api_key, base_url=sim.url, **options) as manager:
                yield manager, f"the simulator at {sim.url}"
        return
    if args.base_url:
        options["base_url"] = args.base_url
    where = args.base_url or "the Instantly API"
    async with contextlib.AsyncExitStack() as stack:
        store: Store | None = None
        if args.redis:  # every worker with the same Redis: one budget, one session registry
            from instantly_oauth_async.redis import RedisStore  # noqa: PLC0415 - extra "redis"

            store = await stack.enter_async_context(RedisStore.from_url(args.redis))
            where += ", shared through Redis"
        manager = await stack.enter_async_context(OAuthManager(key, store=store, **options))
        yield manager, where


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The Connect mailbox web app (aiohttp).")
    parser.add_argument("port", nargs="?", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (0.0.0.0 behind a load balancer on another host)")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL") or None,
                        help="a Redis every worker shares (default: REDIS_URL; none: one process)")
    parser.add_argument("--session-lease", type=float, default=15.0,
                        help="seconds after a crash before another worker takes its sessions over")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="seconds between status reads of a session (default 5)")
    parser.add_argument("--base-url", default=None, help="another API server than Instantly's")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace, password: str) -> None:
    async with manager_for_this_run(args) as (manager, where):
        runner = web.AppRunner(make_app(manager, password=password), shutdown_timeout=5)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        port = runner.addresses[0][1]  # the one picked when asked for port 0
        print(f"http://{args.host}:{port} (sessions from {where}); Ctrl-C stops", flush=True)
        stopping = asyncio.Event()
        with contextlib.suppress(NotImplementedError):  # not on Windows: Ctrl-C still works
            # SIGTERM (a restart, a deploy): hand the sessions to the other workers at once.
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        try:
            await stopping.wait()
        finally:
            await runner.cleanup()  # then the manager closes and releases its sessions


if __name__ == "__main__":
    if not os.environ.get("APP_PASSWORD"):
        sys.exit("set APP_PASSWORD: the password people sign in with (a stand-in for your app's)")
    asyncio.run(main(parse_args(), os.environ["APP_PASSWORD"]))
