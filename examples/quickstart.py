"""Connect one mailbox end to end.

Run: python examples/quickstart.py

With ``INSTANTLY_API_KEY`` unset, it serves the built-in simulator and plays the person itself (no
API key needed). With it set, ``OAuthManager.from_env()`` reads the configuration from the
environment (``INSTANTLY_BASE_URL``, ``INSTANTLY_WORKSPACE`` and ``INSTANTLY_STORE`` too), and the
person opens the printed link. To try that without the real API, serve the simulator in another
terminal and point the example at it:

    instantly-oauth simulate --port 8800 --api-key local-key
    export INSTANTLY_BASE_URL=http://127.0.0.1:8800 INSTANTLY_API_KEY=local-key
    python examples/quickstart.py

then open the printed link, enter a mailbox and click Allow.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

from instantly_oauth_async import ConfigurationError, OAuthManager, OAuthSession, Provider
from instantly_oauth_async.testing import Simulator


async def connect_one(manager: OAuthManager,
                      person: Callable[[OAuthSession], object] | None = None) -> bool:
    pending = await manager.start(Provider.GOOGLE)
    session = pending.session
    print(f"1. session {session.session_id} created; it expires at {session.expires_at}")
    print(f"2. send the person to: {session.auth_url}", flush=True)
    if person is not None:
        person(session)  # the person clicks Allow
    result = await pending  # polled within the limits until it ends
    print(f"3. status: {result.status.value} ({result.email})")
    if result.account is not None:
        account = result.account
        print(f"4. account {account.email}: status {account.status!r}, "
              f"provider {account.provider_code!r}")
    return result.ok


async def main() -> int:
    if os.environ.get("INSTANTLY_API_KEY", "").strip():  # the real API, or a simulator you serve
        async with OAuthManager.from_env() as manager:
            return 0 if await connect_one(manager) else 1
    async with Simulator() as sim:
        workspace = sim.add_workspace("acme")
        environ = {"INSTANTLY_API_KEY": workspace.api_key, "INSTANTLY_BASE_URL": sim.url}
        async with OAuthManager.from_env(environ, poll_interval=0.2) as manager:
            ok = await connect_one(
                manager, lambda session: sim.complete(session.session_id, "ann@acme.io", "Ann Lee"))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except ConfigurationError as exc:  # a variable missing or malformed: its message names it
        sys.exit(f"quickstart: {exc}")
