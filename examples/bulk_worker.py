"""An async worker that connects a list of mailboxes, each to its own person.

    INSTANTLY_API_KEY=... python examples/bulk_worker.py google mailboxes.txt > links.jsonl

``OAuthManager.from_env()`` reads the configuration: ``INSTANTLY_API_KEY``, and
``INSTANTLY_BASE_URL``, ``INSTANTLY_WORKSPACE`` and ``INSTANTLY_STORE`` when set.
``mailboxes.txt`` holds one address per line. Each new session goes to stdout as a JSON line
(``{"email": ..., "auth_url": ...}``) for whatever sends each person their link, and each result
as a JSON line (``{"expected": ..., "status": ...}``) as soon as it is known. The init limits pace
the sessions, at most 50 wait for people at once, and a person who connects another mailbox than
the one asked for is reported (``"mismatch": true``), not counted: the exit code is 0 only when
every mailbox asked for was connected.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from instantly_oauth_async import (
    ConfigurationError,
    ConnectResult,
    OAuthManager,
    OAuthSession,
    Provider,
    SessionFor,
)


def bulk_connect(
    manager: OAuthManager,
    provider: Provider | str,
    mailboxes: Sequence[str],
    hand_out: Callable[[str, OAuthSession], object],
) -> AsyncIterator[ConnectResult]:
    """Connect ``mailboxes``; ``hand_out(email, session)`` sends each person their link (a
    renewal, after an expiry, too). Yields each result as it comes."""
    def on_session_for(made: SessionFor) -> None:
        hand_out(mailboxes[made.index], made.session)

    return manager.connect_many(provider, len(mailboxes), expected_emails=mailboxes,
                                on_session_for=on_session_for, max_pending=50)


async def main(provider: str, mailboxes: list[str]) -> int:
    def hand_out(email: str, session: OAuthSession) -> None:
        print(json.dumps({"email": email, "auth_url": session.auth_url}), flush=True)

    connected = 0
    async with OAuthManager.from_env() as manager:
        async for r in bulk_connect(manager, provider, mailboxes, hand_out):
            print(json.dumps({"expected": r.expected_email, "status": r.status.value,
                              "connected": r.email, "mismatch": r.email_mismatch}), flush=True)
            connected += r.connected_expected
    return 0 if connected == len(mailboxes) else 1


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in [p.value for p in Provider]:
        sys.exit("usage: python bulk_worker.py google|microsoft MAILBOXES_FILE")
    lines = Path(sys.argv[2]).read_text(encoding="utf-8").splitlines()
    try:
        sys.exit(asyncio.run(main(sys.argv[1], [line.strip() for line in lines if line.strip()])))
    except ConfigurationError as exc:  # a variable missing or malformed: its message names it
        sys.exit(f"bulk_worker: {exc}")
