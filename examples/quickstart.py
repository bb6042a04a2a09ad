"""Connect one mailbox end to end against the built-in simulator (no API key needed).

Run: python examples/quickstart.py
Against the real API, drop the simulator and pass your key and the default base URL.
"""

from __future__ import annotations

import asyncio

from instantly_oauth_async import InstantlyClient, Provider, SessionStatus
from instantly_oauth_async.testing import Simulator


async def main() -> None:
    async with Simulator() as sim:
        workspace = sim.add_workspace("acme")
        async with InstantlyClient(workspace.api_key, base_url=sim.url) as client:
            session = await client.init_oauth(Provider.GOOGLE)
            print(f"1. session {session.session_id} created; it expires at {session.expires_at}")
            print(f"2. send the person to: {session.auth_url}")
            sim.complete(session.session_id, "ann@acme.io", "Ann Lee")  # the person clicks Allow
            status = await client.get_oauth_status(session.session_id)
            print(f"3. status: {status.status.value} ({status.email})")
            if status.status is SessionStatus.SUCCESS and status.email:
                account = await client.get_account(status.email)
                print(f"4. account {account.email}: status {account.status!r}, "
                      f"provider {account.provider_code!r}")


if __name__ == "__main__":
    asyncio.run(main())
