"""Pure functions between HTTP and records: no sockets, no clocks, no aiohttp.

``decipher_response`` maps ``(status, headers, body)`` to decoded JSON or a typed exception, the way
gidgethub's ``sansio.decipher_response`` does; the client is the only caller that touches the wire.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from .exceptions import (
    APIError,
    BadRequestError,
    ForbiddenError,
    MalformedResponseError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    UnauthorizedError,
)

__all__ = [
    "MAX_RETRY_AFTER",
    "decipher_response",
    "encode_segment",
    "parse_http_date",
    "parse_retry_after",
]

#: No ``Retry-After`` is believed beyond this (seconds); the longest documented block is 24 h.
MAX_RETRY_AFTER = 86_400.0 * 2


#: What ``quote(value, safe="")`` leaves as it is, and nothing else: a segment made only of
#: these is returned without the call (a session id is one).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+").fullmatch


def encode_segment(value: str) -> str:
    """Percent-encode ``value`` as exactly one path segment (``/ ? # % +`` included)."""
    if _UNRESERVED(value) is not None:
        return value
    return quote(value, safe="")


def parse_http_date(value: str | None) -> datetime | None:
    """An aware UTC datetime from an HTTP date header, or None when absent or unreadable."""
    if not value:
        return None
    return _parse_http_date(value)


@functools.lru_cache(maxsize=4)  # a Date header changes once a second: most answers repeat one
def _parse_http_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def parse_retry_after(
    values: list[str] | str | None, *, now: datetime | None = None
) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or an HTTP date), or None.

    Garbage (``""``, ``"NaN"``, ``"-5"``, a bad date) gives None, so the caller applies its own safe
    default; a huge value is capped at :data:`MAX_RETRY_AFTER`. With several headers the longest
    readable one wins: waiting too long costs time, waiting too little earns a longer block.
    """
    if values is None:
        return None
    candidates = [values] if isinstance(values, str) else list(values)
    best: float | None = None
    for raw in candidates:
        seconds = _one_retry_after(raw, now)
        if seconds is not None and (best is None or seconds > best):
            best = seconds
    return best


def _one_retry_after(raw: str, now: datetime | None) -> float | None:
    text = raw.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        # Leading zeros say nothing ("007" is 7); more digits than the cap has are the cap, read
        # without converting them (int() of thousands of digits is slow, then refused).
        digits = text.lstrip("0")
        if len(digits) > 12:
            return MAX_RETRY_AFTER
        return min(float(int(digits or "0")), MAX_RETRY_AFTER)
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:  # not RFC 9110, but servers send "1.5" and "1e3"; negative and non-finite are garbage
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, MAX_RETRY_AFTER)
    when = parse_http_date(text)
    if when is None:
        return None
    reference = now or datetime.now(timezone.utc)
    return min(max(0.0, (when - reference).total_seconds()), MAX_RETRY_AFTER)


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _NOT_JSON


_NOT_JSON = object()


def _error_fields(data: Any) -> tuple[str | None, str | None]:
    if not isinstance(data, dict):
        return None, None
    error, message = data.get("error"), data.get("message")
    return (
        error if isinstance(error, str) else None,
        message[:500] if isinstance(message, str) else None,
    )


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    402: PaymentRequiredError,
    403: ForbiddenError,
    404: NotFoundError,
}


def decipher_response(
    status: int,
    headers: Mapping[str, str] | Any,
    body: bytes,
    *,
    now: datetime | None = None,
    method: str | None = None,
    url: str | None = None,
    secrets: Iterable[str] = (),
) -> Any:
    """Decoded JSON of a 2xx response; a typed exception for anything else.

    ``headers`` is any mapping with case-insensitive ``get`` (and ``getall`` for repeated headers,
    as aiohttp's ``CIMultiDictProxy`` has). Error bodies ``{statusCode, error, message}`` and
    non-JSON bodies (an HTML page from a proxy) map to the same exception class for the status.
    An :class:`APIError` carries ``method``, ``url`` and the response's headers, redacted (any
    header value holding one of ``secrets`` too).

    A ``Retry-After`` given as an HTTP date is measured against the response's own ``Date``
    header when it has a readable one: both come from the server's clock, so a client clock
    minutes off changes nothing. Without it, against ``now`` (default: this host's clock).
    """
    data = _decode_json(body)
    if 200 <= status < 300:
        if data is _NOT_JSON:
            raise MalformedResponseError(f"{status} response is not JSON", status=status)
        return data
    if 300 <= status < 400:
        raise MalformedResponseError(
            f"unexpected redirect ({status}); redirects are not followed", status=status
        )
    error, message = _error_fields(data)  # not JSON (_NOT_JSON): no fields
    items = getattr(headers, "items", None)
    pairs: list[tuple[str, str]] | None = list(items()) if items is not None else None
    if status in (429, 503):
        getall = getattr(headers, "getall", None)
        raw = getall("Retry-After", None) if getall is not None else headers.get("Retry-After")
        server_now = parse_http_date(headers.get("Date"))
        retry_after = parse_retry_after(raw, now=server_now or now)
        limited = RateLimitedError if status == 429 else ServiceUnavailableError
        raise limited(status, error, message, retry_after=retry_after, method=method, url=url,
                      headers=pairs, secrets=secrets)
    if status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status >= 500:
        cls = ServerError
    elif 400 <= status < 500:
        cls = BadRequestError
    else:
        raise MalformedResponseError(f"unexpected HTTP status {status}", status=status)
    raise cls(status, error, message, method=method, url=url, headers=pairs, secrets=secrets)
