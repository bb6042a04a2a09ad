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
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from instantly_oauth_async import ConfigurationError, OAuthManager
from instantly_oauth_async.web import ConnectFlow
from instantly_oauth_async.web.aiohttp import install

try:  # imported as examples.aiohttp_app (the tests)
    from ._shared import COOKIE, LOGIN_PAGE, PAGE, Login, manager_for_this_run
except ImportError:  # run as a script (python examples/aiohttp_app.py): the file beside it
    from _shared import COOKIE, LOGIN_PAGE, PAGE, Login, manager_for_this_run  # type: ignore[import-not-found,no-redef]

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
