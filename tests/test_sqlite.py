"""SQLiteStore in one process, on real files in tmp_path (issue 22): the registry contract of
tests/test_registry.py, the budgets and breakers step for step against the pure functions,
blocks and the one probe across two stores on one file, and managers on it against the
simulator. The multi-process tests are in tests/test_sqlite_processes.py."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instantly_oauth_async import OAuthManager, Provider, RateLimit, SessionStatus, Store
from instantly_oauth_async._limits.breaker import BreakerPolicy, BreakerState, CircuitState, admit
from instantly_oauth_async._limits.breaker import record as record_verdict
from instantly_oauth_async._limits.breaker import release as release_probe
from instantly_oauth_async._limits.limiter import SlotLog
from instantly_oauth_async._limits.limiter import release as release_slot
from instantly_oauth_async._limits.limiter import take as take_slot
from instantly_oauth_async._stores.registry import ANSWER, Registry
from instantly_oauth_async.sqlite import SQLiteRegistry, SQLiteStore, StoreError
from instantly_oauth_async.testing import FakeClock, Network, Simulator, SimulatorLimits
from tests._reads import overlapping_reads

# The registry's contract, run here against SQLiteRegistry: pytest collects these functions
# again in this module, where the ``registry`` and ``clock`` fixtures below serve them.
from tests.test_registry import (  # noqa: F401
    test_a_live_lease_cannot_be_claimed_a_lapsed_one_can_once,
    test_a_release_wakes_the_namespace_and_is_counted,
    test_a_stale_fence_is_refused,
    test_a_waiter_wakes_on_a_decision_and_on_its_timeout,
    test_decided_entries_are_forgotten_after_retention,
    test_outcomes_first_writer_wins_precedence_and_the_fence,
    test_register_claims_for_the_starter,
    test_release_lets_another_adopt_at_once,
    test_renew_keeps_what_is_ours_and_names_what_is_not,
)

pytestmark = pytest.mark.anyio
FIXTURE_REUSE = HealthCheck.function_scoped_fixture  # the file is reused; keys are per example
NS = "iox:test:reg:ws1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def registry(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Registry]:
    async with SQLiteStore(tmp_path / "registry.db", clock=clock) as store:
        yield store.registry


@pytest.fixture
async def pair(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[SQLiteStore, ...]]:
    """Two stores on one file (two connections, as two processes have), on one clock."""
    async with SQLiteStore(tmp_path / "pair.db", clock=clock) as one, \
            SQLiteStore(tmp_path / "pair.db", clock=clock) as two:
        yield one, two


async def test_the_store_is_a_store_and_its_registry_a_registry(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "s.db") as store:
        assert isinstance(store, Store)
        assert isinstance(store.registry, Registry)
        assert store.registry is store.registry
        assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600


# -- the same answers as the pure functions -------------------------------------------------

# Each step also says through which of the two stores on the file it goes.
slot_ops = st.lists(
    st.tuples(st.one_of(
        st.tuples(st.just("take"), st.floats(0, 3), st.booleans(), st.floats(0.1, 5)),
        st.tuples(st.just("release"), st.floats(0, 3), st.integers(0, 20), st.just(0.0)),
    ), st.integers(0, 1)),
    min_size=1, max_size=40,
)
small_limits = st.builds(RateLimit, st.integers(1, 4), st.floats(0.5, 5), st.floats(0, 0.1))


@settings(max_examples=40, deadline=None, suppress_health_check=[FIXTURE_REUSE])
@given(small_limits, small_limits, slot_ops)
async def test_take_and_release_match_the_limiter_through_either_store(
    pair: tuple[SQLiteStore, SQLiteStore], clock: FakeClock, a: RateLimit, b: RateLimit,
    ops: list[tuple[tuple[str, float, Any, float], int]],
) -> None:
    """Each step goes through one of two stores on the file: they keep one budget."""
    prefix = uuid.uuid4().hex
    specs = [(f"{prefix}:a", a), (f"{prefix}:b", b)]
    logs: dict[str, SlotLog] = {}
    leases, serial = list[str](), 0
    for (op, dt, arg, hold), which in ops:
        clock.advance(dt)
        now, store = clock.monotonic(), pair[which]
        if op == "take":
            lease = f"{prefix}:{serial}" if arg else None
            serial += 1
            expected = take_slot(logs, specs, now, lease, hold)
            got, blocked = await store.take(specs, [], lease=lease, hold=hold)
            assert not blocked
            assert got == pytest.approx(expected, abs=1e-9)
            if expected == 0 and lease is not None:
                leases.append(lease)
        elif leases:
            lease = leases.pop(arg % len(leases))
            release_slot(logs, specs, lease, now)
            await store.release(specs, lease)


breaker_ops = st.lists(
    st.tuples(st.one_of(
        st.tuples(st.just("admit"), st.floats(0, 20), st.booleans(), st.none()),
        st.tuples(st.just("record"), st.floats(0, 20), st.booleans(),
                  st.one_of(st.none(), st.floats(0, 100))),
        st.tuples(st.just("release"), st.floats(0, 20), st.booleans(), st.none()),
    ), st.integers(0, 1)),
    min_size=1, max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[FIXTURE_REUSE])
@given(breaker_ops, st.booleans())
async def test_breakers_match_the_state_machine_through_either_store(
    pair: tuple[SQLiteStore, SQLiteStore], clock: FakeClock,
    ops: list[tuple[tuple[str, float, bool, float | None], int]], success: bool,
) -> None:
    key, policy, state = f"{uuid.uuid4().hex}:breaker", BreakerPolicy(), BreakerState()
    for (op, dt, flag, retry_after), which in ops:
        clock.advance(dt)
        now, store = clock.monotonic(), pair[which]
        if op == "admit":
            expected, _ = admit(state, policy, now)
            got = await store.breaker_admit(key, policy)
            assert (got.allowed, got.probe) == (expected.allowed, expected.probe)
            assert got.wait == pytest.approx(expected.wait, abs=1e-9)
        elif op == "record":
            outcome = flag ^ success
            record_verdict(state, policy, now, success=outcome, probe=flag,
                           retry_after=retry_after)
            await store.breaker_record(key, policy, success=outcome, probe=flag,
                                       retry_after=retry_after)
        else:
            release_probe(state, probe=flag)
            await store.breaker_release(key, probe=flag)
        assert await store.breaker_state(key) is state.state


async def test_the_askers_of_both_stores_are_served_in_turn(
    pair: tuple[SQLiteStore, SQLiteStore], clock: FakeClock,
) -> None:
    """A full budget: the first to ask is told when the first slot comes back, the second when
    the second does, whichever store each asks through; the second asking early gets nothing."""
    one, two = pair
    specs = [("line:k", RateLimit(2, per=10, margin=0))]
    assert await one.take(specs, [], asker="x") == (0.0, False)
    clock.advance(1)
    assert await two.take(specs, [], asker="y") == (0.0, False)
    wait_a, _ = await one.take(specs, [], asker="a")
    wait_b, _ = await two.take(specs, [], asker="b")
    assert wait_a == pytest.approx(9)
    assert wait_b == pytest.approx(10)
    clock.advance(9)
    assert (await two.take(specs, [], asker="b"))[0] == pytest.approx(1)  # a's turn, not b's
    assert await one.take(specs, [], asker="a") == (0.0, False)
    clock.advance(1)
    assert await two.take(specs, [], asker="b") == (0.0, False)


async def test_blocks_are_shared_kept_in_the_file_and_the_longest_wins(
    tmp_path: Path, clock: FakeClock,
) -> None:
    path = tmp_path / "blocks.db"
    async with SQLiteStore(path, clock=clock) as first, SQLiteStore(path, clock=clock) as second:
        await first.block(["blk"], 30)
        await second.block(["blk"], 5)  # shorter: does not shorten the first
        assert await second.blocked_for(["blk"]) == pytest.approx(30)
        wait, blocked = await second.take([("blk:k", RateLimit(5, per=1))], ["blk"])
        assert blocked and wait == pytest.approx(30)
    clock.advance(10)
    async with SQLiteStore(path, clock=clock) as later:  # a process started after the 429
        assert await later.blocked_for(["blk", "other"]) == pytest.approx(20)
        clock.advance(21)
        assert await later.blocked_for(["blk"]) == 0.0


async def test_one_probe_for_every_store_on_the_file(
    pair: tuple[SQLiteStore, SQLiteStore], clock: FakeClock,
) -> None:
    one, two = pair
    key, policy = "brk", BreakerPolicy(failure_threshold=2, cooldown=5)
    specs = [("brk:k", RateLimit(100, per=1))]
    await one.breaker_record(key, policy, success=False, probe=False)
    moved = await two.breaker_record(key, policy, success=False, probe=False)
    assert moved is not None and moved.new is CircuitState.OPEN  # two failures, two stores
    assert await one.breaker_state(key) is CircuitState.OPEN
    wait, _, shut = await one.take_gated(specs, [], (key, policy))
    assert not shut.allowed and wait == pytest.approx(5)
    clock.advance(5)
    _, _, probe = await two.take_gated(specs, [], (key, policy))
    assert probe.allowed and probe.probe
    for store in pair:  # the probe is out: nobody else goes, through either store
        assert not (await store.breaker_admit(key, policy)).allowed
        assert not (await store.take_gated(specs, [], (key, policy)))[2].allowed
    closed = await two.breaker_record(key, policy, success=True, probe=True)
    assert closed is not None and closed.new is CircuitState.CLOSED
    assert (await one.take_gated(specs, [], (key, policy)))[2].allowed


async def test_a_probe_without_a_slot_is_given_back(
    pair: tuple[SQLiteStore, SQLiteStore], clock: FakeClock,
) -> None:
    one, two = pair
    key, policy = "brk2", BreakerPolicy(failure_threshold=1, cooldown=5)
    specs = [("brk2:k", RateLimit(1, per=60))]
    assert await one.take(specs, []) == (0.0, False)  # the only slot
    await one.breaker_record(key, policy, success=False, probe=False)
    clock.advance(5)
    wait, _, admission = await one.take_gated(specs, [], (key, policy))
    assert wait > 0 and not admission.probe  # no slot: no probe either
    assert (await two.breaker_admit(key, policy)).probe  # the probe is still to be had


async def test_a_waiter_on_one_store_learns_what_another_connection_decided(
    pair: tuple[SQLiteStore, SQLiteStore],
) -> None:
    """No pub/sub: the watcher's poll of the file wakes the waiter, on real time (the stores'
    fake clock stands still), and counts the other connection's release."""
    here, there = pair[0].registry, pair[1].registry
    for sid in ("s1", "s2"):
        await there.register(NS, sid, "{}", owner="a", lease=60, retention=600)
    before = here.releases(NS)
    woke = anyio.Event()

    async def waiter() -> None:
        await here.wait(NS, "s1", 3600.0)
        woke.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await there.decide(NS, "s1", "success", ANSWER, fence=1, retention=600)
        with anyio.fail_after(1):  # woken by the poll (every 50 ms)
            await woke.wait()
    async with anyio.create_task_group() as group:
        group.start_soon(here.wait, NS, "\x00released-not", 3600.0)  # unrelated: stays
        group.start_soon(here.wait, NS, "", 3600.0)
        await anyio.wait_all_tasks_blocked()
        await there.release(NS, "a", {"s2": 1})
        with anyio.fail_after(1):
            while "" in here._waiters.get(NS, {}):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert "\x00released-not" in here._waiters[NS]
        group.cancel_scope.cancel()
    assert here.releases(NS) == before + 1
    assert await here.orphans(NS) == ["s2"]


async def test_of_twenty_racing_claimers_on_their_own_connections_exactly_one_wins(
    tmp_path: Path,
) -> None:
    path = tmp_path / "race.db"
    async with contextlib.AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(SQLiteStore(path)) for _ in range(21)]
        starter = stores[0].registry
        await starter.register(NS, "s1", "{}", owner="starter", lease=60, retention=600)
        await starter.release(NS, "starter", {"s1": 1})
        won: dict[str, int] = {}

        async def claim(index: int) -> None:
            entry = await stores[index].registry.claim(NS, "s1", f"c{index}", lease=60)
            if entry is not None:
                won[f"c{index}"] = entry.fence

        async with anyio.create_task_group() as group:
            for index in range(1, 21):
                group.start_soon(claim, index)
        assert len(won) == 1 and list(won.values()) == [2]
        entry = await starter.get(NS, "s1")
        assert entry is not None and (entry.owner, entry.fence) == (*won, 2)


async def test_closing_wakes_waiters_and_later_steps_are_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "close.db")
    registry: SQLiteRegistry = store.registry
    await registry.register(NS, "s1", "{}", owner="a", lease=60, retention=600)
    async with anyio.create_task_group() as group:
        group.start_soon(registry.wait, NS, "s1", 60.0)
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await store.aclose()
    with pytest.raises(Exception, match="closed"):
        await registry.get(NS, "s1")
    with pytest.raises(Exception, match="closed"):
        await store.take([("k", RateLimit(1, per=1))], [])


async def test_a_missing_directory_is_a_clear_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot be opened"):
        async with SQLiteStore(tmp_path / "nope" / "x.db"):
            pass
    store = SQLiteStore(tmp_path / "nope" / "x.db")  # not entered: at its first step
    try:
        with pytest.raises(StoreError, match="cannot be opened"):
            await store.take([("k", RateLimit(1, per=1))], [])
    finally:
        await store.aclose()


async def test_a_file_that_is_not_a_database_is_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is no database, just some bytes that are long enough" * 100)
    with pytest.raises(StoreError, match="not a SQLite database") as caught:
        async with SQLiteStore(path):
            pass
    assert caught.value.code == "SQLITE_NOTADB"


# -- behind managers -------------------------------------------------------------------------

@pytest.fixture
async def csim() -> AsyncIterator[Simulator]:
    async with Simulator(limits=SimulatorLimits().compressed(20)) as simulator:
        yield simulator


def _options(sim: Simulator, **extra: Any) -> dict[str, Any]:
    return {"base_url": sim.url, **sim.limits.manager_limits(), "poll_interval": 0.05,
            "expiry_grace": 1.0, "session_lease": 1.5, "status_timeout": 0.5, **extra}


def _reads(sim: Simulator, session_id: str) -> int:
    return sum(1 for r in sim.requests if r.kind == "status" and r.path.endswith(session_id))


async def test_managers_on_two_stores_on_one_file_connect_and_attach(
    tmp_path: Path, csim: Simulator,
) -> None:
    """Sessions connect through a manager on a SQLiteStore; a second manager, on a second
    store object on the same file (another connection, as another process has), attaches to
    one and gets the same result without a request of its own."""
    key = csim.add_workspace().api_key
    path = tmp_path / "managers.db"
    async with SQLiteStore(path) as one, SQLiteStore(path) as two, \
            OAuthManager(key, store=one, **_options(csim)) as owner, \
            OAuthManager(key, store=two, **_options(csim)) as other:
        sessions = [await owner.start(Provider.GOOGLE, expected_email=f"p{i}@acme.io")
                    for i in range(3)]
        attached = await other.attach(sessions[0].session.session_id)
        assert attached.session == sessions[0].session
        for i, pending in enumerate(sessions):
            csim.complete(pending.session.session_id, f"p{i}@acme.io")
        with anyio.fail_after(10):
            results = [await pending for pending in sessions]
            theirs = await attached
        assert all(r.status is SessionStatus.SUCCESS for r in results)
        assert theirs == results[0]
        assert other.stats().requests == {}  # the watcher sent nothing
        again = await other.attach(sessions[1].session.session_id)  # decided: from the file
        with anyio.fail_after(5):
            assert await again == results[1]


async def test_a_closing_owner_hands_over_to_a_manager_on_another_store(
    tmp_path: Path,
) -> None:
    """The owner closes while a status read is on the wire; its lease is kept until that read
    is back, then let go, and the manager on the other store object adopts at once (its
    periodic pass would take 20 s), with no two reads of the session at the same time."""
    network = Network(latency=0.2, kinds=frozenset({"status"}))
    path = tmp_path / "handover.db"
    async with Simulator(limits=SimulatorLimits().compressed(20), network=network) as sim, \
            SQLiteStore(path) as one, SQLiteStore(path) as two:
        key = sim.add_workspace().api_key
        options = _options(sim, session_lease=30.0, status_timeout=1.0)
        async with OAuthManager(key, store=one, **options) as survivor:
            async with OAuthManager(key, store=two, **options) as owner:
                pending = await owner.start("google")
                sid = pending.session.session_id
                attached = await survivor.attach(sid)
                with anyio.fail_after(10):
                    await sim.wait_for(lambda: _reads(sim, sid) >= 1)
            read_by_owner = _reads(sim, sid)
            with anyio.fail_after(5):  # the survivor adopts it and polls it
                await sim.wait_for(lambda: _reads(sim, sid) > read_by_owner)
            assert sid in survivor._poller.pending
            sim.deny(sid)
            with anyio.fail_after(10):
                result = await attached
            assert result.status is SessionStatus.ERROR
            assert overlapping_reads(sim, sid) == []
