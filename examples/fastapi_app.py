"""The "Connect mailbox" app of aiohttp_app.py, in FastAPI (extra ``examples``).

    APP_PASSWORD=choose-one python examples/fastapi_app.py [PORT]    # then http://127.0.0.1:8000
    cd examples && APP_PASSWORD=choose-one uvicorn fastapi_app:app   # the same, served by uvicorn

Like aiohttp_app.py it runs against the built-in simulator when INSTANTLY_API_KEY is not set, and
it is one file that needs only the installed library (the sign-in stand-in, ``Connections`` and
the pages are the same as there, copied, so that each example stands alone). The manager lives as
long as the app (FastAPI's lifespan); ``POST /connect`` gives a signed-in user their one pending
session's ``auth_url``, ``GET /events/{session_id}`` streams its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from instantly_oauth_async import InstantlyError, OAuthManager, PendingConnection
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


def user_of(request: Request) -> str | None:
    login: Login = request.app.state.login
    return login.user_of(request.cookies.get(COOKIE))


def signed_in_user(request: Request) -> str:
    user = user_of(request)
    if user is None:
        raise HTTPException(401, "sign in first")
    return user


User = Annotated[str, Depends(signed_in_user)]


@contextlib.asynccontextmanager
async def manager_for_this_run(
    api_key: str | None, base_url: str | None, options: dict[str, Any]
) -> AsyncIterator[tuple[OAuthManager, str]]:
    """``api_key`` (or INSTANTLY_API_KEY) against the API; otherwise the built-in simulator."""
    key = api_key or os.environ.get("INSTANTLY_API_KEY")
    if key:
        if base_url:
            options = {"base_url": base_url, **options}
        async with OAuthManager(key, **options) as manager:
            yield manager, base_url or "the Instantly API"
        return
    async with Simulator() as sim:
        workspace = sim.add_workspace("example")
        options = {"poll_interval": 1, **options}
        async with OAuthManager(workspace.api_key, base_url=sim.url, **options) as manager:
            yield manager, f"the simulator at {sim.url}"


def make_app(
    api_key: str | None = None,
    *,
    password: str | None = None,
    base_url: str | None = None,
    max_pending: int = 100,
    **manager_options: Any,
) -> FastAPI:
    """The app; its lifespan opens the manager. ``api_key`` defaults to INSTANTLY_API_KEY (none:
    the simulator), ``password`` (the stand-in sign-in's) to APP_PASSWORD; ``max_pending`` bounds
    the pending connections of all users."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = password or os.environ.get("APP_PASSWORD")
        if not secret:
            raise RuntimeError("set APP_PASSWORD: the password people sign in with")
        async with manager_for_this_run(api_key, base_url, manager_options) as (manager, where):
            print(f"sessions from {where}", flush=True)
            app.state.login = Login(secret)
            app.state.connections = connections = Connections(manager, limit=max_pending)
            try:
                yield
            finally:
                await connections.aclose()

    app = FastAPI(lifespan=lifespan)

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

    @app.post("/connect")
    async def connect(request: Request, user: User) -> dict[str, str]:
        connections: Connections = request.app.state.connections
        try:
            p = await connections.connect(user)
        except TooManyPending:
            raise HTTPException(503, "too many connections pending; try again later",
                                headers={"Retry-After": "60"}) from None
        except InstantlyError as exc:
            raise HTTPException(503, type(exc).__name__) from None
        return {"session_id": p.session.session_id, "auth_url": p.session.auth_url,
                "events_url": f"/events/{p.session.session_id}"}

    @app.get("/events/{session_id}")
    async def events(session_id: str, request: Request, user: User) -> StreamingResponse:
        connections: Connections = request.app.state.connections
        p = connections.get(user, session_id)
        if p is None:
            raise HTTPException(404)

        async def stream() -> AsyncIterator[bytes]:
            try:
                result = await p  # shared: any number of tabs may wait on one session
                payload = {"ok": result.ok, "email": result.email,
                           "reason": result.error_description or result.status.value}
            except InstantlyError as exc:
                payload = {"ok": False, "email": None, "reason": type(exc).__name__}
            yield f"event: result\ndata: {json.dumps(payload)}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


app = make_app()  # for ``uvicorn fastapi_app:app``: reads its settings when it starts


if __name__ == "__main__":
    import uvicorn

    if not os.environ.get("APP_PASSWORD"):
        sys.exit("set APP_PASSWORD: the password people sign in with (a stand-in for your app's)")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
