"""Results that say what happened, records that go out and come back as JSON, sessions paired
with their people in ``connect_many``, and log records that say one thing per request without
an email or a session id (issue 23)."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from instantly_oauth_async import (
    Account,
    ConfigurationError,
    ConnectResult,
    InstantlyClient,
    MemoryStore,
    OAuthManager,
    OAuthSession,
    Provider,
    RetryPolicy,
    SessionFor,
    SessionStatus,
)
from instantly_oauth_async._wire.convert import structure
from instantly_oauth_async.testing import CannedResponse, Simulator
from tests.test_manager import MakeManager, make  # noqa: F401 - the fixture, shared
from tests.test_models import ACCOUNT

pytestmark = pytest.mark.anyio

UTC = timezone.utc
SESSION = OAuthSession("sess-1", "https://consent.example/abc", datetime(2026, 1, 14, 12, 0,
                       tzinfo=UTC), Provider.GOOGLE)


def result(status: SessionStatus = SessionStatus.SUCCESS, email: str | None = "ann@acme.io",
           expected: str | None = "ann@acme.io") -> ConnectResult:
    return ConnectResult(SESSION, status, email=email, expected_email=expected)


# -- ok and connected_expected -----------------------------------------------------------------

@pytest.mark.parametrize("expected", ["ann@acme.io", "Ann@ACME.io", "  ann@acme.io "])
def test_connected_expected_is_true_for_the_expected_mailbox_whatever_its_case(
    expected: str,
) -> None:
    assert result(expected=expected).connected_expected


def test_another_mailbox_is_ok_but_not_connected_expected() -> None:
    other = result(email="bob@acme.io")
    assert other.ok and other.email_mismatch
    assert not other.connected_expected


def test_without_an_expected_email_connected_expected_is_ok() -> None:
    assert result(expected=None).connected_expected
    assert not result(SessionStatus.ERROR, email=None, expected=None).connected_expected


@pytest.mark.parametrize("status", [SessionStatus.ERROR, SessionStatus.EXPIRED])
def test_a_session_that_failed_never_connected_the_expected_mailbox(
    status: SessionStatus,
) -> None:
    assert not result(status, email=None).connected_expected


def test_a_success_without_an_email_cannot_be_the_expected_mailbox() -> None:
    unknown = result(email=None)
    assert unknown.ok and not unknown.email_mismatch and not unknown.connected_expected


async def test_a_person_who_connects_another_mailbox_is_not_connected_expected(
    csim: Simulator, make: MakeManager,  # noqa: F811 - the fixture
) -> None:
    async with make() as manager:
        wrong = await manager.start("google", expected_email="ann@acme.io")
        right = await manager.start("google", expected_email="Bo@Acme.io")
        csim.complete(wrong.session.session_id, "bob@acme.io")
        csim.complete(right.session.session_id, "bo@acme.io")
        got_wrong, got_right = await wrong, await right
    assert got_wrong.ok and not got_wrong.connected_expected
    assert got_right.ok and got_right.connected_expected


# -- JSON in and out -----------------------------------------------------------------------------

offsets = st.integers(-23 * 3600 - 3599, 23 * 3600 + 3599).map(
    lambda s: timezone(timedelta(seconds=s)))
moments = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30),
                       timezones=offsets)
texts = st.text(min_size=1, max_size=40)
sessions = st.builds(OAuthSession, session_id=texts, auth_url=texts, expires_at=moments,
                     provider=st.sampled_from(Provider), server_date=st.none() | moments)
ACCOUNT_RECORD = structure({**ACCOUNT, "warmup_status": 77, "daily_limit": 0.1,
                            "status_message": {"responseCode": 550.5}}, Account)
results = st.builds(
    ConnectResult, session=sessions, status=st.sampled_from(SessionStatus),
    email=st.none() | texts, name=st.none() | texts, error=st.none() | texts,
    error_description=st.none() | texts, account=st.none() | st.just(ACCOUNT_RECORD),
    account_error=st.none() | texts, expected_email=st.none() | texts, reconciled=st.booleans())


def same_offsets(a: object, b: object) -> bool:
    """Equal datetimes may differ in offset; a round trip must keep the offset too."""
    if isinstance(a, datetime):
        return isinstance(b, datetime) and a.utcoffset() == b.utcoffset()
    if hasattr(a, "__attrs_attrs__"):
        return all(same_offsets(getattr(a, f.name), getattr(b, f.name))
                   for f in a.__attrs_attrs__)
    return True


@given(sessions)
def test_a_session_round_trips_through_json_exactly(session: OAuthSession) -> None:
    text = session.to_json()
    back = OAuthSession.from_json(text)
    assert back == session and same_offsets(back, session)
    assert OAuthSession.from_json(text.encode()) == session


@given(results)
def test_a_result_round_trips_through_json_exactly(outcome: ConnectResult) -> None:
    back = ConnectResult.from_json(outcome.to_json())
    assert back == outcome and same_offsets(back, outcome)
    assert back.connected_expected is outcome.connected_expected


def test_the_json_is_plain_and_names_its_fields() -> None:
    data = json.loads(result().to_json())
    assert data["status"] == "success" and data["session"]["provider"] == "google"
    assert data["session"]["expires_at"] == "2026-01-14T12:00:00+00:00"


def test_unknown_fields_in_stored_json_are_ignored() -> None:
    data = {**json.loads(SESSION.to_json()), "stored_by": "v9"}
    assert OAuthSession.from_json(json.dumps(data)) == SESSION


SECRET = "sk-live-DO-NOT-LOG"


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    ("[1, 2]", "expected a JSON object for OAuthSession"),
    (json.dumps({"auth_url": SECRET}), "missing field 'session_id'"),
    (json.dumps({**json.loads(SESSION.to_json()), "session_id": 12}), "at session_id"),
    (json.dumps({**json.loads(SESSION.to_json()), "expires_at": SECRET}), "at expires_at"),
    (json.dumps({**json.loads(SESSION.to_json()), "provider": SECRET}), "at provider"),
])
def test_bad_json_is_a_configuration_error_that_never_echoes_a_value(
    text: str | bytes, says: str,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        OAuthSession.from_json(text)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("OAuthSession.from_json: ") and says in message
    assert SECRET not in message and info.value.__cause__ is None


def test_from_json_refuses_what_is_not_text() -> None:
    with pytest.raises(ConfigurationError, match=r"takes JSON text .* not dict"):
        ConnectResult.from_json({"status": "success"})  # type: ignore[arg-type]


def test_a_result_missing_its_session_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"ConnectResult\.from_json: .*'session'"):
        ConnectResult.from_json('{"status": "success"}')


def test_a_number_json_cannot_carry_is_refused_on_the_way_out() -> None:
    account = structure({**ACCOUNT, "daily_limit": 1.0}, Account)
    odd = ConnectResult(SESSION, SessionStatus.SUCCESS,
                        account=type(account)(**{**_fields(account),
                                                 "daily_limit": float("nan")}))
    with pytest.raises(ConfigurationError, match="NaN or infinity"):
        odd.to_json()


def _fields(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in record.__attrs_attrs__}


async def test_a_session_stored_as_json_is_resumed_by_another_manager(
    csim: Simulator, make: MakeManager,  # noqa: F811 - the fixture
) -> None:
    key = csim.add_workspace().api_key
    async with make(key, store=MemoryStore()) as creator:  # its own: no fleet hand-over
        pending = await creator.start("microsoft", expected_email="bo@corp.io")
        stored = pending.session.to_json()
    async with make(key, store=MemoryStore()) as worker:
        resumed = worker.resume(OAuthSession.from_json(stored), expected_email="bo@corp.io")
        csim.complete(pending.session.session_id, "bo@corp.io")
        outcome = await resumed
    assert outcome.connected_expected and outcome.session == pending.session
    assert ConnectResult.from_json(outcome.to_json()) == outcome


# -- connect_many: which person a session is for -----------------------------------------------

async def test_on_session_for_names_the_person_even_for_a_renewal(
    csim: Simulator, make: MakeManager,  # noqa: F811 - the fixture
) -> None:
    people = ["ann@acme.io", "bo@acme.io", "cy@acme.io"]
    told: list[SessionFor] = []

    def on_session_for(made: SessionFor) -> None:
        told.append(made)
        if made.index == 0 and made.renewal == 0:
            csim.expire(made.session.session_id)  # the first person is away: renewed
        else:
            csim.complete(made.session.session_id, people[made.index])

    async with make() as manager:
        got = [r async for r in manager.connect_many(
            "google", 3, expected_emails=people, on_session_for=on_session_for,
            renew_expired=1, max_pending=3)]
    assert [(t.index, t.expected_email, t.renewal) for t in told] == [
        (0, "ann@acme.io", 0), (1, "bo@acme.io", 0), (2, "cy@acme.io", 0),
        (0, "ann@acme.io", 1)]  # the renewal comes after the later people's sessions
    assert all(r.connected_expected for r in got) and len(got) == 3
    person_of = {t.session.session_id: t.index for t in told}
    assert sorted(person_of[r.session.session_id] for r in got) == [0, 1, 2]


async def test_on_session_for_counts_people_without_expected_emails(
    csim: Simulator, make: MakeManager,  # noqa: F811 - the fixture
) -> None:
    told: list[SessionFor] = []

    async def on_session_for(made: SessionFor) -> None:  # a coroutine function works too
        told.append(made)
        csim.complete(made.session.session_id, f"user{made.index}@corp.io")

    async with make() as manager:
        got = [r async for r in manager.connect_many("microsoft", 4,
                                                     on_session_for=on_session_for)]
    assert [(t.index, t.expected_email, t.renewal) for t in told] == [
        (i, None, 0) for i in range(4)]
    emails = {t.session.session_id: f"user{t.index}@corp.io" for t in told}
    assert all(r.email == emails[r.session.session_id] for r in got) and len(got) == 4


async def test_on_session_and_on_session_for_together_are_refused(
    make: MakeManager,  # noqa: F811 - the fixture
) -> None:
    async with make() as manager:
        with pytest.raises(ConfigurationError, match="not both"):
            async for _ in manager.connect_many("google", 1, on_session=print,
                                                on_session_for=print):
                pass


# -- documented knobs ----------------------------------------------------------------------------

def test_retry_policy_defaults_and_delays_are_as_documented() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.base, policy.cap) == (5, 0.5, 30.0)
    rng = random.Random(3)  # noqa: S311 - jitter
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= policy.delay(attempt, rng) <= ceiling
    assert policy.delay(1, rng, retry_after=12) == 12  # Retry-After wins, up to the cap
    assert policy.delay(1, rng, retry_after=1e6) == 30.0


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"attempts": 1.5}, {"attempts": True},
                                    {"base": -1}, {"cap": float("inf")},
                                    {"base": 2, "cap": 1}, {"base": "1"}])
def test_a_bad_retry_policy_is_a_configuration_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


def test_the_same_seed_gives_the_same_jitter() -> None:
    def draws(seed: int | None) -> list[float]:
        manager = OAuthManager("k", base_url="http://127.0.0.1:1", seed=seed)
        return [manager._poller._rng.random() for _ in range(3)]

    assert draws(7) == draws(7) != draws(8)


# -- log records -----------------------------------------------------------------------------

@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="instantly_oauth_async")
    return caplog


def _values(record: logging.LogRecord) -> list[str]:
    return [record.getMessage(), *(str(v) for v in vars(record).values())]


async def test_each_request_is_one_record_without_the_email_or_session_id(
    csim: Simulator, make: MakeManager,  # noqa: F811 - the fixture
    logs: pytest.LogCaptureFixture,
) -> None:
    async with make() as manager:
        pending = await manager.start("google", expected_email="ann.lee@acme.io")
        csim.complete(pending.session.session_id, "ann.lee@acme.io")
        assert (await pending).account is not None
        other = await manager.start("google")
        csim.complete(other.session.session_id, "bo@acme.io")
        await other
        await manager.client.get_account("ann.lee@acme.io")  # the caller's own call, logged too
    api = Counter(r.kind for r in csim.requests if r.kind != "consent")
    finished = [r for r in logs.records if getattr(r, "iox_event", None) == "request_finished"]
    assert Counter(r.operation for r in finished) == api  # type: ignore[attr-defined]
    assert api["account"] == 3 and api["status"] >= 2
    assert not [r for r in logs.records if "/api/" in r.getMessage() and r not in finished]
    for r in finished:
        assert r.levelno == logging.DEBUG and r.status == 200  # type: ignore[attr-defined]
        assert r.method == ("POST" if r.operation == "init" else "GET")  # type: ignore[attr-defined]
        assert isinstance(r.duration, float) and r.duration >= 0  # type: ignore[attr-defined]
    secret = ["ann.lee", "bo@acme", pending.session.session_id, other.session.session_id,
              pending.session.auth_url]
    assert not [s for r in logs.records for v in _values(r) for s in secret if s in v]
    accounts = [r.path for r in finished if r.operation == "account"]  # type: ignore[attr-defined]
    assert all(p.startswith("/api/v2/accounts/<email:") for p in accounts)
    assert accounts[0] == accounts[2] != accounts[1]  # one tag per mailbox, within the process
    polls = {r.path for r in finished if r.operation == "status"}  # type: ignore[attr-defined]
    assert len(polls) == 2 and all("/status/<session:" in p for p in polls)


async def test_session_records_share_a_key_that_is_not_the_session_id(
    csim: Simulator, make: MakeManager,  # noqa: F811 - the fixture
    logs: pytest.LogCaptureFixture,
) -> None:
    async with make() as manager:
        first, second = await manager.start("google"), await manager.start("microsoft")
        csim.complete(first.session.session_id, "ann@acme.io")
        csim.deny(second.session.session_id)
        await first
        await second
    started = {r.session_key: r for r in logs.records  # type: ignore[attr-defined]
               if getattr(r, "iox_event", None) == "session_started"}
    resolved = {r.session_key: r for r in logs.records  # type: ignore[attr-defined]
                if getattr(r, "iox_event", None) == "session_resolved"}
    assert len(started) == 2 and started.keys() == resolved.keys()
    assert {(started[k].provider, resolved[k].outcome)  # type: ignore[attr-defined]
            for k in started} == {("google", "success"), ("microsoft", "error")}
    assert all(resolved[k].levelno == logging.INFO for k in resolved)
    ids = (first.session.session_id, second.session.session_id)
    assert not [i for k in started for i in ids if i in k or k in i]


async def test_a_429_is_one_warning_record_with_its_retry_after(
    sim: Simulator, logs: pytest.LogCaptureFixture,
) -> None:
    workspace = sim.add_workspace("acme")
    sim.enqueue("account", CannedResponse(429, "{}", (("Retry-After", "7"),)))
    async with InstantlyClient(workspace.api_key, base_url=sim.url) as client:
        with pytest.raises(Exception, match="429"):
            await client.get_account("ann@acme.io")
    (record,) = [r for r in logs.records if getattr(r, "iox_event", None) == "request_finished"]
    assert record.levelno == logging.WARNING
    assert (record.status, record.error_type, record.retry_after) == (  # type: ignore[attr-defined]
        429, "RateLimitedError", 7.0)
    assert "ann@acme.io" not in " ".join(_values(record))


async def test_a_request_without_an_answer_is_one_record_with_its_error(
    logs: pytest.LogCaptureFixture,
) -> None:
    async with InstantlyClient("k", base_url="http://127.0.0.1:9", timeout=2) as client:
        with pytest.raises(Exception, match="cannot connect"):
            await client.init_oauth("google")
    (record,) = [r for r in logs.records if getattr(r, "iox_event", None) == "request_finished"]
    got: Any = record
    assert (got.status, got.error_type, got.provider, got.path) == (
        None, "TransportError", "google", "/api/v2/oauth/google/init")


async def test_no_log_record_names_a_session_id_or_an_auth_url(
    csim: Simulator, make: MakeManager,  # noqa: F811 - the fixture
    logs: pytest.LogCaptureFixture,
) -> None:
    """Every record of a run at DEBUG (two managers sharing a store, sessions that succeed,
    are denied and are cancelled, one of them handed over as its manager closes) names a
    session only by its ``session_key``: never its id, never its auth URL, in the message or in
    any field. Requests and session records share that key."""
    store = MemoryStore()
    sessions: list[OAuthSession] = []
    key = csim.add_workspace().api_key
    async with make(key, store=store) as other:
        async with make(key, store=store) as manager:
            made = [await manager.start("google") for _ in range(4)]
            sessions += [p.session for p in made]
            csim.complete(made[0].session.session_id, "ann@acme.io")
            csim.deny(made[1].session.session_id)
            made[2].cancel()
            assert (await made[0]).ok
            assert not (await made[1]).ok
        # made[3] was handed over as its manager closed: the other one adopts and finishes it
        with anyio.fail_after(10):
            await csim.wait_for(lambda: made[3].session.session_id in other._poller.pending)
        csim.complete(made[3].session.session_id, "bo@acme.io")
        with anyio.fail_after(10):
            assert (await other._poller.pending[made[3].session.session_id]).ok
    secrets = [s.session_id for s in sessions] + [s.auth_url for s in sessions]
    seen = [(r.getMessage(), json.dumps(r.__dict__, default=str)) for r in logs.records]
    assert len(seen) > 20
    leaks = [text for text in seen for secret in secrets if secret in text[0] or secret in text[1]]
    assert leaks == []
    keys = {getattr(r, "session_key", None) for r in logs.records} - {None}
    paths = {getattr(r, "path", "") for r in logs.records}
    assert keys and all(any(k in p for p in paths) for k in keys)  # the same key in both
