"""OAuth sessions as the server keeps them, and the consent page a person sees.

A session lives ``session_ttl`` seconds; a ``success`` or ``error`` session is deleted by its first
status read; another workspace's session reads as 404. On the consent page a person allows (with
a mailbox) or denies; Google refuses ``@gmail.com``, and a mailbox connected to another workspace
fails with ``account_exists``.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
from aiohttp import web

from ._accounts import AccountBook

__all__ = ["SessionBook", "SimSession", "consent_given", "consent_page", "expired_page", "page"]


@attrs.define
class SimSession:
    """A session as the simulator keeps it: its id, workspace, provider, lifetime (``created``,
    ``expires`` on the server's clock, ``expires_at``), ``state`` and, once decided, the
    mailbox (``email``, ``name``) or the ``error``.
    """
    session_id: str
    workspace_id: str
    provider: str
    consent_token: str = attrs.field(repr=False)
    created: float
    expires: float
    expires_at: datetime
    state: Literal["pending", "success", "error"] = "pending"
    email: str | None = None
    name: str | None = None
    error: str | None = None
    error_description: str | None = None


class SessionBook:
    """Every session by id. ``clock`` is the server's monotonic time, ``stamp`` its wall clock as
    the API writes timestamps."""

    def __init__(
        self, accounts: AccountBook, clock: Callable[[], float], stamp: Callable[[], str]
    ) -> None:
        self.sessions: dict[str, SimSession] = {}
        self._accounts = accounts
        self._clock = clock
        self._stamp = stamp

    def create(self, workspace_id: str, provider: str, now: float, ttl: float,
               expires_at: datetime) -> SimSession:
        session = SimSession(
            session_id=secrets.token_hex(16), workspace_id=workspace_id, provider=provider,
            consent_token=secrets.token_urlsafe(24), created=now, expires=now + ttl,
            expires_at=expires_at,
        )
        self.sessions[session.session_id] = session
        return session

    def read(self, workspace_id: str, session_id: str, now: float, purge_after: float
             ) -> tuple[int, dict[str, Any]]:
        """A status read: ``(200, the status)`` or ``(404, {})``; a final answer is given once."""
        session = self.sessions.get(session_id)
        if session is None or session.workspace_id != workspace_id:
            return 404, {}
        if session.state == "success":
            del self.sessions[session_id]
            return 200, {"status": "success", "email": session.email, "name": session.name}
        if session.state == "error":
            del self.sessions[session_id]
            return 200, {"status": "error", "error": session.error,
                         "error_description": session.error_description}
        if now >= session.expires:
            if now >= session.expires + purge_after:
                del self.sessions[session_id]
                return 404, {}
            return 200, {"status": "expired", "error": "expired",
                         "error_description": "Session expired"}
        return 200, {"status": "pending"}

    # -- what a person does ------------------------------------------------------------------

    def session_for(self, auth_url: str) -> SimSession:
        """The session an ``auth_url`` belongs to (KeyError when unknown)."""
        token = urlsplit(auth_url).path.rsplit("/", 1)[-1]
        found = self.by_token(token)
        if found is None:
            raise KeyError("no session for that auth_url")
        return found

    def by_token(self, token: str) -> SimSession | None:
        return next((s for s in self.sessions.values() if s.consent_token == token), None)

    def open_for_consent(self, token: str) -> SimSession | None:
        """The session behind a consent link, if a person may still act on it."""
        session = self.by_token(token)
        if session is None or session.state != "pending" or self._clock() >= session.expires:
            return None
        return session

    def complete(self, session_id: str, email: str, name: str | None = None) -> SimSession:
        """The person allows access with mailbox ``email``; the server's rules decide."""
        session = self._live(session_id)
        mailbox = email.strip()
        owner = self._accounts.owner(mailbox)
        if session.provider == "google" and mailbox.lower().endswith("@gmail.com"):
            _set_error(session, "access_denied", "Non GSuite accounts are not allowed")
        elif owner is not None and owner != session.workspace_id:
            _set_error(session, "account_exists", "Account already connected to another workspace")
        else:
            session.state, session.email = "success", mailbox
            session.name = name if name is not None else mailbox.split("@")[0].title()
            self._accounts.connect(session.workspace_id, session.provider, mailbox, session.name,
                                   self._stamp())
        return session

    def deny(self, session_id: str) -> SimSession:
        session = self._live(session_id)
        _set_error(session, "access_denied", "User denied access to the application")
        return session

    def fail(self, session_id: str, error: str = "server_error", description: str = ""
             ) -> SimSession:
        session = self._live(session_id)
        _set_error(session, error, description or "Internal server error")
        return session

    def expire(self, session_id: str) -> None:
        """Make a session expire now."""
        self.sessions[session_id].expires = self._clock()

    def pending(self) -> list[SimSession]:
        now = self._clock()
        return [s for s in self.sessions.values() if s.state == "pending" and s.expires > now]

    def _live(self, session_id: str) -> SimSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise KeyError(f"unknown session {session_id!r}")
        if session.state != "pending":
            raise ValueError(f"session {session_id!r} is already {session.state}")
        if self._clock() >= session.expires:
            raise ValueError(f"session {session_id!r} has expired")
        return session


def _set_error(session: SimSession, error: str, description: str) -> None:
    session.state, session.error, session.error_description = "error", error, description


# -- the pages -------------------------------------------------------------------------------

def consent_page(session: SimSession) -> web.Response:
    label = "Google Workspace" if session.provider == "google" else "Microsoft"
    form = (
        f"<p>Instantly wants to connect a {label} mailbox.</p>"
        '<form method="post">'
        '<label>Mailbox <input id="email" name="email" type="email" required></label> '
        '<label>Name <input id="name" name="name"></label> '
        '<button id="allow" name="action" value="allow" type="submit">Allow</button> '
        '<button id="deny" name="action" value="deny" type="submit" formnovalidate>'
        "Deny</button>"
        "</form>"
    )
    return page(200, f"Sign in with {label}", form)


def expired_page() -> web.Response:
    return page(410, "Link expired", "<p>This sign-in link has expired.</p>")


def consent_given(book: SessionBook, session: SimSession, action: str, email: str,
                  name: str | None) -> web.Response:
    """What the person submitted, acted on: the page they see next."""
    if action != "allow":
        book.deny(session.session_id)
        return page(200, "Access denied", "<p>You denied access. You can close this tab.</p>")
    if "@" not in email:
        return page(400, "Invalid mailbox", "<p>Enter a mailbox address.</p>")
    outcome = book.complete(session.session_id, email, name)
    if outcome.state == "success":
        text = f"<p id='done'>Connected {html.escape(email)}. You can close this tab.</p>"
        return page(200, "Connected", text)
    return page(200, "Not connected",
                f"<p id='done'>{html.escape(session.error_description or '')}</p>")


def page(status: int, title: str, body: str) -> web.Response:
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=doc, content_type="text/html")
