"""One worker of a fleet, run as its own process by tests/test_redis.py.

It bulk-connects ``--count`` mailboxes through a RedisStore and plays the person too: each
session's consent page is submitted over HTTP. Prints one JSON line of figures at the end.
The API key comes from INSTANTLY_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import aiohttp
import anyio

from instantly_oauth_async import OAuthManager, OAuthSession, RateLimit
from instantly_oauth_async.redis import RedisStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--window", type=float, required=True)
    parser.add_argument("--share", type=float, default=0.0)
    parser.add_argument("--name", default="w")
    parser.add_argument("--think", type=float, default=0.0,
                        help="seconds each person takes before answering the consent page")
    parser.add_argument("--status-share", type=float, default=0.5,
                        help="status_limit as a fraction of the standard window (1: all of it)")
    args = parser.parse_args()
    store = RedisStore.from_url(args.redis, fallback_share=args.share, retry_interval=0.2)
    seen_degraded = False
    async with aiohttp.ClientSession() as browser, anyio.create_task_group() as people:
        async def act(session: OAuthSession) -> None:
            nonlocal seen_degraded
            seen_degraded |= store.degraded
            if args.think:
                await anyio.sleep(args.think)  # a person reading the consent page
            email = f"{session.session_id[:12]}@{args.name}.io"
            data = {"action": "allow", "email": email}
            async with browser.post(session.auth_url, data=data) as response:
                response.raise_for_status()

        def person(session: OAuthSession) -> None:
            # Each person acts on their own link, as people do: the worker does not wait for them.
            people.start_soon(act, session)

        async with OAuthManager(
            os.environ["INSTANTLY_API_KEY"], base_url=args.base_url, store=store,
            poll_interval=0.2, fetch_account=False, request_timeout=3.0, status_timeout=3.0,
            init_limit=RateLimit(75, per=args.window),
            ip_init_limit=RateLimit(150, per=args.window),
            standard_limit=(RateLimit(100, per=args.window / 60), RateLimit(6000, per=args.window)),
            status_limit=(RateLimit(round(100 * args.status_share), per=args.window / 60),
                          RateLimit(round(6000 * args.status_share), per=args.window)),
        ) as manager:
            ok = 0
            async for result in manager.connect_many(
                "google", args.count, on_session=person, max_pending=args.count
            ):
                ok += result.ok
            stats = manager.stats()
    await store.aclose()
    print(json.dumps({
        "ok": ok, "rate_limited": stats.rate_limited, "round_trips": store.round_trips,
        "steps": dict(store.steps),
        "seen_degraded": seen_degraded, "degraded_at_end": store.degraded,
    }))


if __name__ == "__main__":
    asyncio.run(main())
