"""The flow's signed links: what a link to a session carries (its end and an HMAC-SHA256 of the
user, the session and that end), and the check every page naming a session makes first."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from urllib.parse import quote

from .._manager.pending import PendingConnection
from . import _pages
from ._answers import Refusal, Started

__all__ = ["Links"]


class Links:
    """Links bound to the user they were made for and valid ``lifetime`` seconds of
    ``wall_clock`` (every worker reads it alike), signed with a key made from ``secret``.

    Asking again for the same session gives back the same links while they have at least half
    their life left (the answer to ``POST /connect`` does not change between two tabs or a
    second or two), fresh ones after that; the ends given out are kept, in the order they end,
    only as long as they may be given again.
    """

    def __init__(self, secret: str | bytes, lifetime: float,
                 wall_clock: Callable[[], float]) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._key = hashlib.sha256(b"instantly-oauth-async connect links\0" + raw).digest()
        self._lifetime = float(lifetime)
        self._wall = wall_clock
        self._ends: dict[tuple[str, str], int] = {}  # (user, session) -> end, in order of end

    def _signature(self, user: str, session_id: str, expires: int) -> str:
        text = f"{len(user)}:{user}{len(session_id)}:{session_id}{expires}"
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def tag(self, user: str, session_id: str) -> str:
        """What a link to ``session_id`` carries: its end (Unix time) and its signature."""
        now = self._wall()
        ends, half = self._ends, self._lifetime / 2
        while ends:  # those past the half of their life are not given again
            key = next(iter(ends))
            if ends[key] - now >= half:
                break
            del ends[key]
        expires = ends.get((user, session_id))
        if expires is None:
            expires = ends[user, session_id] = int(now + self._lifetime)
        return f"{expires}.{self._signature(user, session_id, expires)}"

    def verify(self, user: str, session_id: str, tag: str | None) -> None:
        """Refuse a link not made for ``user`` (404: nothing said of whose it is) or expired
        (410)."""
        expires, _, signature = (tag or "").partition(".")
        if not expires.isdigit() or len(expires) > 12 or not hmac.compare_digest(
                signature.encode(), self._signature(user, session_id, int(expires)).encode()):
            raise Refusal(404, _pages.NOT_FOUND_PAGE, page=True)
        if int(expires) <= self._wall():
            raise Refusal(410, _pages.EXPIRED_PAGE, page=True)

    def started(self, user: str, prefix: str, pending: PendingConnection) -> Started:
        """``pending`` as ``POST {prefix}/connect`` answers it, its links signed for ``user``."""
        sid = pending.session.session_id
        query = f"{quote(sid, safe='')}?tag={self.tag(user, sid)}"
        return Started(sid, pending.session.auth_url, f"{prefix}/events/{query}",
                       f"{prefix}/result/{query}")
