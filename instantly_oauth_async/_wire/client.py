"""``InstantlyClient``: one typed method per operation over one ``aiohttp.ClientSession``.

The client knows nothing of limits or polling; it sends one request per call and maps the answer
to a record or a typed exception (see :mod:`instantly_oauth_async._wire.exceptions`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar

import aiohttp
import attrs
from yarl import URL

from .convert import coerce_provider, structure
from .endpoint import path_prefix, validate_api_key, validate_base_url
from .exceptions import (
    ClientStateError,
    ConfigurationError,
    InstantlyError,
    MalformedResponseError,
    RequestTimeoutError,
    ResponseTooLargeError,
    TransportError,
    log_tag,
)
from .models import Account, OAuthSession, OAuthStatus, Provider
from .sansio import decipher_response, encode_segment, parse_http_date

__all__ = ["DEFAULT_BASE_URL", "OWN_POOL", "InstantlyClient"]

#: Connections in the pool of the session a client makes for itself (``session=None``).
OWN_POOL = 100

logger = logging.getLogger("instantly_oauth_async")

DEFAULT_BASE_URL: Final = "https://api.instantly.ai"
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_MAX_BODY: Final = 1 << 20  # 1 MiB: an Account is a few KiB
_READ_CHUNK: Final = 64 * 1024  # the decoded body is read this much at a time, up to the cap
# Keys the hashes that stand for a session id or an email in a logged path: one value within a
# process (two reads of one mailbox show the same tag), unguessable and never logged, so a tag
# cannot be matched to an address outside the process.

try:
    __version__ = version("instantly-oauth-async")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

USER_AGENT: Final = f"instantly-oauth-async/{__version__} aiohttp/{aiohttp.__version__}"


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class _Secret:
    """Holds the API key; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the API key is not picklable")


class InstantlyClient:
    """Async client for the four OAuth-connection operations of the Instantly API v2.

    Use it as an async context manager, or call :meth:`aclose` when done. Pass ``session`` to
    borrow an ``aiohttp.ClientSession`` you own: the client then never closes it. Redirects are
    never followed (the API does not redirect, and a redirect must not carry the key elsewhere);
    bodies over ``max_body_size`` bytes raise :class:`ResponseTooLargeError`: the cap counts the
    decoded bytes, so a small gzip body that would inflate past it is cut off once the cap is
    passed (aiohttp decodes at most a few 64 KiB chunks ahead of the read). An error status is
    always mapped to the library's own exceptions, even on a borrowed session made with
    ``raise_for_status=True``.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | URL = DEFAULT_BASE_URL,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_body_size: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._key = _Secret(validate_api_key(api_key))
        self._base = validate_base_url(base_url)
        self._prefix = path_prefix(self._base)
        if not timeout > 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        if max_body_size < 1:
            raise ConfigurationError("max_body_size must be positive")
        self._timeout = float(timeout)
        self._max_body = int(max_body_size)
        self._session = session
        self._owns_session = session is None
        self._state = _State.UNOPENED

    @property
    def base_url(self) -> str:
        """The API root requests go to, as a string (``https://api.instantly.ai`` by default)."""
        return str(self._base)

    def __repr__(self) -> str:
        return f"<InstantlyClient base_url={str(self._base)!r} state={self._state.value}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> InstantlyClient:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _open(self) -> aiohttp.ClientSession:
        if self._state is _State.CLOSED:
            raise ClientStateError("this InstantlyClient is closed; create a new one")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=OWN_POOL, limit_per_host=OWN_POOL),
                auto_decompress=True,
            )
            # aiohttp resends an idempotent request by itself when a reused keep-alive
            # connection drops (RFC 9112 9.3.1). Here that is a second request on one slot of
            # the budget, and a second status read that finds the one-time answer consumed:
            # every request is sent once, and a failure reaches our own retry logic.
            # (A borrowed session keeps its own setting.)
            if hasattr(self._session, "_retry_connection"):
                self._session._retry_connection = False
        self._state = _State.OPENED
        return self._session

    async def aclose(self) -> None:
        """Close the owned HTTP session (a borrowed one stays open). Safe to call twice."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._owns_session and self._session is not None:
            await self._session.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", None) is _State.OPENED and getattr(self, "_owns_session", False):
            _warn(f"unclosed {self!r}; use 'async with' or aclose()", ResourceWarning, stacklevel=1)

    # -- operations --------------------------------------------------------------------------

    async def init_oauth(self, provider: Provider | str) -> OAuthSession:
        """``POST /api/v2/oauth/{provider}/init``: a new session and the URL the person opens.

        Sent once: this method never retries, since every attempt spends the init rate budget.
        """
        chosen = coerce_provider(provider)
        path = f"/api/v2/oauth/{chosen.value}/init"
        data, date, status = await self._request("POST", path, operation="init", shown=path,
                                                 provider=chosen.value)
        if isinstance(data, dict):
            data = {**data, "provider": chosen.value}
        session = structure(data, OAuthSession, status=status)
        if not session.session_id or not session.auth_url:
            raise MalformedResponseError("init response has an empty session_id or auth_url",
                                         status=status)
        return _with_date(session, date)

    async def get_oauth_status(
        self, session_id: str, *, timeout: float | None = None
    ) -> OAuthStatus:
        """``GET /api/v2/oauth/session/status/{id}``.

        A ``success`` or ``error`` answer is the only one the server gives: it deletes the session
        on that read, and a later call raises :class:`NotFoundError`.
        """
        sid = _require_text(session_id, "session_id")
        data, date, status = await self._request(
            "GET", f"/api/v2/oauth/session/status/{encode_segment(sid)}", timeout=timeout,
            operation="status", shown="/api/v2/oauth/session/status/", tag=("session", sid),
        )
        return _with_date(structure(data, OAuthStatus, status=status), date)

    async def get_account(self, email: str, *, timeout: float | None = None) -> Account:
        """``GET /api/v2/accounts/{email}``: the connected mailbox's account record."""
        address = _require_text(email, "email")
        if "@" not in address:
            raise ConfigurationError("email must be an email address")
        data, _, status = await self._request(
            "GET", f"/api/v2/accounts/{encode_segment(address)}", timeout=timeout,
            operation="account", shown="/api/v2/accounts/", tag=("email", address),
        )
        return structure(data, Account, status=status)

    # -- the one place that does I/O ---------------------------------------------------------

    async def _request(
        self, method: str, path: str, *, timeout: float | None = None, operation: str,
        shown: str, tag: tuple[str, str] | None = None, provider: str | None = None,
    ) -> tuple[Any, str | None, int]:
        """Decoded JSON of a 2xx answer, its ``Date`` header and its status; else raises.

        Logs one record per request, however it ended (``shown`` is the path as logged, then
        ``tag``'s value replaced by its :func:`log_tag`, made only when a record is)."""
        session = self._open()
        url = self._base.with_path(self._prefix + path, encoded=True)
        label = _Label(method, shown, operation, provider, tag)
        headers = {
            "Authorization": f"Bearer {self._key.reveal()}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        started = time.perf_counter()
        failure: InstantlyError
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                allow_redirects=False,
                # A borrowed session may raise on 4xx/5xx by itself: the status is ours to map.
                raise_for_status=False,
                # aiohttp decodes at most this much ahead of our reads: the cap stays tight.
                read_bufsize=_READ_CHUNK,
                timeout=aiohttp.ClientTimeout(total=timeout or self._timeout),
            ) as response:
                body = await self._read_capped(response)
                status, response_headers = response.status, response.headers
        except ResponseTooLargeError as exc:
            failure = exc
        except aiohttp.ClientConnectorError as exc:
            failure = TransportError(
                f"{method} {path}: cannot connect to {self._base}: {_why_not(exc, self._base)}",
                maybe_sent=False)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            failure = RequestTimeoutError(f"{method} {path}: no answer in time")
        except aiohttp.ClientError as exc:
            # Built from the class name only: aiohttp errors can hold request_info with headers.
            failure = TransportError(f"{method} {path}: {type(exc).__name__}")
        except asyncio.CancelledError:
            _log_request(label, started, None, "CancelledError")
            raise
        else:
            date = response_headers.get("Date")
            try:
                data = decipher_response(status, response_headers, body, method=method,
                                         url=str(url), secrets=(self._key.reveal(),))
            except InstantlyError as exc:
                _log_request(label, started, status, exc)
                raise
            _log_request(label, started, status, None)
            return data, date, status
        _log_request(label, started, getattr(failure, "status", None), failure)
        # Raised outside the except block: no __context__ keeps aiohttp's request_info alive.
        raise failure

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        """The decoded body, refused past ``max_body_size`` decoded bytes.

        A plain body whose ``Content-Length`` is over the cap is refused before reading. Any other
        is read from the decoded stream a chunk at a time, and the read stops as soon as the
        count passes the cap: a compressed ``Content-Length`` says nothing of what it inflates to.
        """
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        length = response.content_length
        if length is not None and length > self._max_body and encoding in ("", "identity"):
            raise ResponseTooLargeError(
                f"response body of {length} bytes exceeds the {self._max_body}-byte cap",
                status=response.status,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > self._max_body:
                raise ResponseTooLargeError(
                    f"response body exceeds the {self._max_body}-byte cap once decoded",
                    status=response.status,
                )
            chunks.append(chunk)
        return b"".join(chunks)


def _why_not(exc: aiohttp.ClientConnectorError, base: URL) -> str:
    """What failed, in words: not aiohttp's ``ssl:default [Connect call failed ...]``."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return ("the TLS handshake failed (a plain-http server answering on this https URL?)"
                if base.scheme == "https" else "the TLS handshake failed")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the host name {base.host} does not resolve (DNS)"
    error = exc.os_error
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(error, TimeoutError):
        return "the connection timed out"
    return error.strerror or type(error).__name__


class _Label(NamedTuple):
    """A request as its log record names it."""

    method: str
    path: str  #: as logged, then ``tag``'s value (a session id or email) as its log_tag
    operation: str
    provider: str | None
    tag: tuple[str, str] | None = None  #: (kind, value)


def _log_request(label: _Label, started: float, status: int | None,
                 error: BaseException | str | None) -> None:
    """The one record of one request: ``request_finished``, at WARNING for a 429, else DEBUG."""
    method, shown, operation, provider, tag = label
    level = logging.WARNING if status == 429 else logging.DEBUG
    if not logger.isEnabledFor(level):
        return
    shown += "" if tag is None else log_tag(*tag)  # made here only: most requests log nothing
    duration = time.perf_counter() - started
    error_type = error if isinstance(error, str) or error is None else type(error).__name__
    retry_after = getattr(error, "retry_after", None)
    outcome = " ".join(str(part) for part in (status, error_type) if part is not None)
    logger.log(level, "%s %s -> %s in %.1f ms", method, shown, outcome, duration * 1000,
               extra={"iox_event": "request_finished", "operation": operation,
                      "provider": provider, "method": method, "path": shown, "status": status,
                      "error_type": error_type, "duration": duration,
                      "retry_after": retry_after})


def _require_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} must be a non-empty string")
    return value


_R = TypeVar("_R", OAuthSession, OAuthStatus)


def _with_date(record: _R, date: str | None) -> _R:
    """``record`` with ``server_date`` from the response's ``Date`` header, when it had one."""
    parsed = parse_http_date(date)
    return record if parsed is None else attrs.evolve(record, server_date=parsed)
