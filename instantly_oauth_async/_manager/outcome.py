"""How a session ended, as a ``ConnectResult``: the account fetch, and the reconciliation of a
one-time answer that was lost on the wire."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Final

import anyio
import attrs

from .._limits.clock import Clock
from .._wire.convert import from_json, to_json
from .._wire.exceptions import (
    ClientStateError,
    InstantlyError,
    MalformedResponseError,
    RateLimitedError,
    ServerError,
    TransportError,
    session_key,
)
from .._wire.models import Account, OAuthSession, OAuthStatus, RetryPolicy, SessionStatus
from .reads import Reads

__all__ = ["CLOSED_DURING_FETCH", "DOCUMENTED_TTL", "ClosedDuringFetchError", "ConnectResult",
           "OutcomeLostError", "Outcomes"]

logger = logging.getLogger("instantly_oauth_async")

DOCUMENTED_TTL: Final = 600.0
_RESULT_FIELDS = ("email", "name", "error", "error_description")


class OutcomeLostError(InstantlyError):
    """The session's one-time terminal answer was lost and could not be reconciled.

    The server deletes a finished session on its first read; when that response is lost on the
    wire, later reads get 404. Without ``expected_email`` the library cannot tell a connected
    mailbox from a failed one, so it says so instead of guessing. Also raised when no status read
    could be made before the session's deadline (the budget or the store gave no slot).
    """

    def __init__(self, session_id: str, detail: str, *, account: Account | None = None) -> None:
        self.session_id = session_id
        self.detail = detail
        #: The mailbox's account as it stands, when ``expected_email`` named one that is
        #: connected but the evidence could not tell whether this session connected it.
        self.account = account
        super().__init__(f"outcome of OAuth session {session_id} was lost: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_outcome_lost, (self.session_id, self.detail, self.account))


def _rebuild_outcome_lost(session_id: str, detail: str, account: Account | None
                          ) -> OutcomeLostError:
    return OutcomeLostError(session_id, detail, account=account)


@attrs.frozen
class ConnectResult:
    """How one session ended. ``account`` is fetched on success (None if that fetch failed, and
    ``account_error`` says why: a failed fetch never turns a success into a failure)."""

    session: OAuthSession
    status: SessionStatus
    email: str | None = None
    name: str | None = None
    error: str | None = None
    error_description: str | None = None
    account: Account | None = None
    account_error: str | None = None
    expected_email: str | None = None
    #: True when the one-time answer was lost and success was confirmed through GET accounts.
    reconciled: bool = False

    @property
    def ok(self) -> bool:
        """The session succeeded: *a* mailbox was connected, perhaps not the one expected (see
        :attr:`connected_expected`)."""
        return self.status is SessionStatus.SUCCESS

    @property
    def connected_expected(self) -> bool:
        """The session succeeded with the mailbox asked for: ``email`` equals
        ``expected_email`` (case and surrounding spaces aside). Without an ``expected_email``
        any mailbox is the one asked for, and this is :attr:`ok`."""
        if not self.ok or self.expected_email is None:
            return self.ok
        return (self.email is not None
                and self.email.strip().lower() == self.expected_email.strip().lower())

    @property
    def email_mismatch(self) -> bool:
        """A mailbox other than ``expected_email`` was connected."""
        return (
            self.ok
            and self.expected_email is not None
            and self.email is not None
            and self.email.strip().lower() != self.expected_email.strip().lower()
        )

    def to_json(self) -> str:
        """This result as JSON text (its session and account included), which
        :meth:`from_json` turns back into an equal result. It holds the session's ``auth_url``
        and the mailbox's address: keep it out of logs."""
        return to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes | bytearray) -> ConnectResult:
        """The result :meth:`to_json` wrote. Raises
        :class:`~instantly_oauth_async.ConfigurationError` (a ``ValueError``) for text that is
        not JSON or not a result; its message names the faulty field, never a value."""
        return from_json(text, cls)


class ClosedDuringFetchError(ClientStateError):
    """A reconciliation's account read was cut short because the manager closed: nothing is
    known, so nothing is decided (the session is handed over, and its adopter reconciles)."""


#: ``account_error`` of a success whose account read the manager's closing cut short.
CLOSED_DURING_FETCH = ("not fetched: the manager closed during the account read (the mailbox "
                       "is connected; read it with client.get_account)")


class Outcomes:
    """Turns what the server said (or failed to say) into a :class:`ConnectResult`."""

    def __init__(
        self, reads: Reads, clock: Clock, retry: RetryPolicy, rng: random.Random, *,
        fetch_account: bool, account_wait: float = 60.0,
    ) -> None:
        self._reads = reads
        self._account_wait = account_wait
        self._clock = clock
        self._retry = retry
        self._rng = rng
        self._fetch_account = fetch_account
        # Account reads under way; when the manager closes each gets a bound (real time).
        self._fetches: set[anyio.CancelScope] = set()
        self._cut_at = math.inf

    def closing(self, within: float) -> None:
        """The manager closes: every account read, under way or to come, ends within
        ``within`` seconds of real time (a success is then stored without its account)."""
        self._cut_at = min(self._cut_at, anyio.current_time() + within)
        for scope in self._fetches:
            scope.deadline = min(scope.deadline, self._cut_at)

    @contextmanager
    def _cuttable(self) -> Iterator[anyio.CancelScope]:
        scope = anyio.CancelScope(deadline=self._cut_at)
        self._fetches.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._fetches.discard(scope)

    async def conclude(
        self, session: OAuthSession, status: OAuthStatus, expected_email: str | None, *,
        cancelled: bool,
    ) -> ConnectResult:
        """A terminal status as a result; the account is fetched on success unless ``cancelled``."""
        fields = {name: getattr(status, name) for name in _RESULT_FIELDS}
        account, account_error = None, None
        wanted = self._fetch_account and not cancelled
        if status.status is SessionStatus.SUCCESS and wanted and status.email:
            with self._cuttable() as scope:
                account, account_error = await self.account(status.email,
                                                            provider=session.provider.value)
            if scope.cancelled_caught:
                account, account_error = None, CLOSED_DURING_FETCH
        elif status.status is SessionStatus.SUCCESS and self._fetch_account and cancelled:
            account_error = "not fetched: the session was cancelled"
        return ConnectResult(session, status.status, **fields, account=account,
                             account_error=account_error, expected_email=expected_email)

    def expired(self, session: OAuthSession, expected_email: str | None) -> ConnectResult:
        """Given up on our own: still pending well past the session's lifetime."""
        return ConnectResult(
            session, SessionStatus.EXPIRED, error="expired",
            error_description="still pending well past expires_at", expected_email=expected_email)

    async def account(self, email: str, *, provider: str | None = None
                      ) -> tuple[Account | None, str | None]:
        """The account, or why not; retried (a GET of an account is safe to repeat). Each
        attempt, its wait for a budget slot included, is bounded by ``account_wait``."""
        error = "not attempted"
        for attempt in range(1, self._retry.attempts + 1):
            try:
                with self._clock.deadline(self._account_wait) as scope:
                    account = await self._reads.account(email, provider=provider)
                if scope.cancelled_caught:
                    return None, f"no account read within {self._account_wait:g} s"
            except RateLimitedError as exc:
                await self._reads.hold_back(exc.retry_after)
                error = str(exc)
                continue
            except (TransportError, ServerError, MalformedResponseError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                await self._clock.sleep(self._retry.delay(attempt, self._rng))
                continue
            except InstantlyError as exc:
                return None, f"{type(exc).__name__}: {exc}"
            return account, None
        return None, error

    async def reconcile(
        self, session: OAuthSession, expected_email: str | None, why: str
    ) -> ConnectResult:
        """The one-time answer is gone: confirm a success through GET accounts, or say it's lost.

        Never reports ERROR, EXPIRED or PENDING: a lost answer may have been a success.
        """
        email = expected_email
        if email is None:
            raise OutcomeLostError(
                session.session_id, f"{why}; pass expected_email to let the library reconcile")
        with self._cuttable() as scope:
            account, account_error = await self.account(email, provider=session.provider.value)
        if scope.cancelled_caught:
            raise ClosedDuringFetchError(
                f"session {session.session_id}: the manager closed while reconciling")
        if account is None:
            raise OutcomeLostError(
                session.session_id, f"{why}; {email} is not connected ({account_error})")
        # Only an account *created* during the session's life proves that the session connected
        # it: an update stamp also moves when anyone edits the account's settings, and a
        # reconnect of a mailbox connected before cannot be told from such an edit. The Date
        # header has whole seconds, so only a creation after the init's own second counts:
        # erring this way costs a false "lost", never a false success.
        if session.server_date is not None:
            began = session.server_date + timedelta(seconds=1)
        else:
            began = session.expires_at - timedelta(seconds=DOCUMENTED_TTL)
        if not began <= account.timestamp_created <= session.expires_at:
            when = "before this session began" if account.timestamp_created < began \
                else "after this session expired"
            raise OutcomeLostError(
                session.session_id,
                f"{why}; {email} was connected {when}, so its account cannot tell whether "
                "this session connected it", account=account)
        logger.info("session %s reconciled as success through GET accounts",
                    session_key(session.session_id))
        return ConnectResult(session, SessionStatus.SUCCESS, email=account.email,
                             name=" ".join(p for p in (account.first_name, account.last_name) if p)
                             or None, account=account, expected_email=email, reconciled=True)
