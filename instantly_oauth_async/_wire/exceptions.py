"""Every exception the library raises, one tree under :class:`InstantlyError`::

    InstantlyError
    ├── ConfigurationError (also ValueError)      bad argument: base URL, provider, email, limit
    │   └── EnvironmentVariableError              ``from_env``: a variable missing or malformed;
    │                                             ``variable`` names it
    ├── ClientStateError (also RuntimeError)      used before open or after close
    ├── TransportError                            no HTTP answer: refused, reset, DNS
    │   └── RequestTimeoutError                   no answer in time (also TimeoutError)
    ├── MalformedResponseError                    an answer we cannot read: not JSON, wrong shape
    │   └── ResponseTooLargeError                 body over the size cap
    ├── APIError                                  the server answered with an error status:
    │   │                                         ``status``, ``error``, ``message``, ``method``,
    │   │                                         ``url`` and ``headers`` (secrets redacted)
    │   ├── BadRequestError                       400 and other 4xx not listed below
    │   ├── UnauthorizedError                     401: missing, invalid or revoked key
    │   ├── PaymentRequiredError                  402: no active paid plan
    │   ├── ForbiddenError                        403: the key lacks the scope
    │   ├── NotFoundError                         404: unknown, consumed or foreign session/account
    │   ├── RateLimitedError                      429: ``retry_after`` seconds, when sent
    │   └── ServerError                           5xx
    │       └── ServiceUnavailableError           503: the provider throttles Instantly
    ├── IPBlockedError                            the server blocked this IP's inits (a 429 asking
    │                                             for more than one init window) for longer than
    │                                             the caller will wait
    ├── CircuitOpenError                          init breaker open past the caller's deadline
    ├── StartTimeoutError (also TimeoutError)     start() could not get a session in time (rate
    │                                             budget, an ordinary 429's wait, retries)
    ├── SessionCancelledError                     pending.cancel() stopped the session's polling
    ├── OutcomeLostError (in ``_outcome``)        the outcome cannot be known: a one-time answer
    │                                             lost on the wire, or no read possible by the
    │                                             deadline; ``account`` when one is connected
    ├── StoreError (in ``_store``)                the shared store answered an error that waiting
    │                                             will not cure (ACL, wrong type, old server)
    └── RegistryUnavailableError (``_registry``)  the session registry's store cannot be reached
                                                  for now: retry the step

``StartTimeoutError`` and ``RequestTimeoutError`` are the builtin ``TimeoutError`` and
``asyncio.TimeoutError`` on every supported Python (on 3.10 those are two different classes).

No exception carries the API key: messages are built from status, error code and the server's
message only, never from request headers. ``APIError.headers`` are the response's, with
credentials (``Authorization``, cookies, tokens) and any value holding the key replaced by
``<redacted>``; ``APIError.url`` has no user, password, query values or fragment.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = [
    "APIError",
    "BadRequestError",
    "CircuitOpenError",
    "ClientStateError",
    "ConfigurationError",
    "EnvironmentVariableError",
    "ForbiddenError",
    "IPBlockedError",
    "InstantlyError",
    "MalformedResponseError",
    "NotFoundError",
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


class EnvironmentVariableError(ConfigurationError):
    """A variable that ``OAuthManager.from_env`` needs is missing, or its value is malformed.

    ``variable`` is its name (``"INSTANTLY_API_KEY"``, ``"INSTANTLY_STORE"``, ...). The message
    names it and says what is expected; it never holds the API key, nor a password or query
    value of a URL.
    """

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.variable, str(self)))


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


if sys.version_info >= (3, 11):
    _Timeout = TimeoutError  # asyncio.TimeoutError is the builtin since 3.11
else:

    class _Timeout(TimeoutError, asyncio.TimeoutError):
        """Both timeouts at once: on 3.10 ``asyncio.TimeoutError`` is a class of its own."""


class RequestTimeoutError(TransportError, _Timeout):
    """No answer within the client's timeout; also ``TimeoutError`` and ``asyncio.TimeoutError``."""


class MalformedResponseError(InstantlyError):
    """The server answered with something that is not the documented shape."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ResponseTooLargeError(MalformedResponseError):
    """The response body exceeded the client's size cap."""


REDACTED = "<redacted>"
#: The key of :func:`log_tag`: random for each process, so a tag cannot be traced back.
_TAG_SALT = secrets.token_bytes(16)


def log_tag(kind: str, value: str) -> str:
    """What stands for a session id or an email in a log record: ``<session:3f2a9c0b1d4e>``, a
    keyed hash, the same for one value within the process (so a session's records pair up),
    that cannot be traced back to the value."""
    digest = hmac.new(_TAG_SALT, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return f"<{kind}:{digest.hexdigest()[:12]}>"


def session_key(session_id: str) -> str:
    """How every log record names a session (its ``session_key``, and in a request's ``path``):
    :func:`log_tag` of its id, never the id itself."""
    return log_tag("session", session_id)

_HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]] | None

#: A header whose name holds one of these carries a credential, whatever its value says
#: (``Authorization``, ``Proxy-Authorization``, ``Set-Cookie``, ``X-Api-Key``, ``X-Auth-Token``).
_SECRET_NAME_PARTS = ("auth", "cookie", "token", "secret", "passw", "api-key", "apikey", "api_key",
                      "session", "credential")


def redact_headers(headers: _HeadersLike, secrets: Iterable[str] = ()) -> CIMultiDictProxy[str]:
    """A read-only copy of ``headers`` with every credential replaced by ``<redacted>``.

    A header is a credential when its name says so (``Authorization``, ``Set-Cookie``, any name
    holding ``token``, ``secret``, ``session``, ...) or when its value holds one of ``secrets``.
    Repeated headers are kept, in order.
    """
    if headers is None:
        pairs: Iterable[tuple[str, str]] = ()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    hidden = [s for s in secrets if s]
    clean: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        lowered = str(name).lower()
        text = str(value)
        if any(part in lowered for part in _SECRET_NAME_PARTS) or any(
                secret in text for secret in hidden):
            text = REDACTED
        clean.add(str(name), text)
    return CIMultiDictProxy(clean)


def redact_url(url: str | URL | None) -> str | None:
    """``url`` without user, password or fragment, and with every query value redacted (one
    too malformed to parse without user, password, query or fragment)."""
    if url is None:
        return None
    try:  # yarl parses some parts lazily: a bad port raises on first use, not in URL()
        parsed = url if isinstance(url, URL) else URL(str(url), encoded=True)
        if parsed.user is None and parsed.password is None and not parsed.query_string \
                and not parsed.fragment:
            return str(parsed)
        parsed = parsed.with_user(None).with_fragment(None)
        if parsed.query_string:
            parsed = parsed.with_query([(key, "redacted") for key in parsed.query])
        return str(parsed)
    except (TypeError, ValueError):
        return _cut(str(url))


def _cut(text: str) -> str:
    """A URL too malformed to parse (a port yarl cannot read), cut by hand: no user, password,
    query or fragment; without a scheme, nothing of it."""
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme.isalpha():
        return REDACTED
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


class APIError(InstantlyError):
    """The server answered with an error status.

    ``status`` is the HTTP status, ``error`` the short error name of the body (``"Not Found"``) and
    ``message`` the server's human-readable message, when the body had them. ``method`` and
    ``url`` name the request, ``headers`` are the response's (a read-only case-insensitive
    multidict); all three are ``None`` or empty when the error was built by hand. Credentials are
    redacted on the way in (see :func:`redact_headers` and :func:`redact_url`).
    """

    def __init__(
        self,
        status: int,
        error: str | None = None,
        message: str | None = None,
        *,
        method: str | None = None,
        url: str | URL | None = None,
        headers: _HeadersLike = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.status = status
        self.error = error
        self.message = message
        self.method = method
        self.url = redact_url(url)
        self.headers = redact_headers(headers, secrets)
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [str(self.status)]
        if self.error:
            parts.append(self.error)
        text = " ".join(parts)
        return f"{text}: {self.message}" if self.message else text

    def __reduce__(self) -> tuple[object, ...]:
        state = {**self.__dict__, "headers": list(self.headers.items())}
        return (_rebuild_api_error, (type(self), self.status, self.error, self.message, state))


def _rebuild_api_error(
    cls: type[APIError], status: int, error: str | None, message: str | None,
    state: dict[str, Any],
) -> APIError:
    """Unpickle an :class:`APIError` of any class: its fields, then every attribute it had."""
    error_obj = cls(status, error, message)
    headers = state.get("headers")
    error_obj.__dict__.update(state)
    error_obj.headers = CIMultiDictProxy(CIMultiDict(headers or ()))
    return error_obj


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
        method: str | None = None,
        url: str | URL | None = None,
        headers: _HeadersLike = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, error, message, method=method, url=url, headers=headers,
                         secrets=secrets)


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
        method: str | None = None,
        url: str | URL | None = None,
        headers: _HeadersLike = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, error, message, method=method, url=url, headers=headers,
                         secrets=secrets)


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


class StartTimeoutError(InstantlyError, _Timeout):
    """``start()`` could not create a session within its deadline: the rate budget, an ordinary
    429's ``Retry-After`` or the retries would take longer than the time left.

    Also ``TimeoutError`` and ``asyncio.TimeoutError``, the same on Python 3.10 to 3.13.
    """


class SessionCancelledError(InstantlyError):
    """The session was cancelled with ``PendingConnection.cancel()`` before it finished."""
