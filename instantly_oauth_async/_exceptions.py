"""Every exception the library raises, one tree under :class:`InstantlyError`::

    InstantlyError
    ├── ConfigurationError (also ValueError)      bad argument: base URL, provider, email, limit
    ├── ClientStateError (also RuntimeError)      used before open or after close
    ├── TransportError                            no HTTP answer: refused, reset, DNS
    │   └── RequestTimeoutError                   no answer in time
    ├── MalformedResponseError                    an answer we cannot read: not JSON, wrong shape
    │   └── ResponseTooLargeError                 body over the size cap
    ├── APIError                                  the server answered with an error status
    │   ├── BadRequestError                       400 and other 4xx not listed below
    │   ├── UnauthorizedError                     401: missing, invalid or revoked key
    │   ├── PaymentRequiredError                  402: no active paid plan
    │   ├── ForbiddenError                        403: the key lacks the scope
    │   ├── NotFoundError                         404: unknown, consumed or foreign session/account
    │   ├── RateLimitedError                      429: ``retry_after`` seconds, when sent
    │   └── ServerError                           5xx
    │       └── ServiceUnavailableError           503: the provider throttles Instantly
    ├── IPBlockedError                            a 429 block longer than the caller will wait
    ├── CircuitOpenError                          init breaker open past the caller's deadline
    ├── StartTimeoutError (also TimeoutError)     start() could not get a session in time
    ├── SessionCancelledError                     pending.cancel() stopped the session's polling
    └── OutcomeLostError                          a one-time terminal answer was lost on the wire

No exception carries the API key: messages are built from status, error code and the server's
message only, never from request headers.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import Account

__all__ = [
    "APIError",
    "BadRequestError",
    "CircuitOpenError",
    "ClientStateError",
    "ConfigurationError",
    "ForbiddenError",
    "IPBlockedError",
    "InstantlyError",
    "MalformedResponseError",
    "NotFoundError",
    "OutcomeLostError",
    "PaymentRequiredError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ResponseTooLargeError",
    "ServerError",
    "ServiceUnavailableError",
    "SessionCancelledError",
    "StartTimeoutError",
    "TransportError",
    "UnauthorizedError",
]


class InstantlyError(Exception):
    """Base of every exception raised by instantly_oauth_async."""


class ConfigurationError(InstantlyError, ValueError):
    """An argument the library cannot work with."""


class ClientStateError(InstantlyError, RuntimeError):
    """A client or manager used before it was opened, or after it was closed."""


class TransportError(InstantlyError):
    """The request got no HTTP answer (refused, reset, DNS failure).

    ``maybe_sent`` is True when the request may have reached the server before the failure, so the
    server may have acted on it.
    """

    def __init__(self, message: str, *, maybe_sent: bool = True) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class RequestTimeoutError(TransportError):
    """No answer within the client's timeout."""


class MalformedResponseError(InstantlyError):
    """The server answered with something that is not the documented shape."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ResponseTooLargeError(MalformedResponseError):
    """The response body exceeded the client's size cap."""


class APIError(InstantlyError):
    """The server answered with an error status.

    ``status`` is the HTTP status, ``error`` the short error name of the body (``"Not Found"``) and
    ``message`` the server's human-readable message, when the body had them.
    """

    def __init__(self, status: int, error: str | None = None, message: str | None = None) -> None:
        self.status = status
        self.error = error
        self.message = message
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [str(self.status)]
        if self.error:
            parts.append(self.error)
        text = " ".join(parts)
        return f"{text}: {self.message}" if self.message else text

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.status, self.error, self.message))


class BadRequestError(APIError):
    """400, or any 4xx the API does not document."""


class UnauthorizedError(APIError):
    """401: the API key is missing, invalid or revoked."""


class PaymentRequiredError(APIError):
    """402: the workspace has no active paid plan."""


class ForbiddenError(APIError):
    """403: the API key lacks the scope the operation needs."""


class NotFoundError(APIError):
    """404: the session is unknown, already consumed or another workspace's; or no such account."""


class _RetryAfterMixin:
    retry_after: float | None


class RateLimitedError(_RetryAfterMixin, APIError):
    """429. ``retry_after`` is the server's ``Retry-After`` in seconds (None when absent)."""

    def __init__(
        self,
        status: int = 429,
        error: str | None = None,
        message: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, error, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_retry_after, (type(self), self.status, self.error, self.message,
                                       self.retry_after))


class ServerError(APIError):
    """5xx from the server."""


class ServiceUnavailableError(_RetryAfterMixin, ServerError):
    """503: the upstream provider is rate-limiting Instantly; retry after a short delay."""

    def __init__(
        self,
        status: int = 503,
        error: str | None = None,
        message: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, error, message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_retry_after, (type(self), self.status, self.error, self.message,
                                       self.retry_after))


def _rebuild_retry_after(
    cls: type[RateLimitedError | ServiceUnavailableError],
    status: int,
    error: str | None,
    message: str | None,
    retry_after: float | None,
) -> APIError:
    return cls(status, error, message, retry_after=retry_after)


class IPBlockedError(InstantlyError):
    """The server blocked init for this provider longer than the caller is willing to wait.

    ``until`` is an aware UTC datetime; ``retry_after`` the seconds left when it was raised.
    """

    def __init__(self, provider: str, until: datetime, retry_after: float) -> None:
        self.provider = provider
        self.until = until
        self.retry_after = retry_after
        super().__init__(
            f"{provider} init is blocked by the server for {retry_after:.0f} s more "
            f"(until {until.isoformat(timespec='seconds')})"
        )


class CircuitOpenError(InstantlyError):
    """The provider's init circuit is open and stays open past the caller's deadline."""

    def __init__(self, provider: str, retry_after: float) -> None:
        self.provider = provider
        self.retry_after = retry_after
        super().__init__(
            f"{provider} init circuit is open after upstream failures; "
            f"next attempt in {retry_after:.1f} s"
        )


class StartTimeoutError(InstantlyError, TimeoutError):
    """``start()`` waited its whole deadline (rate budget, retries) without creating a session."""


class SessionCancelledError(InstantlyError):
    """The session was cancelled with ``PendingConnection.cancel()`` before it finished."""


class OutcomeLostError(InstantlyError):
    """The session's one-time terminal answer was lost and could not be reconciled.

    The server deletes a finished session on its first read; when that response is lost on the
    wire, later reads get 404. Without ``expected_email`` the library cannot tell a connected
    mailbox from a failed one, so it says so instead of guessing.
    """

    def __init__(self, session_id: str, detail: str, *, account: Account | None = None) -> None:
        self.session_id = session_id
        #: The mailbox's account as it stands, when ``expected_email`` named one that is
        #: connected but the evidence could not tell whether this session connected it.
        self.account = account
        super().__init__(f"outcome of OAuth session {session_id} was lost: {detail}")
