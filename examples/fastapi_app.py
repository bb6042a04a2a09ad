"""The "Connect mailbox" app of aiohttp_app.py, in FastAPI (extra ``examples``).

    APP_PASSWORD=choose-one python examples/fastapi_app.py [PORT]    # then http://127.0.0.1:8000
    cd examples && APP_PASSWORD=choose-one uvicorn fastapi_app:app   # the same, served by uvicorn

Like aiohttp_app.py it runs against the built-in simulator when INSTANTLY_API_KEY is not set, and
it is one file that needs only the installed library (the sign-in stand-in and the pages are the
same as there, copied, so that each example stands alone). The manager and the connect flow
(``instantly_oauth_async.web.asgi``: ``POST /connect``, ``GET /events/{id}``, ``GET
/result/{id}``) live as long as the app (FastAPI's lifespan).

With INSTANTLY_API_KEY set, ``OAuthManager.from_env()`` reads the configuration: the key, and
INSTANTLY_BASE_URL, INSTANTLY_WORKSPACE and INSTANTLY_STORE when set (INSTANTLY_STORE or
INSTANTLY_BASE_URL without the key is refused: the simulator lives in one process). Several
workers share the store INSTANTLY_STORE names: on one host a SQLite file, on several a Redis
(``redis://10.0.0.5:6379/0``)::

    export INSTANTLY_API_KEY=... APP_PASSWORD=choose-one
    export INSTANTLY_STORE=sqlite:///var/lib/app/iox.db
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

from instantly_oauth_async import EnvironmentVariableError, OAuthManager
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


def make_app(
    api_key: str | None = None,
    *,
    password: str | None = None,
    max_pending: int = 100,
    **manager_options: Any,
) -> FastAPI:
    """The app; its lifespan opens the manager and the flow. ``api_key`` defaults to
    INSTANTLY_API_KEY (none: the simulator), ``password`` (the stand-in sign-in's) to
    APP_PASSWORD; ``max_pending`` bounds the pending connections of all users;
    ``manager_options`` (``base_url=``, ``store=``...) win over the environment's."""
    options = manager_options if api_key is None else {"api_key": api_key, **manager_options}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = password or os.environ.get("APP_PASSWORD")
        if not secret:
            raise RuntimeError("set APP_PASSWORD: the password people sign in with")
        async with manager_for_this_run(options) as (manager, where):
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
