"""What the flow answers a route: a user's pending connection (:class:`Started`, its links), or
a :class:`Refusal` (a status and a text safe to show anyone) instead."""

from __future__ import annotations

import attrs

from .._wire.exceptions import InstantlyError

__all__ = ["Refusal", "Started"]


class Refusal(InstantlyError):
    """What a route answers instead: ``status``, a ``text`` safe to show anyone (no session id,
    no secret), extra ``headers``, and ``page`` when the answer is a page of HTML."""

    def __init__(self, status: int, text: str, *, headers: dict[str, str] | None = None,
                 page: bool = False) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}
        self.page = page


@attrs.frozen
class Started:
    """A user's pending connection, as ``POST {prefix}/connect`` answers it."""

    session_id: str
    auth_url: str
    events_url: str
    result_url: str

    def json(self) -> dict[str, str]:
        """The fields as a JSON-ready dict (the body of ``POST /connect``'s answer)."""
        return attrs.asdict(self)
