"""The handles one worker holds on sessions: one a session, attached once and shared by every
request that names it; decided ones make room when ``max_watched`` are held."""

from __future__ import annotations

from collections.abc import Callable

from .._manager.manager import OAuthManager
from .._manager.pending import PendingConnection
from ._answers import Refusal

__all__ = ["Handles"]


class Handles:
    """At most ``most`` handles, attached through the manager ``manager()`` gives."""

    def __init__(self, manager: Callable[[], OAuthManager], most: int) -> None:
        self._manager = manager
        self._most = most
        self._held: dict[str, PendingConnection] = {}

    def __len__(self) -> int:
        return len(self._held)

    def keep(self, pending: PendingConnection) -> None:
        """Hold ``pending``, a session this worker started (a handle held already stays)."""
        self._held.setdefault(pending.session.session_id, pending)

    async def attach(self, session_id: str) -> PendingConnection:
        """The one handle on ``session_id`` (``UnknownSessionError`` for none); a 503 refusal
        when ``most`` are held and none of them is decided."""
        pending = self._held.get(session_id)
        if pending is None:
            if len(self._held) >= self._most:
                self._held = {k: p for k, p in self._held.items() if not p.done()}
                if len(self._held) >= self._most:
                    raise Refusal(503, "too many sessions watched; try again later",
                                  headers={"Retry-After": "10"})
            pending = await self._manager().attach(session_id)
            pending = self._held.setdefault(session_id, pending)
        return pending
