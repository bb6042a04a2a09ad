"""The "Connect mailbox" app of aiohttp_app.py, in FastAPI (extra ``examples``).

    APP_PASSWORD=choose-one python examples/fastapi_app.py [PORT]    # then http://127.0.0.1:8000
    cd examples && APP_PASSWORD=choose-one uvicorn fastapi_app:app   # the same, served by uvicorn

Like aiohttp_app.py it runs against the built-in simulator when INSTANTLY_API_KEY is not set, and
it is one file that needs only the installed library (the sign-in stand-in and the pages are the
same as there, copied, so that each example stands alone). The manager and the connect flow
(``instantly_oauth_async.web.asgi``: ``POST /connect``, ``GET /events/{id}``, ``GET
/result/{id}``) live as long as the app (FastAPI's lifespan).

Several workers share one store: on one host a SQLite file named by INSTANTLY_SQLITE, on several
a Redis named by REDIS_URL (both need INSTANTLY_API_KEY: the simulator lives in one process)::

    export INSTANTLY_API_KEY=... APP_PASSWORD=choose-one INSTANTLY_SQLITE=/var/lib/app/iox.db
    cd examples && uvicorn fastapi_app:app --workers 4 --timeout-graceful-shutdown 5

(``--timeout-graceful-shutdown``: an open event stream would otherwise hold a stopping worker;
cut, the browser reconnects to another.)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from instantly_oauth_async import OAuthManager, Store
from instantly_oauth_async.sqlite import SQLiteStore
from instantly_oauth_async.testing import Simulator
from instantly_oauth_async.web import ConnectFlow
from instantly_oauth_async.web.asgi import connect_routes

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

def user_of(request: Request) -> str | None:
    login: Login = request.app.state.login
    return login.user_of(request.cookies.get(COOKIE))


@contextlib.asynccontextmanager
async def manager_for_this_run(
    api_key: str | None, base_url: str | None, options: dict[str, Any]
) -> AsyncIterator[tuple[OAuthManager, str]]:
    """``api_key`` (or INSTANTLY_API_KEY) against the API, on the store REDIS_URL or
    INSTANTLY_SQLITE names (none: this process's memory); otherwise the built-in simulator."""
    key = api_key or os.environ.get("INSTANTLY_API_KEY")
    options = dict(options)
    redis_url, sqlite_path = os.environ.get("REDIS_URL"), os.environ.get("INSTANTLY_SQLITE")
    if not key:
        if redis_url or sqlite_path:
            raise RuntimeError("REDIS_URL and INSTANTLY_SQLITE need INSTANTLY_API_KEY: the "
                               "built-in simulator lives in one process")
        async with Simulator() as sim:
            workspace = sim.add_workspace("example")
            options = {"poll_interval": 1, **options}
            async with OAuthManager(workspace.api_key, base_url=sim.url, **options) as manager:
                yield manager, f"the simulator at {sim.url}"
        return
    where = base_url or "the Instantly API"
    if base_url:
        options = {"base_url": base_url, **options}
    async with contextlib.AsyncExitStack() as stack:
        store: Store | None = options.pop("store", None)  # a store the caller passed wins
        if store is not None:
            pass
        elif redis_url:  # every worker with the same Redis: one budget, one session registry
            from instantly_oauth_async.redis import RedisStore  # noqa: PLC0415 - extra "redis"

            store = await stack.enter_async_context(RedisStore.from_url(redis_url))
            where += ", shared through Redis"
        elif sqlite_path:  # every worker of this host on one file
            store = await stack.enter_async_context(SQLiteStore(sqlite_path))
            where += ", shared through SQLite"
        manager = await stack.enter_async_context(OAuthManager(key, store=store, **options))
        yield manager, where


def make_app(
    api_key: str | None = None,
    *,
    password: str | None = None,
    base_url: str | None = None,
    max_pending: int = 100,
    **manager_options: Any,
) -> FastAPI:
    """The app; its lifespan opens the manager and the flow. ``api_key`` defaults to
    INSTANTLY_API_KEY (none: the simulator), ``password`` (the stand-in sign-in's) to
    APP_PASSWORD; ``max_pending`` bounds the pending connections of all users."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = password or os.environ.get("APP_PASSWORD")
        if not secret:
            raise RuntimeError("set APP_PASSWORD: the password people sign in with")
        async with manager_for_this_run(api_key, base_url, manager_options) as (manager, where):
            print(f"sessions from {where}", flush=True)
            app.state.login = login = Login(secret)
            async with ConnectFlow(manager, secret=login.secret,
                                   max_pending=max_pending) as app.state.flow:
                yield

    app = FastAPI(lifespan=lifespan)
    app.router.routes.extend(connect_routes(lambda: app.state.flow, user_of=user_of))

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> str:
        return PAGE if user_of(request) else LOGIN_PAGE

    @app.post("/login")
    async def login(request: Request) -> RedirectResponse:
        body = b""
        async for chunk in request.stream():  # a form of two short fields: bounded
            body += chunk
            if len(body) > 4096:
                raise HTTPException(413)
        form = parse_qs(body.decode(errors="replace"))
        sign_in: Login = request.app.state.login
        cookie = sign_in.sign_in(form.get("user", [""])[0], form.get("password", [""])[0])
        if cookie is None:
            raise HTTPException(403, "wrong name or password")
        response = RedirectResponse("/", status_code=303)
        # SameSite: another site's page cannot POST /connect as the user; add secure=True on HTTPS
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="lax")
        return response

    return app


app = make_app()  # for ``uvicorn fastapi_app:app``: reads its settings when it starts


if __name__ == "__main__":
    import uvicorn

    if not os.environ.get("APP_PASSWORD"):
        sys.exit("set APP_PASSWORD: the password people sign in with (a stand-in for your app's)")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000,
                timeout_graceful_shutdown=5)
