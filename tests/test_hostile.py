"""Hostile answers over real HTTP: whatever the server sends, the client returns a record or
raises one of its own typed errors, and every wait a ``Retry-After`` asks for is capped."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instantly_oauth_async import (
    Account,
    InstantlyClient,
    InstantlyError,
    OAuthSession,
    OAuthStatus,
    RateLimitedError,
)
from instantly_oauth_async._wire.sansio import MAX_RETRY_AFTER
from instantly_oauth_async.testing import CannedResponse, Simulator, Workspace

pytestmark = pytest.mark.anyio
REUSE = [HealthCheck.function_scoped_fixture]  # one simulator and client for all examples

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=5),
    max_leaves=12,
)
field_names = ["session_id", "auth_url", "expires_at", "status", "email", "error", "name",
               "error_description", "timestamp_created", "timestamp_updated", "warmup",
               "provider_code", "first_name", "last_name", "organization"]
near_miss = st.dictionaries(st.sampled_from(field_names), json_values, max_size=8)


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


bodies = st.one_of(
    near_miss.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),  # invalid UTF-8 and plain garbage
    st.integers(1, 100_000).map(deep),  # nesting deep enough to hit the parser's recursion limit
    st.just(b'{"status": "pending"' ), st.just(b"\xff\xfe{}"), st.just(b"1e999999"),
)
content_types = st.sampled_from(["application/json", "text/html", "text/plain",
                                 "application/octet-stream", "application/json; charset=latin-1"])
statuses = st.sampled_from([200, 200, 200, 201, 204, 301, 400, 401, 404, 418, 429, 500, 502, 503])
kinds = st.sampled_from(["init", "status", "account"])


async def call(client: InstantlyClient, kind: str) -> Any:
    if kind == "init":
        return await client.init_oauth("google")
    if kind == "status":
        return await client.get_oauth_status("some-session")
    return await client.get_account("ann@acme.io")


@settings(max_examples=300, deadline=None, suppress_health_check=REUSE)
@given(kind=kinds, status=statuses, body=bodies, content_type=content_types)
async def test_any_answer_gives_a_record_or_a_typed_error(  # noqa: PLR0917 - fixtures + given
    client: InstantlyClient, sim: Simulator, workspace: Workspace,
    kind: str, status: int, body: bytes, content_type: str,
) -> None:
    sim.enqueue(kind, CannedResponse(status, body, content_type=content_type))  # type: ignore[arg-type]
    error: InstantlyError | None = None
    try:
        record = await call(client, kind)
    except InstantlyError as exc:  # anything else fails the test
        error, record = exc, None
    if error is None:
        assert isinstance(record, (OAuthSession, OAuthStatus, Account))
        return
    assert workspace.api_key not in str(error)
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        assert 0 <= error.retry_after <= MAX_RETRY_AFTER


@pytest.mark.parametrize("values", [
    [""], ["-5"], ["1e9"], ["NaN"], ["inf"], ["Wed, 99 Foo 2026 25:61:00 GMT"], ["0x10"],
    ["5", "1e9"], ["soon", "7"], ["Mon, 01 Jan 1900 00:00:00 GMT"],
])
async def test_every_retry_after_is_a_capped_wait(
    client: InstantlyClient, sim: Simulator, values: list[str]
) -> None:
    headers = tuple(("Retry-After", v) for v in values)
    sim.enqueue("init", CannedResponse(429, b'{"statusCode":429}', headers=headers))
    with pytest.raises(RateLimitedError) as info:
        await client.init_oauth("google")
    wait = info.value.retry_after
    assert wait is None or 0 <= wait <= MAX_RETRY_AFTER
