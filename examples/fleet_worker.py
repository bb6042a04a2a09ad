"""A worker of a fleet: run it on as many hosts and processes as you like, one Redis between them.

    pip install 'instantly-oauth-async[redis]'
    INSTANTLY_API_KEY=... REDIS_URL=redis://10.0.0.5:6379/0 python fleet_worker.py google 200

Every worker draws on the same init budgets (75/min per workspace, 150/min per IP, per provider),
status budget, learned blocks and breakers, so adding workers never adds 429s. Each auth URL goes
to stdout as one JSON line for whatever delivers it to the person, flushed at once (piped, stdout
is block-buffered); results follow as they come. INSTANTLY_BASE_URL points it at another API host.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from instantly_oauth_async import OAuthManager, OAuthSession, Provider
from instantly_oauth_async.redis import RedisStore


async def main(provider: str, count: int, **manager_options: Any) -> None:
    # fallback_share: while Redis is unreachable, this worker may use a third of each budget on
    # its own (right for up to three workers); the default, 0, waits for Redis instead.
    store = RedisStore.from_url(os.environ["REDIS_URL"], fallback_share=1 / 3)
    try:
        if "INSTANTLY_BASE_URL" in os.environ:  # another API host (a proxy, or a simulator)
            manager_options.setdefault("base_url", os.environ["INSTANTLY_BASE_URL"])
        async with OAuthManager(
            os.environ["INSTANTLY_API_KEY"], store=store, **manager_options
        ) as manager:
            def hand_out(session: OAuthSession) -> None:
                # flush: piped to another program, stdout is block-buffered, and a link that
                # waits in the buffer until the worker exits is useless (its session expires)
                print(json.dumps({"session": session.session_id, "url": session.auth_url}),
                      flush=True)

            async for result in manager.connect_many(
                Provider(provider), count, on_session=hand_out, max_pending=50
            ):
                sid, status = result.session.session_id, result.status.value
                print(json.dumps({"session": sid, "status": status, "email": result.email}),
                      flush=True)
    finally:
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
