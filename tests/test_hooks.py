"""Hooks: plain callables of one event, refused when they are coroutine functions, swallowed
(and logged) when they raise, and told nothing secret."""

from __future__ import annotations

import logging

import attrs
import pytest

from instantly_oauth_async import ConfigurationError, MemoryStore, OAuthManager
from instantly_oauth_async._observe.events import (
    BudgetWaited,
    Event,
    Hooks,
    RequestFinished,
    SessionResolved,
    SessionStarted,
)
from instantly_oauth_async.testing import CannedResponse, Simulator

pytestmark = pytest.mark.anyio


def test_a_coroutine_function_is_refused_at_registration() -> None:
    async def hook(event: Event) -> None: ...

    class AsyncCallable:
        async def __call__(self, event: Event) -> None: ...

    for bad in (hook, AsyncCallable()):
        with pytest.raises(ConfigurationError, match="coroutine function"):
            OAuthManager("key", hooks=[bad])
    with pytest.raises(ConfigurationError, match="callable"):
        OAuthManager("key", hooks=["not a hook"])  # type: ignore[list-item]


def test_a_raising_hook_is_logged_once_a_minute_and_swallowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    hooks = Hooks([broken, seen.append])
    with caplog.at_level(logging.ERROR, logger="instantly_oauth_async"):
        for _ in range(3):
            hooks.emit(SessionStarted("google", 1))
    assert len(seen) == 3  # the next hook still ran, every time
    assert [r.getMessage() for r in caplog.records].count(
        "hook test_a_raising_hook_is_logged_once_a_minute_and_swallowed.<locals>.broken raised "
        "on SessionStarted (reported at most once a minute)") == 1


async def test_a_scripted_session_tells_its_story_and_no_secret(csim: Simulator) -> None:
    workspace = csim.add_workspace()
    events: list[Event] = []
    async with OAuthManager(workspace.api_key, base_url=csim.url, store=MemoryStore(),
                            **csim.limits.manager_limits(poll_interval=0.05),
                            hooks=[events.append, lambda e: 1 / 0]) as manager:
        csim.enqueue("status", CannedResponse(429, "{}", (("Retry-After", "0"),)))
        pending = await manager.start("google", expected_email="ann@acme.io")
        csim.complete(pending.session.session_id, "ann@acme.io")
        result = await pending
    assert result.ok
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "BudgetWaited" and kinds[-1] == "SessionResolved"
    finished = [e for e in events if isinstance(e, RequestFinished)]
    assert [(e.operation, e.status) for e in finished] == [
        ("init", 200), ("status", 429), ("status", 200), ("account", 200)]
    assert finished[0].provider == "google" and finished[1].provider == "google"
    assert finished[1].error_type == "RateLimitedError" and finished[1].retry_after == 0
    assert all(e.duration > 0 for e in finished)
    started = [e for e in events if isinstance(e, SessionStarted)]
    assert len(started) == 1 and started[0].provider == "google" and not started[0].resumed
    resolved = [e for e in events if isinstance(e, SessionResolved)]
    assert len(resolved) == 1 and resolved[0].key == started[0].key
    assert {(e.server_address, e.server_port) for e in finished} == {
        ("127.0.0.1", int(csim.url.rsplit(":", 1)[1]))}
    assert (resolved[0].outcome, resolved[0].polls, resolved[0].reconciled) == ("success", 2, False)
    waits = [e for e in events if isinstance(e, BudgetWaited)]
    assert {e.budget for e in waits} == {"init", "read"} and all(e.granted for e in waits)
    secrets = (workspace.api_key, pending.session.session_id, pending.session.auth_url,
               "ann@acme.io", "acme.io")
    for event in events:
        for value in attrs.astuple(event):
            assert not any(s in str(value) for s in secrets), event
