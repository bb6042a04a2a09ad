"""The converter at its edges (issue 27): every timestamp form the docstring promises, offsets of
either sign and their bounds, numbers never coerced from strings, and the message, location and
status a :class:`MalformedResponseError` carries."""

from __future__ import annotations

import enum
from datetime import datetime, timedelta, timezone
from typing import Any

import cattrs
import pytest

from instantly_oauth_async import (
    Account,
    AccountStatus,
    ConfigurationError,
    MalformedResponseError,
    OAuthSession,
    OAuthStatus,
    Provider,
    ProviderCode,
    SessionStatus,
    StatusMessage,
    WarmupStatus,
)
from instantly_oauth_async._wire.convert import (
    _leaf_message,
    _lenient_enum_factory,
    _lenient_enum_of,
    _lenient_int_enum,
    coerce_provider,
    converter,
    parse_datetime,
    structure,
)
from tests.test_models import ACCOUNT

UTC = timezone.utc


def zone(hours: int = 0, minutes: int = 0, seconds: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes, seconds=seconds))


def malformed(data: Any, cls: type[Any] = Account, **kwargs: Any) -> MalformedResponseError:
    with pytest.raises(MalformedResponseError) as info:
        structure(data, cls, **kwargs)
    return info.value


# -- timestamps ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-14T12:30:00.000Z", datetime(2026, 1, 14, 12, 30, tzinfo=UTC)),
    ("2026-01-14T12:30:00-05:00", datetime(2026, 1, 14, 12, 30, tzinfo=zone(-5))),
    ("2026-01-14T12:30:00+05:00", datetime(2026, 1, 14, 12, 30, tzinfo=zone(5))),
    ("2026-01-14T12:30:00+05", datetime(2026, 1, 14, 12, 30, tzinfo=zone(5))),
    ("2026-01-14T12:30:00-05", datetime(2026, 1, 14, 12, 30, tzinfo=zone(-5))),
    ("2026-01-14T12:30:00+0530", datetime(2026, 1, 14, 12, 30, tzinfo=zone(5, 30))),
    ("2026-01-14T12:30:00-09:30", datetime(2026, 1, 14, 12, 30, tzinfo=zone(-9, -30))),
    ("2026-01-14T12:30:00+05:30:15", datetime(2026, 1, 14, 12, 30, tzinfo=zone(5, 30, 15))),
    ("2026-01-14T12:30:00+053015", datetime(2026, 1, 14, 12, 30, tzinfo=zone(5, 30, 15))),
    ("2026-01-14T12:30:00+05:59:59", datetime(2026, 1, 14, 12, 30, tzinfo=zone(5, 59, 59))),
    ("2026-01-14T12:30:00+23:59", datetime(2026, 1, 14, 12, 30, tzinfo=zone(23, 59))),
    ("2026-01-14T12:30:00-00:00", datetime(2026, 1, 14, 12, 30, tzinfo=UTC)),
    ("2026-01-14T12:30:00+00", datetime(2026, 1, 14, 12, 30, tzinfo=UTC)),
    ("2026-01-14T12:30:00z", datetime(2026, 1, 14, 12, 30, tzinfo=UTC)),
    ("2026-01-14t12:30:00Z", datetime(2026, 1, 14, 12, 30, tzinfo=UTC)),
    ("2026-01-14 12:30:00Z", datetime(2026, 1, 14, 12, 30, tzinfo=UTC)),
    ("2026-01-14T12:30:00.1234567+00:00", datetime(2026, 1, 14, 12, 30, 0, 123456, UTC)),
    ("2026-01-14T12:30:00.12Z", datetime(2026, 1, 14, 12, 30, 0, 120000, UTC)),
    ("2026-01-14T12:30:00,5Z", datetime(2026, 1, 14, 12, 30, 0, 500000, UTC)),
    ("2026-01-14T12:30:00.000001Z", datetime(2026, 1, 14, 12, 30, 0, 1, UTC)),
    ("2026-01-14T12:30:59.999999999Z", datetime(2026, 1, 14, 12, 30, 59, 999999, UTC)),
    ("2026-01-14T12:30:07", datetime(2026, 1, 14, 12, 30, 7, tzinfo=UTC)),
    ("2026-01-14T12:30Z", datetime(2026, 1, 14, 12, 30, tzinfo=UTC)),
    ("2026-01-14T12Z", datetime(2026, 1, 14, 12, tzinfo=UTC)),
    ("2026-01-14T07", datetime(2026, 1, 14, 7, tzinfo=UTC)),
    ("2026-01-14", datetime(2026, 1, 14, tzinfo=UTC)),
    ("  2026-01-14T12:30:00Z\n", datetime(2026, 1, 14, 12, 30, tzinfo=UTC)),
    ("2026-12-31T23:59:59.5-01:00", datetime(2026, 12, 31, 23, 59, 59, 500000, zone(-1))),
])
def test_every_promised_form_reads_to_the_same_instant_and_offset(
    text: str, expected: datetime
) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()  # the offset too, not only the instant
    assert (parsed.year, parsed.month, parsed.day, parsed.hour, parsed.minute, parsed.second,
            parsed.microsecond) == (expected.year, expected.month, expected.day, expected.hour,
                                    expected.minute, expected.second, expected.microsecond)


def test_a_negative_offset_is_behind_utc() -> None:
    assert parse_datetime("2026-01-14T12:30:00-05:00") == datetime(2026, 1, 14, 17, 30,
                                                                   tzinfo=UTC)
    assert parse_datetime("2026-01-14T12:30:00+05:00") == datetime(2026, 1, 14, 7, 30, tzinfo=UTC)


@pytest.mark.parametrize("text", [
    "2026-01-14T12:30:00+05:60", "2026-01-14T12:30:00+0560", "2026-01-14T12:30:00+05:00:60",
    "2026-01-14T12:30:00+24:00", "2026-01-14T12:30:00-24:00", "2026-01-14T24:00:00Z",
    "2026-02-30T00:00:00Z", "2026-01-14T12:60:00Z", "not a date", "",
])
def test_out_of_range_parts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is datetime's own
        parse_datetime(text)


def test_offset_minutes_past_59_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"^offset minutes and seconds run from 0 to 59$"):
        parse_datetime("2026-01-14T12:30:00+05:60")
    with pytest.raises(ValueError, match=r"^offset minutes and seconds run from 0 to 59$"):
        parse_datetime("2026-01-14T12:30:00+05:00:60")


def test_the_basic_form_reads_alike_on_every_python() -> None:
    """ISO 8601's basic form, which Python 3.10's fromisoformat does not read."""
    basic = parse_datetime("20260114T123000+0100")
    assert basic == datetime(2026, 1, 14, 12, 30, tzinfo=zone(1))
    assert basic.utcoffset() == timedelta(hours=1)
    naive = parse_datetime("20260114T123000")
    assert naive == datetime(2026, 1, 14, 12, 30, tzinfo=UTC) and naive.tzinfo is UTC
    assert parse_datetime("20260114T123000.5-0130") == datetime(
        2026, 1, 14, 12, 30, 0, 500000, zone(-1, -30))
    assert parse_datetime("20260114t1230z") == datetime(2026, 1, 14, 12, 30, tzinfo=UTC)
    assert parse_datetime("20260114") == datetime(2026, 1, 14, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"^offset minutes and seconds run from 0 to 59$"):
        parse_datetime("20260114T123000+0160")


def test_other_iso_forms_are_read_by_fromisoformat_and_naive_ones_are_utc() -> None:
    other = parse_datetime("2026-01-14_12:30:00+01:00")  # another separator: not our pattern
    assert other == datetime(2026, 1, 14, 12, 30, tzinfo=zone(1))
    assert other.utcoffset() == timedelta(hours=1)
    naive = parse_datetime("2026-01-14_12:30:00")
    assert naive == datetime(2026, 1, 14, 12, 30, tzinfo=UTC) and naive.tzinfo is UTC


def test_a_timestamp_field_reports_what_it_got() -> None:
    assert str(malformed({**ACCOUNT, "timestamp_created": 17})) == (
        "malformed Account: expected an ISO 8601 timestamp, got int at timestamp_created")
    assert str(malformed({**ACCOUNT, "timestamp_created": "2026-01-14T12:30:00+05:60"})) == (
        "malformed Account: expected an ISO 8601 timestamp at timestamp_created")


def test_timestamps_go_out_as_isoformat() -> None:
    moment = datetime(2026, 1, 14, 12, 30, 0, 5, tzinfo=zone(-5))
    assert converter.unstructure(moment) == "2026-01-14T12:30:00.000005-05:00"


# -- scalars ---------------------------------------------------------------------------------

def test_a_float_field_takes_numbers_as_floats_and_nothing_else() -> None:
    account = structure({**ACCOUNT, "daily_limit": 3}, Account)
    assert account.daily_limit == 3.0 and type(account.daily_limit) is float
    for bad, what in [("3", "a number, got str"), (True, "a number, got bool"),
                      (None, "a number, got NoneType"), ([3], "a number, got list"),
                      (float("nan"), "a finite number, got float"),
                      (float("-inf"), "a finite number, got float")]:
        with pytest.raises(MalformedResponseError) as info:
            converter.structure(bad, float)
        assert str(info.value) == f"expected {what}"
    assert str(malformed({**ACCOUNT, "sending_gap": "10"})) == (
        "malformed Account: expected a number, got str at sending_gap")


def test_an_int_is_an_int_or_a_whole_float() -> None:
    assert converter.structure(3, int) == 3
    whole = converter.structure(3.0, int)
    assert whole == 3 and type(whole) is int
    for bad, name in [(3.5, "float"), (True, "bool"), ("3", "str"), (None, "NoneType")]:
        with pytest.raises(MalformedResponseError) as info:
            converter.structure(bad, int)
        assert str(info.value) == f"expected an integer, got {name}"


def test_strings_and_booleans_are_never_coerced() -> None:
    assert converter.structure("", str) == ""
    assert converter.structure(False, bool) is False
    for bad, cls, what in [(1, str, "a string, got int"), (None, str, "a string, got NoneType"),
                           (1, bool, "a boolean, got int"), ("true", bool, "a boolean, got str")]:
        with pytest.raises(MalformedResponseError) as info:
            converter.structure(bad, cls)
        assert str(info.value) == f"expected {what}"


# -- enums -----------------------------------------------------------------------------------

def test_lenient_enums_keep_members_and_unknown_integers() -> None:
    account = structure({**ACCOUNT, "warmup_status": 1.0, "provider_code": 99, "status": None},
                        Account)
    assert account.warmup_status is WarmupStatus.ACTIVE
    assert account.provider_code == 99 and type(account.provider_code) is int
    assert account.status is None
    assert str(malformed({**ACCOUNT, "warmup_status": None})) == (
        "malformed Account: expected an integer, got NoneType at warmup_status")
    assert str(malformed({**ACCOUNT, "status": "1"})) == (
        "malformed Account: expected an integer, got str at status")


class _Other(enum.IntEnum):
    A = 1


def test_only_the_known_lenient_unions_get_the_lenient_hook() -> None:
    assert _lenient_enum_of(WarmupStatus | int) is WarmupStatus
    assert _lenient_enum_of(AccountStatus | int | None) is AccountStatus
    assert _lenient_enum_of(ProviderCode | int) is ProviderCode
    assert _lenient_enum_of(int | None) is None
    assert _lenient_enum_of(WarmupStatus | None) is None  # no int: not lenient
    assert _lenient_enum_of(WarmupStatus | ProviderCode | int) is None  # which one?
    assert _lenient_enum_of(_Other | int) is None  # not one of ours
    assert _lenient_enum_of(WarmupStatus) is None
    assert _lenient_enum_of(int) is None


def test_provider_from_a_member_or_its_value_in_any_case() -> None:
    assert coerce_provider(Provider.MICROSOFT) is Provider.MICROSOFT
    assert coerce_provider(" GOOGLE ") is Provider.GOOGLE
    assert coerce_provider("microsoft") is Provider.MICROSOFT
    with pytest.raises(ConfigurationError) as info:
        coerce_provider("yahoo")
    assert str(info.value) == "unknown provider 'yahoo': expected one of google, microsoft"
    with pytest.raises(ConfigurationError, match=r"^unknown provider 3: expected one of"):
        coerce_provider(3)


def test_a_session_status_is_a_known_string() -> None:
    assert structure({"status": "success"}, OAuthStatus).status is SessionStatus.SUCCESS
    assert str(malformed({"status": 1}, OAuthStatus)) == (
        "malformed OAuthStatus: expected a session status string, got int at status")
    assert str(malformed({"status": "SUCCESS"}, OAuthStatus)) == (
        "malformed OAuthStatus: unknown session status at status")


def test_status_message_renames_response_code_both_ways() -> None:
    message = structure({**ACCOUNT, "status_message": {"responseCode": 550}}, Account)
    assert message.status_message == StatusMessage(response_code=550)
    out = converter.unstructure(StatusMessage(code="E", response_code=421))
    assert out["responseCode"] == 421 and "response_code" not in out


# -- errors: message, location, status -------------------------------------------------------

def test_the_location_of_a_nested_failure_is_named_inside_out() -> None:
    data = {**ACCOUNT, "warmup": {"advanced": {"open_rate": "high"}}}
    assert str(malformed(data)) == (
        "malformed Account: expected a number, got str at open_rate at advanced at warmup")


def test_a_missing_field_is_named() -> None:
    data = {k: v for k, v in ACCOUNT.items() if k != "organization"}
    assert str(malformed(data)) == "malformed Account: missing field 'organization'"


def test_an_error_with_no_message_of_ours_is_named_by_its_type() -> None:
    assert str(malformed({**ACCOUNT, "warmup": 5})) == "malformed Account: TypeError at warmup"


def test_the_status_is_kept_on_every_kind_of_failure() -> None:
    assert malformed([1], OAuthStatus, status=200).status == 200
    assert str(malformed([1], OAuthStatus)) == "expected a JSON object for OAuthStatus"
    assert malformed("x", Account, status=201).status == 201
    assert malformed({"status": 1}, OAuthStatus, status=202).status == 202
    assert malformed({**ACCOUNT, "email": 1}, status=203).status == 203
    assert malformed({"status": 1}, OAuthStatus).status is None
    direct = malformed({"a": 1}, datetime, status=204)  # a hook raising on its own
    assert (str(direct), direct.status) == ("expected an ISO 8601 timestamp, got dict", 204)
    assert malformed({"a": 1}, datetime).status is None


def test_a_session_missing_its_id_says_so() -> None:
    data = {"auth_url": "https://x", "expires_at": "2026-01-14T12:30:00Z", "provider": "google"}
    assert str(malformed(data, OAuthSession)) == (
        "malformed OAuthSession: missing field 'session_id'")


def test_a_key_error_without_a_name_still_reads() -> None:
    assert _leaf_message(KeyError()) == "missing field"
    assert _leaf_message(KeyError("x")) == "missing field 'x'"
    assert _leaf_message(ValueError("secret value")) == "ValueError"  # never the value


def test_the_lenient_hooks_as_made_for_each_union() -> None:
    """The hooks are made once, at import: made again here, so a change to how they are made
    shows in a test too."""
    optional = _lenient_enum_factory(AccountStatus | int | None)
    assert optional(None, object) is None
    assert optional(1, object) is AccountStatus(1)
    assert optional(77.0, object) == 77 and type(optional(77.0, object)) is int
    with pytest.raises(MalformedResponseError, match=r"^expected an integer, got str$"):
        optional("1", object)
    required = _lenient_enum_factory(WarmupStatus | int)
    assert required(1, object) is WarmupStatus.ACTIVE
    with pytest.raises(MalformedResponseError, match=r"^expected an integer, got NoneType$"):
        required(None, object)
    plain = _lenient_int_enum(ProviderCode)
    assert plain(2, None) is ProviderCode.GOOGLE and plain(-4, None) == -4
    with pytest.raises(MalformedResponseError):
        plain(True, None)


def _noted(exc: Exception, *notes: str) -> Exception:
    """``exc`` with ``notes``, as cattrs leaves them (``add_note`` is Python 3.11's)."""
    exc.__notes__ = list(notes)  # type: ignore[attr-defined]
    return exc


def test_the_location_comes_from_the_first_note_naming_an_attribute() -> None:
    group = cattrs.ClassValidationError("x", [_noted(ValueError("v"), "Structuring @ index 0")],
                                        Account)
    assert _leaf_message(group) == "ValueError"  # a note, but no attribute: no location
    group = cattrs.ClassValidationError("x", [ValueError("v")], Account)
    assert _leaf_message(group) == "ValueError"  # no note at all
    group = cattrs.ClassValidationError(
        "x", [_noted(KeyError("email"), "Structuring class Account @ attribute email")], Account)
    assert _leaf_message(group) == "missing field 'email'"
    group = cattrs.ClassValidationError(
        "x", [_noted(KeyError("b"), "Structuring class W @ attribute a")], Account)
    assert _leaf_message(group) == "missing field 'b' at a"
    group = cattrs.ClassValidationError(
        "x", [_noted(TypeError("t"), "Structuring class W @ attribute a", "second")], Account)
    assert _leaf_message(group) == "TypeError at a"
