"""Status, headers and body to data or a typed exception, with no socket involved."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from instantly_oauth_async import (
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
from instantly_oauth_async._wire.sansio import (
    MAX_RETRY_AFTER,
    decipher_response,
    encode_segment,
    parse_retry_after,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def body(status: int, error: str, message: str) -> bytes:
    return f'{{"statusCode": {status}, "error": "{error}", "message": "{message}"}}'.encode()


def test_success_returns_decoded_json() -> None:
    assert decipher_response(200, {}, b'{"status": "pending"}') == {"status": "pending"}


def test_success_that_is_not_json_is_malformed() -> None:
    with pytest.raises(MalformedResponseError):
        decipher_response(200, {}, b"<html>ok</html>")


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (401, UnauthorizedError), (402, PaymentRequiredError),
     (403, ForbiddenError), (404, NotFoundError), (418, BadRequestError), (500, ServerError),
     (502, ServerError), (503, ServiceUnavailableError), (429, RateLimitedError)],
)
def test_each_status_maps_to_its_class_and_keeps_the_fields(
    status: int, cls: type[APIError]
) -> None:
    with pytest.raises(cls) as info:
        decipher_response(status, {}, body(status, "Some Error", "what happened"))
    assert info.value.status == status
    assert info.value.error == "Some Error"
    assert info.value.message == "what happened"


def test_html_error_page_from_a_proxy_maps_by_status() -> None:
    with pytest.raises(ServerError) as info:
        decipher_response(502, {}, b"<html><h1>502 Bad Gateway</h1></html>")
    assert info.value.status == 502 and info.value.message is None


def test_invalid_utf8_error_body_still_maps_by_status() -> None:
    with pytest.raises(UnauthorizedError):
        decipher_response(401, {}, b"\xff\xfe\x00garbage")


def test_redirect_is_malformed_not_followed() -> None:
    with pytest.raises(MalformedResponseError, match="redirect"):
        decipher_response(302, {"Location": "https://evil.example/"}, b"")


def test_429_carries_retry_after_seconds() -> None:
    with pytest.raises(RateLimitedError) as info:
        decipher_response(429, {"Retry-After": "1800"}, body(429, "Too Many Requests", "x"))
    assert info.value.retry_after == 1800


def test_429_retry_after_as_http_date() -> None:
    headers = {"Retry-After": "Mon, 23 Nov 2026 12:00:30 GMT"}
    with pytest.raises(RateLimitedError) as info:
        decipher_response(429, headers, b"", now=NOW)
    assert info.value.retry_after == 30


def test_duplicate_retry_after_headers_take_the_longest() -> None:
    headers = CIMultiDict([("Retry-After", "5"), ("Retry-After", "60"), ("Retry-After", "x")])
    with pytest.raises(RateLimitedError) as info:
        decipher_response(429, headers, b"")
    assert info.value.retry_after == 60


@pytest.mark.parametrize("raw", ["", "  ", "-5", "NaN", "nan", "inf", "-inf", "soon",
                                 "Mon, 99 Foo 2026 12:00:00 GMT", "\x00"])
def test_garbage_retry_after_gives_none(raw: str) -> None:
    assert parse_retry_after(raw, now=NOW) is None


def test_huge_retry_after_is_capped() -> None:
    assert parse_retry_after("1e9", now=NOW) == MAX_RETRY_AFTER
    assert parse_retry_after("99999999999999999999", now=NOW) == MAX_RETRY_AFTER


def test_retry_after_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Mon, 23 Nov 2026 11:00:00 GMT", now=NOW) == 0


def test_fractional_retry_after_is_accepted() -> None:
    assert parse_retry_after("1.5", now=NOW) == 1.5


@given(st.text(max_size=40))
def test_retry_after_never_raises_and_is_bounded(raw: str) -> None:
    value = parse_retry_after(raw, now=NOW)
    assert value is None or 0 <= value <= MAX_RETRY_AFTER


@given(st.text(min_size=1, max_size=40))
def test_encoded_segment_is_one_segment_that_decodes_back(value: str) -> None:
    encoded = encode_segment(value)
    assert "/" not in encoded and "?" not in encoded and "#" not in encoded
    assert unquote(encoded) == value


def test_retry_after_http_date_uses_reference_now() -> None:
    later = NOW + timedelta(seconds=10)
    assert parse_retry_after("Mon, 23 Nov 2026 12:00:30 GMT", now=later) == 20
