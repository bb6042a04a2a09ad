"""The sans-I/O layer at its edges (issue 27): status boundaries, the Date header as the
reference of an HTTP-date Retry-After, this host's clock without one, what an exception carries
and hides, and the readings of Retry-After that tests/test_sansio.py leaves open."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from multidict import CIMultiDict

from instantly_oauth_async import (
    APIError,
    BadRequestError,
    MalformedResponseError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
)
from instantly_oauth_async._wire.exceptions import REDACTED
from instantly_oauth_async._wire.sansio import (
    MAX_RETRY_AFTER,
    decipher_response,
    encode_segment,
    parse_http_date,
    parse_retry_after,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
LATER = "Mon, 23 Nov 2026 12:00:30 GMT"  # NOW + 30 s


def raised(status: int, headers: Any = None, body: bytes = b"", **kwargs: Any) -> Any:
    with pytest.raises(Exception) as info:  # noqa: PT011 - each test names the class it wants
        decipher_response(status, {} if headers is None else headers, body, **kwargs)
    return info.value


# -- statuses --------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_every_2xx_returns_its_json(status: int) -> None:
    assert decipher_response(status, {}, b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert decipher_response(status, {}, b"null") is None


@pytest.mark.parametrize("status", [300, 301, 302, 399])
def test_every_3xx_is_malformed_even_with_a_json_body(status: int) -> None:
    error = raised(status, {"Location": "https://x/"}, b'{"a": 1}')
    assert type(error) is MalformedResponseError
    assert str(error) == f"unexpected redirect ({status}); redirects are not followed"
    assert error.status == status


@pytest.mark.parametrize("status", [100, 101, 199, 0])
def test_statuses_below_200_are_malformed(status: int) -> None:
    error = raised(status, body=b'{"a": 1}')
    assert type(error) is MalformedResponseError
    assert str(error) == f"unexpected HTTP status {status}"
    assert error.status == status


def test_a_2xx_that_is_not_json_names_its_status() -> None:
    error = raised(201, body=b"<html/>")
    assert type(error) is MalformedResponseError
    assert (str(error), error.status) == ("201 response is not JSON", 201)


def test_a_2xx_nested_beyond_the_recursion_limit_is_malformed() -> None:
    error = raised(200, body=b"[" * 100_000 + b"]" * 100_000)
    assert type(error) is MalformedResponseError and error.status == 200


@pytest.mark.parametrize(("status", "cls"), [(499, BadRequestError), (451, BadRequestError),
                                             (500, ServerError), (599, ServerError),
                                             (600, ServerError), (504, ServerError)])
def test_undocumented_statuses_fall_back_by_range(status: int, cls: type[APIError]) -> None:
    error = raised(status)
    assert type(error) is cls and error.status == status


# -- the body's fields ----------------------------------------------------------------------

def test_the_message_is_cut_at_500_characters() -> None:
    error = raised(400, body=b'{"error": "E", "message": "%s"}' % (b"m" * 600))
    assert error.message == "m" * 500 and error.error == "E"


@pytest.mark.parametrize("body", [b'{"error": 1, "message": ["x"]}', b'["error", "message"]',
                                  b'"a string"', b"<html/>"])
def test_fields_that_are_not_strings_or_not_in_an_object_are_none(body: bytes) -> None:
    error = raised(404, body=body)
    assert (error.error, error.message) == (None, None)


def test_a_message_without_an_error_and_the_other_way_round() -> None:
    only_message = raised(400, body=b'{"message": "m"}')
    assert (only_message.error, only_message.message) == (None, "m")
    only_error = raised(400, body=b'{"error": "E"}')
    assert (only_error.error, only_error.message) == ("E", None)


# -- what an exception carries, redacted ------------------------------------------------------

@pytest.mark.parametrize("status", [404, 429, 503, 500])
def test_method_url_and_headers_are_carried_and_redacted(status: int) -> None:
    headers = CIMultiDict([("X-Request-Id", "r1"), ("Set-Cookie", "sid=1"),
                           ("X-Echo", "key-SECRET-here")])
    error = raised(status, headers, method="POST",
                   url="https://u:p@api.example/v2/x?api_key=SECRET#f", secrets=["SECRET"])
    assert error.method == "POST"
    assert error.url == "https://api.example/v2/x?api_key=redacted"
    assert list(error.headers.items()) == [("X-Request-Id", "r1"), ("Set-Cookie", REDACTED),
                                           ("X-Echo", REDACTED)]


def test_headers_given_as_a_plain_mapping_are_carried_too() -> None:
    error = raised(400, {"X-Request-Id": "r2"})
    assert list(error.headers.items()) == [("X-Request-Id", "r2")]
    assert (error.method, error.url) == (None, None)


class _GetOnly:
    """Headers that can only be asked by name (no ``items``, no ``getall``)."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._values.get(name, default)


def test_headers_without_items_still_give_retry_after_and_no_header_list() -> None:
    error = raised(429, _GetOnly({"Retry-After": "12"}))
    assert type(error) is RateLimitedError
    assert error.retry_after == 12 and list(error.headers.items()) == []


# -- Retry-After -----------------------------------------------------------------------------

def test_503_carries_its_retry_after_too() -> None:
    error = raised(503, {"Retry-After": "7"})
    assert type(error) is ServiceUnavailableError and error.retry_after == 7


def test_an_http_date_is_measured_from_the_date_header_not_this_host() -> None:
    headers = {"Retry-After": LATER, "Date": "Mon, 23 Nov 2026 12:00:10 GMT"}
    far_off = NOW - timedelta(hours=3)  # this host's clock, hours wrong
    assert raised(429, headers, now=far_off).retry_after == 20


def test_an_unreadable_date_header_falls_back_to_now() -> None:
    headers = {"Retry-After": LATER, "Date": "yesterday-ish"}
    assert raised(429, headers, now=NOW).retry_after == 30


def test_without_now_an_http_date_is_measured_against_this_hosts_clock() -> None:
    soon = datetime.now(timezone.utc) + timedelta(seconds=600)
    value = parse_retry_after(format_datetime(soon, usegmt=True))
    assert value is not None and 590 <= value <= 600
    error = raised(429, {"Retry-After": format_datetime(soon, usegmt=True)})
    assert 590 <= error.retry_after <= 600
    past = datetime.now(timezone.utc) - timedelta(days=1)
    assert parse_retry_after(format_datetime(past, usegmt=True)) == 0
    assert parse_retry_after("Mon, 01 Jan 2090 00:00:00 GMT") == MAX_RETRY_AFTER


def test_a_date_far_ahead_is_capped() -> None:
    assert parse_retry_after("Tue, 01 Dec 2026 12:00:00 GMT", now=NOW) == MAX_RETRY_AFTER


@pytest.mark.parametrize(("raw", "seconds"), [
    ("0", 0.0), ("0.0", 0.0), ("0.5", 0.5), ("  42  ", 42.0), ("1e3", 1000.0), ("+5", 5.0),
    ("172800", MAX_RETRY_AFTER), ("172801", MAX_RETRY_AFTER), ("172799", 172799.0),
    ("1" + "0" * 11, MAX_RETRY_AFTER), ("9" * 5000, MAX_RETRY_AFTER),
    ("0000000000012", 12.0), ("00000000000000000000007", 7.0), ("000", 0.0),
])
def test_delta_seconds_readings(raw: str, seconds: float) -> None:
    assert parse_retry_after(raw, now=NOW) == seconds


def test_no_header_at_all_is_none() -> None:
    assert parse_retry_after(None, now=NOW) is None
    assert parse_retry_after([], now=NOW) is None
    assert raised(429).retry_after is None


def test_of_several_headers_the_longest_readable_wins_in_any_order() -> None:
    assert parse_retry_after(["60", "5"], now=NOW) == 60
    assert parse_retry_after(["5", "60"], now=NOW) == 60
    assert parse_retry_after(["x", "0"], now=NOW) == 0
    assert parse_retry_after(["0", "x"], now=NOW) == 0
    assert parse_retry_after(["x", "y"], now=NOW) is None
    assert parse_retry_after([LATER, "10"], now=NOW) == 30


def test_http_dates_are_read_in_utc_whatever_their_zone() -> None:
    assert parse_http_date("Mon, 23 Nov 2026 13:00:30 +0100") == NOW + timedelta(seconds=30)
    naive = parse_http_date("Mon, 23 Nov 2026 12:00:30 -0000")  # "-0000": no zone given
    assert naive == NOW + timedelta(seconds=30) and naive is not None
    assert naive.tzinfo is timezone.utc
    assert parse_http_date(None) is None
    assert parse_http_date("") is None
    assert parse_http_date("not a date") is None


def test_a_segment_keeps_nothing_that_means_something_in_a_path() -> None:
    assert encode_segment("a/b?c#d%e+f g") == "a%2Fb%3Fc%23d%25e%2Bf%20g"
    assert encode_segment("plain-Name_1.x~") == "plain-Name_1.x~"
