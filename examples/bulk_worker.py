"""An async worker that connects a list of mailboxes, each to its own person.

    INSTANTLY_API_KEY=... python examples/bulk_worker.py google mailboxes.txt > links.jsonl

``mailboxes.txt`` holds one address per line. Each new session goes to stdout as a JSON line
(``{"email": ..., "auth_url": ...}``) for whatever sends each person their link; the results
follow as they come. The init limits pace the sessions, at most 50 wait for people at once, and
a person who connects another mailbox than the one asked for is reported, not counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from instantly_oauth_async import ConnectResult, OAuthManager, OAuthSession, Provider


async def bulk_connect(
    manager: OAuthManager,
    provider: Provider | str,
    mailboxes: Sequence[str],
    hand_out: Callable[[str, OAuthSession], object],
) -> list[ConnectResult]:
    """Connect ``mailboxes``; ``hand_out(email, session)`` sends each person their link."""
    queue = list(mailboxes)

    def on_session(session: OAuthSession) -> None:
        hand_out(queue.pop(0), session)  # connect_many makes sessions in expected_emails order

    return [result async for result in manager.connect_many(
        provider, len(mailboxes), expected_emails=mailboxes, on_session=on_session,
        max_pending=50,
    )]


async def main(provider: str, mailboxes: list[str]) -> int:
    def hand_out(email: str, session: OAuthSession) -> None:
        print(json.dumps({"email": email, "auth_url": session.auth_url}), flush=True)

    async with OAuthManager(os.environ["INSTANTLY_API_KEY"]) as manager:
        results = await bulk_connect(manager, provider, mailboxes, hand_out)
    for r in results:
        print(json.dumps({"expected": r.expected_email, "status": r.status.value,
                          "connected": r.email, "mismatch": r.email_mismatch}))
    return 0 if all(r.ok and not r.email_mismatch for r in results) else 1


if __name__ == "__main__":
    lines = Path(sys.argv[2]).read_text(encoding="utf-8").splitlines()
    sys.exit(asyncio.run(main(sys.argv[1], [line.strip() for line in lines if line.strip()])))
