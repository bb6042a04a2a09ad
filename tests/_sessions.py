"""Sessions for the tests of the manager's parts (no server behind them)."""

from __future__ import annotations

from datetime import datetime, timezone

from instantly_oauth_async import OAuthSession, Provider


def session_named(name: str) -> OAuthSession:
    """An ``OAuthSession`` with id ``name`` (a Google one, long expired: no part under test
    reads its expiry)."""
    return OAuthSession(name, "https://accounts.example/consent",
                        datetime(2026, 1, 1, tzinfo=timezone.utc), Provider.GOOGLE)
