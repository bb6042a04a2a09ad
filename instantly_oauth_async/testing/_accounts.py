"""The accounts a workspace has connected: made by a successful session, served by
``GET /api/v2/accounts/{email}`` to their own workspace only."""

from __future__ import annotations

from typing import Any

__all__ = ["AccountBook"]


class AccountBook:
    """``records[email.lower()] = (workspace_id, the Account JSON)``."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[str, dict[str, Any]]] = {}

    def owner(self, email: str) -> str | None:
        """The workspace the mailbox is connected to, if any."""
        found = self.records.get(email.strip().lower())
        return found[0] if found else None

    def connect(self, workspace_id: str, provider: str, email: str, name: str | None,
                stamp: str) -> None:
        """Connect ``email`` to ``workspace_id``. Connecting it again makes the record anew but
        keeps ``timestamp_created``, as an account's creation does not move."""
        first, _, last = (name or "").partition(" ")
        before = self.records.get(email.lower())
        created = before[1]["timestamp_created"] if before and before[0] == workspace_id \
            else stamp
        self.records[email.lower()] = (
            workspace_id,
            {
                "email": email,
                "timestamp_created": created,
                "timestamp_updated": stamp,
                "first_name": first,
                "last_name": last,
                "organization": workspace_id,
                "warmup_status": 0,
                "provider_code": 2 if provider == "google" else 3,
                "setup_pending": False,
                "is_managed_account": False,
                "status": 1,
                "daily_limit": 50,
                "warmup": {"limit": 20, "increment": "disabled", "advanced": {"warm_ctd": False}},
                "sending_gap": 10,
                "stat_warmup_score": None,
            },
        )

    def touch(self, email: str, stamp: str) -> None:
        """An unrelated change to the account (its settings edited): only the update stamp."""
        self.records[email.strip().lower()][1]["timestamp_updated"] = stamp

    def lookup(self, workspace_id: str, email: str) -> dict[str, Any] | None:
        """The account as its own workspace sees it; None for anyone else's or none."""
        found = self.records.get(email.lower())
        if found is None or found[0] != workspace_id:
            return None
        return found[1]
