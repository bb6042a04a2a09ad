"""The "Connect mailbox" app of aiohttp_app.py, in FastAPI (extra ``examples``).

    APP_PASSWORD=choose-one python examples/fastapi_app.py [PORT]    # then http://127.0.0.1:8000
    cd examples && APP_PASSWORD=choose-one uvicorn fastapi_app:app   # the same, served by uvicorn

Like aiohttp_app.py it runs against the built-in simulator when INSTANTLY_API_KEY is not set, and
it needs only the installed library and _shared.py beside it (the sign-in stand-in, the pages
and the manager for a run, the same as there). The manager and the connect flow
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
import os
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from instantly_oauth_async.web import ConnectFlow
from instantly_oauth_async.web.asgi import connect_routes

try:  # imported as examples.fastapi_app (the tests)
    from ._shared import COOKIE, LOGIN_PAGE, PAGE, Login, manager_for_this_run
except ImportError:  # a script, or uvicorn in examples/: the file beside it
    from _shared import COOKIE, LOGIN_PAGE, PAGE, Login, manager_for_this_run  # type: ignore[import-not-found,no-redef]

def user_of(request: Request) -> str | None:
    login: Login = request.app.state.login
    return login.user_of(request.cookies.get(COOKIE))


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
