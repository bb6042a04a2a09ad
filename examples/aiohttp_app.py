"""A web app with a "Connect mailbox" button, on aiohttp, showing the result live: one process,
or many workers sharing a SQLite file (one host) or a Redis (many hosts).

    APP_PASSWORD=choose-one python examples/aiohttp_app.py [PORT]   # then open http://127.0.0.1:8080

Without INSTANTLY_API_KEY it runs against the built-in simulator, whose consent page stands in
for Google's. Sign in with any name and APP_PASSWORD; the button asks the app for a session,
opens its ``auth_url`` in a popup and listens on a server-sent-events stream that delivers the
result when the person is done.

The flow itself (``POST /connect``, ``GET /events/{id}``, ``GET /result/{id}``) is the library's
``instantly_oauth_async.web.aiohttp``, mounted with ``connect_routes``: only a signed-in user may
connect, a user holds one pending connection (asking again gives back the same one), at most
``max_pending`` are pending in all, each leaves once its session is decided, and the links it
hands out are signed for their user. That guard lives in the store, so it holds across workers.

With INSTANTLY_API_KEY set, ``OAuthManager.from_env()`` reads the configuration: the key, and
INSTANTLY_BASE_URL, INSTANTLY_WORKSPACE and INSTANTLY_STORE when set (INSTANTLY_STORE or
INSTANTLY_BASE_URL without the key is refused: the simulator lives in one process). Many workers,
as a real deployment runs them: give each the same INSTANTLY_API_KEY, APP_PASSWORD and
INSTANTLY_STORE, and a port of its own, behind your load balancer (no sticky sessions needed).
On one host, a SQLite file (``sqlite:///var/lib/app/iox.db``); on several, a Redis
(``redis://10.0.0.5:6379/0``)::

    export INSTANTLY_API_KEY=... APP_PASSWORD=choose-one
    export INSTANTLY_STORE=sqlite:///var/lib/app/iox.db
    python examples/aiohttp_app.py --host 0.0.0.0 8081 &
    python examples/aiohttp_app.py --host 0.0.0.0 8082 &

To try that without the real API, serve ``instantly-oauth simulate --port 8800 --api-key
local-key`` and set ``INSTANTLY_BASE_URL=http://127.0.0.1:8800 INSTANTLY_API_KEY=local-key``.

Any worker answers for a session any worker started (``manager.attach()``). A worker that stops
hands its sessions over: at once on SIGTERM, ``--session-lease`` seconds (15) after a crash; the
person's event stream then reconnects, to any worker, and still gets the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from instantly_oauth_async import ConfigurationError, EnvironmentVariableError, OAuthManager
from instantly_oauth_async.testing import Simulator
from instantly_oauth_async.web import ConnectFlow
from instantly_oauth_async.web.aiohttp import install

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

    @property
    def secret(self) -> bytes:
        """A secret for the flow's links (which it hashes into a key of their own)."""
        return self._key

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

# --- end of the stand-in ----------------------------------------------------------------------


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

LOGIN = web.AppKey("login", Login)
FLOW = web.AppKey("flow", ConnectFlow)


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


def make_app(manager: OAuthManager, *, password: str, max_pending: int = 100) -> web.Application:
    """The app around a manager the caller opened (and will close). ``password`` is the stand-in
    sign-in's shared secret; ``max_pending`` bounds the pending connections of all users."""
    app = web.Application()
    app[LOGIN] = sign_in = Login(password)
    app[FLOW] = flow = ConnectFlow(manager, secret=sign_in.secret, max_pending=max_pending)
    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    install(app, flow, user_of=user_of)  # POST /connect, GET /events/{id}, GET /result/{id}
    return app


SHARED = {"SQLiteStore": "shared through SQLite", "RedisStore": "shared through Redis"}


@contextlib.asynccontextmanager
async def manager_for_this_run(options: dict[str, Any]) -> AsyncIterator[tuple[OAuthManager, str]]:
    """With INSTANTLY_API_KEY (or ``api_key`` in ``options``), ``OAuthManager.from_env``: it
    reads INSTANTLY_BASE_URL, INSTANTLY_WORKSPACE and INSTANTLY_STORE too, and closes the store
    it builds; ``options`` (the manager's keyword arguments) win. Otherwise the built-in
    simulator, in this process. Yields (manager, where its sessions come from)."""
    if options.get("api_key") or os.environ.get("INSTANTLY_API_KEY", "").strip():
        async with OAuthManager.from_env(**options) as manager:
            shared = SHARED.get(type(manager.store).__name__, "in this process's memory")
            yield manager, f"{manager.client.base_url}, {shared}"
        return
    for name in ("INSTANTLY_STORE", "INSTANTLY_BASE_URL"):  # no other worker could reach it
        if os.environ.get(name, "").strip().lower() not in ("", "memory"):
            raise EnvironmentVariableError(name, f"{name} needs INSTANTLY_API_KEY: without it "
                                           "the app runs the built-in simulator, in one process")
    async with Simulator() as sim:
        environ = {"INSTANTLY_API_KEY": sim.add_workspace("example").api_key,
                   "INSTANTLY_BASE_URL": sim.url}
        async with OAuthManager.from_env(environ, **{"poll_interval": 1, **options}) as manager:
            yield manager, f"the simulator at {sim.url}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The Connect mailbox web app (aiohttp).")
    parser.add_argument("port", nargs="?", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (0.0.0.0 behind a load balancer on another host)")
    parser.add_argument("--session-lease", type=float, default=15.0,
                        help="seconds after a crash before another worker takes its sessions over")
    parser.add_argument("--poll-interval", type=float, default=None,
                        help="seconds between status reads of a session (default 5)")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace, password: str) -> None:
    lease = args.session_lease
    options: dict[str, Any] = {"session_lease": lease, "status_timeout": min(5.0, lease / 4)}
    if args.poll_interval is not None:
        options["poll_interval"] = args.poll_interval
    async with manager_for_this_run(options) as (manager, where):
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
    try:
        asyncio.run(main(parse_args(), os.environ["APP_PASSWORD"]))
    except ConfigurationError as exc:  # a variable missing or malformed: its message names it
        sys.exit(f"aiohttp_app: {exc}")
