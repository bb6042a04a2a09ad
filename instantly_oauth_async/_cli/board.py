"""What a terminal shows while sessions run (connect and the demo share it): the live line of
counts, each session's link or JSON line as it comes, each outcome as it ends, the summary table
at the end, and what an interrupt says was still pending."""


from __future__ import annotations

import contextlib
import json
import time
import webbrowser
from collections import Counter
from typing import Any

from .._manager.manager import OAuthManager
from .._manager.outcome import ConnectResult
from .._wire.models import OAuthSession, Provider
from .failures import USAGE, Fail

try:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
except ImportError:  # pragma: no cover - the message below says what to install
    Console = None  # type: ignore[assignment,misc]


def open_console() -> Any:
    if Console is None:
        raise Fail(USAGE, "the CLI needs rich: pip install 'instantly-oauth-async[cli]'")
    return Console(stderr=True, highlight=False)


_boards: list[Board] = []  # the one running, so Ctrl-C can say what was pending


class Board:
    """Live counts of pending / connected / denied / expired / failed, and the final table."""

    def __init__(self, total: int) -> None:
        _boards.append(self)
        self.total = total
        self.counts: Counter[str] = Counter()
        self.created = 0
        self.durations: list[float] = []

    def line(self) -> str:
        c = self.counts
        pending = self.created - sum(c.values())
        return (f"created {self.created}/{self.total}  pending {pending}  "  # rich markup
                f"[green]connected {c['connected']}[/]  [yellow]denied {c['denied']}[/]  "
                f"expired {c['expired']}  [red]failed {c['failed']}[/]")

    def record(self, result: ConnectResult, started: float | None) -> None:
        status = result.status.value
        key = {"success": "connected", "expired": "expired"}.get(status, "failed")
        if status == "error" and result.error == "access_denied":
            key = "denied"
        self.counts[key] += 1
        if key == "connected" and started is not None:
            self.durations.append(time.monotonic() - started)

    def summary(self) -> Any:
        table = Table(title="Summary")
        table.add_column("outcome")
        table.add_column("sessions", justify="right")
        for name in ("connected", "denied", "expired", "failed"):
            table.add_row(name, str(self.counts[name]))
        return table


def interrupted_state() -> str:
    """What an interrupt leaves behind, said after "interrupted" (empty without a board)."""
    if not _boards:
        return ""
    board = _boards[-1]
    pending = board.created - sum(board.counts.values())
    return (f"; {pending} sessions were pending (their links work until they expire), "
            f"{board.counts['connected']} connected")


def _result_json(result: ConnectResult) -> str:
    return json.dumps({
        "event": "result", "session_id": result.session.session_id,
        "status": result.status.value, "email": result.email, "error": result.error,
        "error_description": result.error_description,
        "email_mismatch": result.email_mismatch, "reconciled": result.reconciled,
    })


async def run_connect(
    manager: OAuthManager, provider: Provider, count: int, emails: list[str] | None,
    *, as_json: bool, open_browser: bool, on_session: Any = None, console: Any,
) -> Board:
    board = Board(count)
    started: dict[str, float] = {}

    async def announce(session: OAuthSession) -> None:
        board.created += 1
        started[session.session_id] = time.monotonic()
        if as_json:
            print(json.dumps({"event": "session", "session_id": session.session_id,
                              "auth_url": session.auth_url}), flush=True)
        elif on_session is None:
            console.print(f"open to connect: {session.auth_url}", soft_wrap=True)
        if open_browser:
            webbrowser.open(session.auth_url)
        if on_session is not None:
            await on_session(session)

    live = None if as_json else Live(board.line(), console=console, transient=True,
                                     auto_refresh=False)
    with live or contextlib.nullcontext():
        async for result in manager.connect_many(
            provider, count, on_session=announce, expected_emails=emails,
            max_pending=min(count, 100),
        ):
            board.record(result, started.get(result.session.session_id))
            if live is None:
                print(_result_json(result), flush=True)
            else:
                live.update(board.line(), refresh=True)
    return board
