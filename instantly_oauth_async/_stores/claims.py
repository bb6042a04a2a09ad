"""The connect guard in the store: who holds a pending connection, so that a user holds at most
``per_user`` of them and the application at most ``limit`` in all, across every worker and host
sharing the store (``store.claims``).

A *claim* is taken before a session is started (``hold`` seconds to start it), bound to the
session once it exists (then held until the session's expiry plus a grace), and dropped as soon
as the session is decided or fails to start. A claim whose holder never dropped it (a worker
killed with SIGKILL) leaves by itself when its deadline passes: every step first forgets what
is due, timed by the store's own clock (Redis ``TIME``, the host's CLOCK_MONOTONIC for SQLite).

Every step is atomic: :class:`MemoryClaims` has no ``await`` inside a step, ``RedisClaims`` runs
one Lua script, ``SQLiteClaims`` one ``BEGIN IMMEDIATE`` transaction. So of two workers racing
for a user's last slot exactly one wins, whichever process they run in.
``tests/test_webflow_claims.py`` runs the same contract against all three.

A store that cannot be reached raises ``RegistryUnavailableError`` (nothing was claimed: ask
again later); one that answers with an error waiting will not cure raises ``StoreError``.
"""

from __future__ import annotations

import secrets
from typing import Literal, Protocol, runtime_checkable

import attrs

from .._limits.clock import Clock
from .._wire.exceptions import ConfigurationError

__all__ = ["Claim", "Claims", "MemoryClaims", "check", "new_ticket"]

TICKET_LENGTH = 32  # hex digits: a ticket is secrets.token_hex(16)


@attrs.frozen
class Claim:
    """The answer to :meth:`Claims.claim`.

    ``state`` is ``"taken"`` (``ticket`` is the new claim's: start the session, then
    :meth:`~Claims.bind` it), ``"held"`` (the user holds ``per_user`` already: ``ticket`` and
    ``session_id`` name one of them, ``session_id`` None while it is still starting), or
    ``"full"`` (``limit`` claims are held in all; ``ticket`` is empty)."""

    state: Literal["taken", "held", "full"]
    ticket: str = ""
    session_id: str | None = None


@runtime_checkable
class Claims(Protocol):
    """Claims by namespace ``ns`` (one connect flow) and user; see the module."""

    async def claim(self, ns: str, user: str, *, hold: float, per_user: int, limit: int
                    ) -> Claim:
        """A new claim for ``user``, held ``hold`` seconds, unless the user holds ``per_user``
        already (the one with a session, latest first, is named) or ``limit`` are held in all."""
        ...

    async def bind(self, ns: str, user: str, ticket: str, session_id: str, *, hold: float
                   ) -> bool:
        """Name the claim's session and hold it ``hold`` seconds from now; False when the claim
        is gone (dropped, or past its deadline)."""
        ...

    async def drop(self, ns: str, user: str, *, ticket: str | None = None,
                   session_id: str | None = None) -> None:
        """Drop the user's claim with ``ticket``, or the ones bound to ``session_id``."""
        ...

    async def count(self, ns: str, user: str | None = None) -> int:
        """Claims held now, in all or by ``user``."""
        ...


def new_ticket() -> str:
    return secrets.token_hex(TICKET_LENGTH // 2)


def check(ns: str, user: str, hold: float, per_user: int = 1, limit: int = 1) -> None:
    """Raise ``ConfigurationError`` for arguments no store can honour."""
    if not ns or "{" in ns or "}" in ns:
        raise ConfigurationError("a claims namespace is a non-empty string without braces")
    if not user:
        raise ConfigurationError("a claim needs a user: a non-empty string")
    if not 0 < hold < 86400 * 7:
        raise ConfigurationError("a claim is held from 0 to 7 days (seconds)")
    if per_user < 1 or limit < 1:
        raise ConfigurationError("per_user and limit must be at least 1")


def pick(found: list[tuple[str, str, float]]) -> tuple[str, str]:
    """Of a user's claims (ticket, session id or '', deadline): the one to name, a bound one
    first, then the latest deadline."""
    ticket, sid, _ = max(found, key=lambda f: (f[1] != "", f[2]))
    return ticket, sid


@attrs.define
class _Held:
    session_id: str
    until: float


class MemoryClaims:
    """The claims of one process (``MemoryStore.claims``), timed by ``clock``."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._held: dict[str, dict[tuple[str, str], _Held]] = {}

    def __repr__(self) -> str:
        return f"<MemoryClaims namespaces={len(self._held)}>"

    def _live(self, ns: str) -> dict[tuple[str, str], _Held]:
        now = self._clock.monotonic()
        held = self._held.get(ns, {})
        live = {key: h for key, h in held.items() if h.until > now}
        if live:
            self._held[ns] = live
        else:
            self._held.pop(ns, None)
        return live

    async def claim(self, ns: str, user: str, *, hold: float, per_user: int, limit: int
                    ) -> Claim:
        check(ns, user, hold, per_user, limit)
        live = self._live(ns)
        mine = [(t, h.session_id, h.until) for (u, t), h in live.items() if u == user]
        if len(mine) >= per_user:
            ticket, sid = pick(mine)
            return Claim("held", ticket, sid or None)
        if len(live) >= limit:
            return Claim("full")
        ticket = new_ticket()
        self._held.setdefault(ns, {})[(user, ticket)] = _Held("", self._clock.monotonic() + hold)
        return Claim("taken", ticket)

    async def bind(self, ns: str, user: str, ticket: str, session_id: str, *, hold: float
                   ) -> bool:
        check(ns, user, hold)
        held = self._live(ns).get((user, ticket))
        if held is None:
            return False
        held.session_id, held.until = session_id, self._clock.monotonic() + hold
        return True

    async def drop(self, ns: str, user: str, *, ticket: str | None = None,
                   session_id: str | None = None) -> None:
        live = self._live(ns)
        for key in [(u, t) for (u, t), h in live.items() if u == user and (
                t == ticket or (session_id is not None and h.session_id == session_id))]:
            del live[key]
        if not live:
            self._held.pop(ns, None)

    async def count(self, ns: str, user: str | None = None) -> int:
        return sum(1 for (u, _) in self._live(ns) if user is None or u == user)
