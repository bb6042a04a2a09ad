"""What the two web-app examples share (aiohttp_app.py and fastapi_app.py): a stand-in for
your app's sign-in, the two pages, and the manager for one run (the real API with
INSTANTLY_API_KEY, else the built-in simulator). Copying an example? Copy this file with it."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from instantly_oauth_async import EnvironmentVariableError, OAuthManager
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
