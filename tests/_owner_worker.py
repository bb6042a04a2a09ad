"""An owner of sessions, run as its own process by tests/test_fleet_processes.py: it starts
``--count`` sessions through a RedisStore, prints each session id on its own line (flushed), then
"ready", then each outcome as it learns it ("result <id> <status>"), until it is killed."""

from __future__ import annotations

import argparse
import asyncio
import os

import anyio

from instantly_oauth_async import OAuthManager
from instantly_oauth_async.redis import RedisStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--lease", type=float, required=True)
    args = parser.parse_args()
    async with RedisStore.from_url(args.redis) as store, OAuthManager(
        os.environ["INSTANTLY_API_KEY"], base_url=args.base_url, store=store,
        poll_interval=0.1, fetch_account=False, session_lease=args.lease,
        status_timeout=args.lease / 4,
    ) as manager:
        pendings = []
        for _ in range(args.count):
            pending = await manager.start("google")
            pendings.append(pending)
            print(pending.session.session_id, flush=True)
        print("ready", flush=True)
        for pending in pendings:  # then each outcome, as this owner learns it
            result = await pending
            print("result", result.session.session_id, result.status.value, flush=True)
        await anyio.sleep(3600)  # until killed


if __name__ == "__main__":
    asyncio.run(main())
