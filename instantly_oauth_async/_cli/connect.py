"""``connect``: create sessions and follow them to the end, with a terminal's pace of retries;
the exit code says whether every one connected."""

from __future__ import annotations

import argparse

from .._manager.manager import OAuthManager
from .._wire.models import Provider, RetryPolicy
from .board import open_console, run_connect
from .config import overrides
from .failures import NOT_ALL_CONNECTED, OK, USAGE, Fail


async def connect(args: argparse.Namespace) -> int:
    console = open_console()
    provider = Provider(args.provider)
    emails = args.expected_email or None
    if emails is not None and len(emails) != args.count:
        raise Fail(USAGE, f"give --expected-email {args.count} times, once per session")
    # A person at a terminal wants to hear about an unreachable API in seconds, not a minute.
    retry = RetryPolicy(attempts=3, base=0.5, cap=5.0)
    async with OAuthManager.from_env(**overrides(args), retry=retry,
                                     poll_interval=args.poll_interval) as manager:
        board = await run_connect(manager, provider, args.count, emails, as_json=args.json,
                                  open_browser=args.open, console=console)
    if not args.json:
        console.print(board.summary())
    return OK if board.counts["connected"] == args.count else NOT_ALL_CONNECTED
