"""Records: tolerant where servers drift, strict where it matters, and lossless round trips."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instantly_oauth_async import (
    Account,
    AccountStatus,
    ConfigurationError,
    ConnectResult,
    MalformedResponseError,
    OAuthSession,
    OAuthStatus,
    Provider,
    ProviderCode,
    RateLimit,
    SessionStatus,
    StatusMessage,
    Warmup,
    WarmupAdvanced,
    WarmupStatus,
)
from instantly_oauth_async._wire.convert import converter, structure

ACCOUNT: dict[str, Any] = {
    "email": "ann@acme.io",
    "timestamp_created": "2026-05-11T21:12:35.879Z",
    "timestamp_updated": "2026-05-11T21:12:35.879Z",
    "first_name": "Ann",
    "last_name": "Lee",
    "organization": "019e18e2-7927-791c-935f-178e45a141c5",
    "warmup_status": 1,
    "provider_code": 2,
    "setup_pending": False,
    "is_managed_account": False,
}


def test_account_parses_every_documented_field() -> None:
    data = {
        **ACCOUNT,
        "warmup": {
            "limit": 100,
            "advanced": {"warm_ctd": False, "open_rate": 0.95, "important_rate": 0.8,
                         "read_emulation": True, "spam_save_rate": 0.02, "weekday_only": True},
            "warmup_custom_ftag": "warmup", "increment": "disabled", "reply_rate": 0.1,
        },
        "added_by": "019e18e2-7927-791c-935f-178cd881d99d",
        "daily_limit": 100, "modified_by": None, "tracking_domain_name": "example.com",
        "tracking_domain_status": "active", "status": -3, "enable_slow_ramp": False,
        "inbox_placement_test_limit": 10, "timestamp_last_used": None,
        "status_message": {"code": "EENVELOPE", "command": "DATA", "response": "550-5.4.5",
                           "e_message": "error", "responseCode": 550},
        "timestamp_warmup_start": "2026-05-11T21:12:35.879Z", "warmup_pool_id": None,
        "dfy_password_changed": None, "stat_warmup_score": 85, "sending_gap": 10,
        "signature": "Best", "autofix_failed": None,
    }
    account = structure(data, Account)
    assert account.status is AccountStatus.SENDING_ERROR
    assert account.warmup_status is WarmupStatus.ACTIVE
    assert account.provider_code is ProviderCode.GOOGLE
    assert account.warmup is not None and account.warmup.advanced is not None
    assert account.warmup.advanced.open_rate == 0.95
    assert account.status_message == StatusMessage("EENVELOPE", "DATA", "550-5.4.5", "error", 550)
    assert account.timestamp_created == datetime(2026, 5, 11, 21, 12, 35, 879000, timezone.utc)


def test_unknown_fields_are_ignored() -> None:
    account = structure({**ACCOUNT, "brand_new_field": {"x": 1}}, Account)
    assert account.email == "ann@acme.io"


def test_unknown_enum_value_is_kept_as_int() -> None:
    account = structure({**ACCOUNT, "provider_code": 99, "status": 7, "warmup_status": -9}, Account)
    assert account.provider_code == 99 and not isinstance(account.provider_code, ProviderCode)
    assert account.status == 7
    assert account.warmup_status == -9


def test_nulls_are_accepted_where_the_schema_allows() -> None:
    data = {**ACCOUNT, "daily_limit": None, "signature": None, "status": None}
    account = structure(data, Account)
    assert account.daily_limit is None and account.status is None


@pytest.mark.parametrize("missing", ["email", "timestamp_created", "organization", "provider_code"])
def test_missing_required_account_field_is_malformed(missing: str) -> None:
    data = {k: v for k, v in ACCOUNT.items() if k != missing}
    with pytest.raises(MalformedResponseError, match=missing):
        structure(data, Account)


def test_missing_session_id_is_malformed() -> None:
    with pytest.raises(MalformedResponseError, match="session_id"):
        structure({"auth_url": "https://x", "expires_at": "2026-01-14T12:30:00.000Z",
                   "provider": "google"}, OAuthSession)


@pytest.mark.parametrize("bad", [123, None, ["a"], {"a": 1}])
def test_session_id_is_never_coerced_from_another_type(bad: object) -> None:
    with pytest.raises(MalformedResponseError):
        structure({"session_id": bad, "auth_url": "https://x",
                   "expires_at": "2026-01-14T12:30:00.000Z", "provider": "google"}, OAuthSession)


def test_expires_at_is_an_aware_datetime() -> None:
    session = structure({"session_id": "s", "auth_url": "https://x",
                         "expires_at": "2026-01-14T12:30:00.000Z", "provider": "google"},
                        OAuthSession)
    assert session.expires_at.tzinfo is not None
    assert session.expires_at.utcoffset() == timedelta(0)
    assert session.provider is Provider.GOOGLE


def test_naive_timestamp_is_taken_as_utc() -> None:
    session = structure({"session_id": "s", "auth_url": "u", "expires_at": "2026-01-14T12:30:00",
                         "provider": "microsoft"}, OAuthSession)
    assert session.expires_at == datetime(2026, 1, 14, 12, 30, tzinfo=timezone.utc)


def test_unknown_session_status_is_malformed_not_guessed() -> None:
    with pytest.raises(MalformedResponseError, match="status"):
        structure({"status": "finished"}, OAuthStatus)


def test_status_with_error_fields() -> None:
    status = structure({"status": "error", "error": "access_denied",
                        "error_description": "User denied access"}, OAuthStatus)
    assert status.status is SessionStatus.ERROR and status.error == "access_denied"


def test_non_object_body_is_malformed() -> None:
    with pytest.raises(MalformedResponseError):
        structure([1, 2], OAuthStatus)


def test_auth_url_is_kept_out_of_repr() -> None:
    session = OAuthSession("s", "https://accounts.example/secret-state", datetime.now(timezone.utc),
                           Provider.GOOGLE)
    assert "secret-state" not in repr(session)


@pytest.mark.parametrize(
    ("count", "per", "margin"), [(0, 60, 0), (75, 0, 0), (75, -1, 0), (75, 60, -1), (75, 60, 61),
                                 (True, 60, 0), (75, float("inf"), 0), (75, 60, float("nan"))]
)
def test_rate_limit_rejects_nonsense(count: int, per: float, margin: float) -> None:
    # A ConfigurationError (an InstantlyError), which is still a ValueError for older callers.
    with pytest.raises(ConfigurationError, match="RateLimit"):
        RateLimit(count, per, margin)


def test_rate_limit_margin_defaults_to_half_a_percent_of_the_window() -> None:
    assert RateLimit(75, per=60).window == pytest.approx(60.3)
    assert RateLimit(75, per=60, margin=0).window == 60


# -- round trips ------------------------------------------------------------------------------

aware = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30))]),
)
text = st.text(max_size=20)
opt_text = st.none() | text
opt_float = st.none() | st.floats(allow_nan=False, allow_infinity=False)
opt_bool = st.none() | st.booleans()


def lenient(enum: Any) -> st.SearchStrategy[Any]:
    known = st.sampled_from(list(enum))
    unknown = st.integers(-1000, 1000).filter(lambda n: n not in {m.value for m in enum})
    return known | unknown


advanced = st.builds(WarmupAdvanced, opt_bool, opt_float, opt_float, opt_bool, opt_float, opt_bool)
warmups = st.builds(Warmup, opt_float, st.none() | advanced, opt_text, opt_text, opt_float)
messages = st.builds(StatusMessage, opt_text, opt_text, opt_text, opt_text, opt_float)
accounts = st.builds(
    Account,
    email=text, timestamp_created=aware, timestamp_updated=aware, first_name=text,
    last_name=text, organization=text, warmup_status=lenient(WarmupStatus),
    provider_code=lenient(ProviderCode), setup_pending=st.booleans(),
    is_managed_account=st.booleans(), warmup=st.none() | warmups, added_by=opt_text,
    daily_limit=opt_float, status=st.none() | lenient(AccountStatus),
    status_message=st.none() | messages, timestamp_last_used=st.none() | aware,
    signature=opt_text, autofix_failed=opt_bool,
)
sessions = st.builds(OAuthSession, st.text(min_size=1), st.text(min_size=1), aware,
                     st.sampled_from(list(Provider)), st.none() | aware)
statuses = st.builds(OAuthStatus, st.sampled_from(list(SessionStatus)), opt_text, opt_text,
                     opt_text, opt_text, st.none() | aware)


@given(accounts)
def test_account_round_trips(account: Account) -> None:
    assert converter.structure(converter.unstructure(account), Account) == account


@given(sessions)
def test_session_round_trips(session: OAuthSession) -> None:
    assert converter.structure(converter.unstructure(session), OAuthSession) == session


@given(statuses)
def test_status_round_trips(status: OAuthStatus) -> None:
    assert converter.structure(converter.unstructure(status), OAuthStatus) == status


# -- public JSON: to_json() / from_json() (issue 23) -------------------------------------------

@given(sessions)
def test_session_json_round_trips(session: OAuthSession) -> None:
    assert OAuthSession.from_json(session.to_json()) == session


@given(sessions, accounts)
def test_result_json_round_trips_with_its_account(session: OAuthSession, account: Account
                                                  ) -> None:
    result = ConnectResult(session, SessionStatus.SUCCESS, email=account.email, account=account,
                           expected_email=account.email, reconciled=True)
    assert ConnectResult.from_json(result.to_json().encode()) == result


PLAIN = OAuthSession("s-1", "https://u", datetime(2026, 1, 14, 12, 0, 0, 5, timezone.utc),
                     Provider.MICROSOFT)


def test_to_json_is_compact_and_complete() -> None:
    assert PLAIN.to_json() == (
        '{"session_id":"s-1","auth_url":"https://u",'
        '"expires_at":"2026-01-14T12:00:00.000005+00:00","provider":"microsoft",'
        '"server_date":null}')


def test_from_json_takes_bytes_and_bytearrays() -> None:
    assert OAuthSession.from_json(bytearray(PLAIN.to_json(), "utf-8")) == PLAIN


def test_to_json_refuses_what_json_cannot_carry() -> None:
    from instantly_oauth_async._wire.convert import to_json  # noqa: PLC0415 - the function itself

    with pytest.raises(ConfigurationError) as info:
        to_json(StatusMessage(response_code=float("inf")))
    assert str(info.value) == "StatusMessage holds a number JSON cannot carry (NaN or infinity)"


@pytest.mark.parametrize(("text", "message"), [
    (7, "OAuthSession.from_json takes JSON text (str or bytes), not int"),
    (None, "OAuthSession.from_json takes JSON text (str or bytes), not NoneType"),
    ("", "OAuthSession.from_json: the text is not JSON"),
    ("NaN-ish", "OAuthSession.from_json: the text is not JSON"),
    ("[" * 200_000, "OAuthSession.from_json: the text is not JSON"),  # past the recursion limit
    ("{}", "OAuthSession.from_json: malformed OAuthSession: missing field 'session_id'"),
    ('"s"', "OAuthSession.from_json: expected a JSON object for OAuthSession"),
])
def test_from_json_errors_say_what_is_wrong(text: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        OAuthSession.from_json(text)
    assert str(info.value) == message
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
