"""A process on a store's claims, run by tests/test_webflow_claims.py: ``python -m
tests._webflow_claimer MODE TARGET [GO]`` (TARGET: a SQLite path, or a redis:// URL).

- ``race``: opens the store, prints ``ready``, waits (up to 30 s) for the file GO to exist, so
  that every racer claims at the same moment, then claims ann's one slot and prints the claim
  as JSON.
- ``hold``: takes ann's claim, binds it to ``s-killed`` for 1.5 s, prints the claim as JSON,
  and waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.sqlite import SQLiteStore

NS = "test-connect"


def _go(path: str | None) -> bool:
    return path is None or os.path.exists(path)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(mode: str, target: str, go: str | None) -> None:
    store = RedisStore.from_url(target) if target.startswith("redis://") else SQLiteStore(target)
    async with store:
        await store.claims.count(NS)  # opened and connected: the race is the claim alone
        if mode == "race":
            _say("ready")
            deadline = time.monotonic() + 30
            while not _go(go):  # bounded by the deadline
                if time.monotonic() > deadline:
                    raise SystemExit("no go within 30 s")
                await asyncio.sleep(0.002)
            claim = await store.claims.claim(NS, "ann", hold=60, per_user=1, limit=10)
            _say(json.dumps({"state": claim.state}))
            return
        claim = await store.claims.claim(NS, "ann", hold=60, per_user=1, limit=10)
        assert await store.claims.bind(NS, "ann", claim.ticket, "s-killed", hold=1.5)
        _say(json.dumps({"state": claim.state}))
        await asyncio.sleep(3600)  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
