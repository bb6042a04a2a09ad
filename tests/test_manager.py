"""OAuthManager against the simulator, in compressed time (limits scaled the same on both sides)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from instantly_oauth_async import (
    CircuitOpenError,
    ClientStateError,
    ConfigurationError,
    ConnectResult,
    IPBlockedError,
    MemoryStore,
    OAuthManager,
    OAuthSession,
    OutcomeLostError,
    Provider,
    RateLimit,
    RetryPolicy,
    ServiceUnavailableError,
    SessionCancelledError,
    SessionStatus,
    UnauthorizedError,
)
from instantly_oauth_async._limits.breaker import BreakerPolicy, CircuitState
from instantly_oauth_async.testing import CannedResponse, Faults, Simulator, SimulatorLimits

pytestmark = pytest.mark.anyio

FACTOR = 20  # a 60 s window lasts 3 s; a session lives 30 s


MakeManager = Callable[..., OAuthManager]


@pytest.fixture
def make(csim: Simulator) -> MakeManager:
    store = MemoryStore()

    def factory(api_key: str | None = None, **kwargs: Any) -> OAuthManager:
        key = api_key or csim.add_workspace().api_key
        options: dict[str, Any] = {
            "base_url": csim.url,
            "init_limit": RateLimit(75, per=60 / FACTOR),
            "ip_init_limit": RateLimit(150, per=60 / FACTOR),
            "poll_interval": 0.05,
            "expiry_grace": 1.0,
            "store": store,
            "seed": 1,
        }
        options.update(kwargs)
        return OAuthManager(key, **options)

    return factory


def status_reads(sim: Simulator, session_id: str) -> int:
    return sum(1 for r in sim.requests if r.kind == "status" and r.path.endswith(session_id))


async def test_start_then_success_resolves_with_the_account(csim: Simulator,
                                                            make: MakeManager) -> None:
    async with make() as manager:
        pending = await manager.start(Provider.GOOGLE, expected_email="ann@acme.io")
        assert pending.session.provider is Provider.GOOGLE
        csim.complete(pending.session.session_id, "ann@acme.io", "Ann Lee")
        result = await pending
    assert isinstance(result, ConnectResult)
    assert result.ok and result.status is SessionStatus.SUCCESS
    assert (result.email, result.name) == ("ann@acme.io", "Ann Lee")
    assert result.account is not None and result.account.email == "ann@acme.io"
    assert result.session == pending.session
    assert not result.email_mismatch and not result.reconciled


async def test_denied_session_is_a_result_not_an_exception(csim: Simulator,
                                                           make: MakeManager) -> None:
    async with make() as manager:
        pending = await manager.start("microsoft")
        csim.deny(pending.session.session_id)
        result = await pending.result()
    assert result.status is SessionStatus.ERROR and not result.ok
    assert result.error == "access_denied" and result.account is None


async def test_expired_session_is_reported_by_the_server(csim: Simulator,
                                                         make: MakeManager) -> None:
    async with make() as manager:
        pending = await manager.start("google")
        csim.expire(pending.session.session_id)
        result = await pending
    assert result.status is SessionStatus.EXPIRED


async def test_another_mailbox_connected_is_flagged(csim: Simulator, make: MakeManager) -> None:
    async with make() as manager:
        pending = await manager.start("google", expected_email="ann@acme.io")
        csim.complete(pending.session.session_id, "bob@acme.io")
        result = await pending
    assert result.ok and result.email_mismatch and result.email == "bob@acme.io"


async def test_awaiters_share_one_poll_loop(csim: Simulator, make: MakeManager) -> None:
    async with make() as manager:
        pending = await manager.start("google")
        results: list[ConnectResult] = []

        async def wait() -> None:
            results.append(await pending)

        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            csim.complete(pending.session.session_id, "ann@acme.io")
    assert len(results) == 5 and all(r is results[0] for r in results)
    assert results[0].ok  # five awaiters, one terminal read: the server answers it only once


async def test_account_fetch_failure_keeps_the_success(csim: Simulator,
                                                       make: MakeManager) -> None:
    async with make(retry=RetryPolicy(attempts=5, base=0.01, cap=0.05)) as manager:
        pending = await manager.start("google")
        csim.complete(pending.session.session_id, "ann@acme.io")
        for _ in range(5):
            csim.enqueue("account", CannedResponse(500, "{}"))
        result = await pending
    assert result.ok and result.account is None
    assert result.account_error is not None and "500" in result.account_error


async def test_fetch_account_can_be_switched_off(csim: Simulator, make: MakeManager) -> None:
    async with make(fetch_account=False) as manager:
        pending = await manager.start("google")
        csim.complete(pending.session.session_id, "ann@acme.io")
        result = await pending
    assert result.ok and result.account is None and result.account_error is None
    assert not [r for r in csim.requests if r.kind == "account"]


async def test_lost_terminal_answer_is_reconciled_through_accounts(csim: Simulator,
                                                                   make: MakeManager) -> None:
    async with make() as manager:
        pending = await manager.start("google", expected_email="ann@acme.io")
        csim.advance(2)  # the person takes a couple of seconds, as people do
        csim.complete(pending.session.session_id, "ann@acme.io")
        csim.faults = Faults(reset_after=1.0, kinds=frozenset({"status"}))
        result = await pending
    assert result.ok and result.reconciled and result.account is not None
    assert any(r.outcome == "acted-then-reset" for r in csim.requests)


async def test_lost_terminal_answer_without_expected_email_is_a_typed_error(
    csim: Simulator, make: MakeManager
) -> None:
    async with make() as manager:
        pending = await manager.start("google")
        csim.deny(pending.session.session_id)
        csim.faults = Faults(reset_after=1.0, kinds=frozenset({"status"}))
        with pytest.raises(OutcomeLostError, match="expected_email"):
            await pending


async def test_lost_answer_is_not_a_success_when_the_mailbox_was_connected_before(
    csim: Simulator, make: MakeManager
) -> None:
    async with make() as manager:
        earlier = await manager.start("google")
        csim.complete(earlier.session.session_id, "ann@acme.io")
        assert (await earlier).ok
        csim.advance(5)
        pending = await manager.start("google", expected_email="ann@acme.io")
        csim.advance(2)
        # the person denies this time, and the one-time answer is lost
        csim.faults = Faults(reset_after=1.0, kinds=frozenset({"status"}))
        csim.deny(pending.session.session_id)
        with pytest.raises(OutcomeLostError, match="before this session"):
            await pending


async def test_429_on_init_is_waited_out_and_blocks_every_init(csim: Simulator,
                                                               make: MakeManager) -> None:
    async with make() as manager:
        csim.enqueue("init", CannedResponse(429, "{}", (("Retry-After", "1"),)))
        pending = await manager.start("google")
        inits = [r for r in csim.requests if r.kind == "init"]
    assert [r.status for r in inits] == [429, 200]
    assert inits[1].at - inits[0].at >= 0.99  # nothing left during the block
    assert pending.session.session_id
    assert manager.stats().rate_limited == 1


async def test_long_block_fails_fast_and_sends_nothing_more(csim: Simulator,
                                                            make: MakeManager) -> None:
    async with make() as manager:
        csim.enqueue("init", CannedResponse(429, "{}", (("Retry-After", "1800"),)))
        with pytest.raises(IPBlockedError) as info:
            await manager.start("google")
        assert info.value.retry_after == 1800 and info.value.until.tzinfo is not None
        with pytest.raises(IPBlockedError):
            await manager.start("google")
        await manager.start("microsoft")  # the block is per provider
    google = [r for r in csim.requests if r.kind == "init" and r.provider == "google"]
    assert len(google) == 1  # never a second request into the block


async def test_block_is_shared_by_managers_of_one_store(csim: Simulator,
                                                        make: MakeManager) -> None:
    async with make() as first, make() as second:
        csim.enqueue("init", CannedResponse(429, "{}", (("Retry-After", "1800"),)))
        with pytest.raises(IPBlockedError):
            await first.start("google")
        with pytest.raises(IPBlockedError):
            await second.start("google")
    assert len([r for r in csim.requests if r.kind == "init"]) == 1


async def test_bad_key_raises_at_once(csim: Simulator, make: MakeManager) -> None:
    async with make("wrong-key") as manager:
        with pytest.raises(UnauthorizedError):
            await manager.start("google")
    assert len(csim.requests) == 1


async def test_transient_503_is_retried_with_a_new_token(csim: Simulator,
                                                         make: MakeManager) -> None:
    async with make(breaker=BreakerPolicy(failure_threshold=5, cooldown=0.2)) as manager:
        csim.outage("google", count=2)
        pending = await manager.start("google")
    assert [r.status for r in csim.requests if r.kind == "init"] == [503, 503, 200]
    assert pending.session.session_id


async def test_breaker_opens_probes_once_and_closes(csim: Simulator, make: MakeManager) -> None:
    policy = BreakerPolicy(failure_threshold=2, cooldown=0.3, probe_timeout=5)
    async with make(breaker=policy, retry=RetryPolicy(attempts=2, base=0.01)) as manager:
        csim.outage("google", count=2)
        with pytest.raises(ServiceUnavailableError):
            await manager.start("google")
        assert manager.stats().breakers["google"] is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            await manager.start("google", timeout=0)
        other = await manager.start("microsoft")  # a Google outage never slows Microsoft
        assert other.session.provider is Provider.MICROSOFT
        before = len(csim.requests)
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(manager.start, "google")
        google_after = [r for r in csim.requests[before:] if r.provider == "google"
                        and r.kind == "init"]
        assert len(google_after) == 5 and google_after[0].status == 200
        kinds = [(t.old.value, t.new.value) for t in manager.stats().transitions]
    assert kinds == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_cancelling_one_awaiter_cancels_nothing_else(csim: Simulator,
                                                           make: MakeManager) -> None:
    async with make() as manager:
        pending = await manager.start("google")
        with anyio.move_on_after(0.01):
            await pending
        csim.complete(pending.session.session_id, "ann@acme.io")
        assert (await pending).ok


async def test_pending_cancel_stops_only_that_session(csim: Simulator,
                                                      make: MakeManager) -> None:
    async with make() as manager:
        doomed = await manager.start("google")
        kept = await manager.start("google")
        doomed.cancel()
        with pytest.raises(SessionCancelledError):
            await doomed
        reads = status_reads(csim, doomed.session.session_id)
        csim.complete(kept.session.session_id, "ann@acme.io")
        assert (await kept).ok
        assert status_reads(csim, doomed.session.session_id) == reads


async def test_resume_polls_a_session_created_elsewhere(csim: Simulator,
                                                        make: MakeManager) -> None:
    """Saved as JSON by one manager, which cancels it and closes (its lease let go), and
    resumed by another on the same store: polled at once, not after the lease lapses."""
    key = csim.add_workspace().api_key
    async with make(key) as creator:
        pending = await creator.start("microsoft")
        wire = pending.session.to_json()
        pending.cancel()
    session = OAuthSession.from_json(wire)
    async with make(key) as worker:
        resumed = worker.resume(session)
        assert worker.resume(session) is resumed
        csim.complete(session.session_id, "bo@corp.io")
        with anyio.fail_after(5):  # the lease is 30 s: a lapse would take 20 s
            result = await resumed
    assert result.ok and result.session == session


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
async def test_server_clock_skew_does_not_expire_sessions_early(skew: float) -> None:
    limits = SimulatorLimits().compressed(FACTOR)
    async with Simulator(limits=limits, wall_skew=skew) as sim:
        key = sim.add_workspace().api_key
        async with OAuthManager(key, base_url=sim.url, poll_interval=0.05, expiry_grace=1.0,
                                store=MemoryStore()) as manager:
            pending = await manager.start("google")
            for _ in range(3):  # a few pending reads with the skewed Date header
                await _wait_for_reads(sim, pending.session.session_id, 3)
            assert not pending.done()
            sim.complete(pending.session.session_id, "ann@acme.io")
            assert (await pending).ok


async def _wait_for_reads(sim: Simulator, session_id: str, count: int) -> None:
    with anyio.fail_after(10):
        while status_reads(sim, session_id) < count:  # noqa: ASYNC110 - the log has no event
            await anyio.sleep(0.01)


async def test_connect_many_yields_every_result(csim: Simulator, make: MakeManager) -> None:
    seen: list[OAuthSession] = []

    async def on_session(session: OAuthSession) -> None:
        seen.append(session)
        if len(seen) % 3 == 0:
            csim.deny(session.session_id)
        else:
            csim.complete(session.session_id, f"user{len(seen)}@corp.io")

    async with make() as manager:
        results = [r async for r in manager.connect_many("microsoft", 12, on_session=on_session)]
    assert len(results) == 12 and len(seen) == 12
    assert sum(r.ok for r in results) == 8
    assert {r.session.session_id for r in results} == {s.session_id for s in seen}


async def test_connect_many_bounds_pending_sessions(csim: Simulator, make: MakeManager) -> None:
    peak = 0
    send, receive = anyio.create_memory_object_stream[OAuthSession](100)

    def on_session(session: OAuthSession) -> None:
        nonlocal peak
        peak = max(peak, len(csim.pending_sessions()))
        send.send_nowait(session)

    async def person() -> None:  # completes one session at a time, after the library polled it
        async with receive:
            async for session in receive:
                await _wait_for_reads(csim, session.session_id, 1)
                csim.complete(session.session_id, f"{session.session_id[:8]}@corp.io")

    async with make() as manager, anyio.create_task_group() as group:
        group.start_soon(person)
        results = [r async for r in manager.connect_many("google", 9, on_session=on_session,
                                                         max_pending=3)]
        send.close()
    assert len(results) == 9 and all(r.ok for r in results)
    assert 1 <= peak <= 3  # the 4th session waited for a result before it was created


async def test_connect_many_renews_expired_sessions(csim: Simulator, make: MakeManager) -> None:
    calls: list[str] = []

    def on_session(session: OAuthSession) -> None:
        calls.append(session.session_id)
        if len(calls) == 1:
            csim.expire(session.session_id)
        else:
            csim.complete(session.session_id, "ann@acme.io")

    async with make() as manager:
        results = [r async for r in manager.connect_many("google", 1, on_session=on_session,
                                                         renew_expired=1)]
    assert len(calls) == 2
    assert [r.status for r in results] == [SessionStatus.SUCCESS]
    assert results[0].session.session_id == calls[1]


async def test_connect_many_raises_a_lost_outcome_after_the_other_results(
    csim: Simulator, make: MakeManager
) -> None:
    sessions: list[OAuthSession] = []

    def on_session(session: OAuthSession) -> None:
        sessions.append(session)
        csim.complete(session.session_id, f"u{len(sessions)}@corp.io")

    async with make() as manager:
        csim.faults = Faults(reset_after=1.0, kinds=frozenset({"status"}))
        got: list[ConnectResult] = []

        async def drain() -> None:
            got.extend([r async for r in manager.connect_many("google", 2,
                                                              on_session=on_session)])

        with pytest.raises(OutcomeLostError):
            await drain()
    assert got == []  # both answers were lost; neither was reported as failed


async def test_leaving_the_block_stops_polling_and_closes(csim: Simulator,
                                                          make: MakeManager) -> None:
    manager = make()
    async with manager:
        pending = await manager.start("google")
        await _wait_for_reads(csim, pending.session.session_id, 1)
    count = len(csim.requests)
    with pytest.raises(ClientStateError):
        await pending
    with pytest.raises(ClientStateError):
        await manager.start("google")
    assert manager.stats().pending == 0
    assert manager.client._session is not None and manager.client._session.closed
    assert len(csim.requests) == count


async def test_stats_snapshot(csim: Simulator, make: MakeManager) -> None:
    async with make() as manager:
        pending = await manager.start("google")
        csim.complete(pending.session.session_id, "ann@acme.io")
        await pending
        stats = manager.stats()
    assert stats.requests["init"] == {200: 1}
    assert stats.requests["account"] == {200: 1}
    assert stats.results == {"success": 1} and stats.sessions_created == 1


async def test_api_key_stays_out_of_repr_and_logs(csim: Simulator, make: MakeManager,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = csim.add_workspace().api_key
    async with make(key) as manager:
        csim.enqueue("init", CannedResponse(429, "{}", (("Retry-After", "1"),)))
        pending = await manager.start("google")
        csim.complete(pending.session.session_id, "ann@acme.io")
        result = await pending
        texts = [repr(manager), repr(pending), repr(result), repr(manager.stats())]
    texts += [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if key in t]


@pytest.mark.parametrize("kwargs", [{"poll_interval": 0}, {"status_limit": []},
                                    {"standard_limit": []}, {"standard_limit": (100, 1)},
                                    {"init_limit": 75}, {"max_block_wait": -1}])
def test_bad_arguments_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        OAuthManager("k", base_url="http://127.0.0.1:1", **kwargs)


async def test_using_a_manager_outside_its_block_is_an_error() -> None:
    manager = OAuthManager("k", base_url="http://127.0.0.1:1")
    with pytest.raises(ClientStateError):
        await manager.start("google")
    await manager.aclose()


async def test_a_manager_entered_and_left_at_once_closes_cleanly(csim: Simulator) -> None:
    # The poll scheduler may not have run yet when the block ends: it must not mind.
    workspace = csim.add_workspace("brief")
    async with OAuthManager(workspace.api_key, base_url=csim.url):
        pass


async def test_the_manager_names_its_store(csim: Simulator) -> None:
    """``manager.store`` is the store given, or the process's default one, which every manager
    of the process on the default shares (its budgets count for all of them)."""
    given = MemoryStore()
    async with OAuthManager("k1", base_url=csim.url, store=given) as mine, \
            OAuthManager("k2", base_url=csim.url) as first, \
            OAuthManager("k3", base_url=csim.url) as second:
        assert mine.store is given
        assert first.store is second.store is not given
        assert isinstance(first.store, MemoryStore)
