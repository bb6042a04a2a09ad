"""The in-process registry at its edges (issue 27): who may release, that a live entry is never
registered over, every lease boundary at exactly ``lease_until == now``, renewing what is not
there, orphans oldest first and limited, and what it forgets when (tests/test_registry.py holds
the contract shared with Redis; this is MemoryRegistry's own)."""

from __future__ import annotations

import json
import math

import anyio
import pytest

from instantly_oauth_async._stores.registry import (
    ANSWER,
    EXPIRED,
    LOST,
    RELEASED,
    Entry,
    MemoryRegistry,
)
from instantly_oauth_async.testing import FakeClock

pytestmark = pytest.mark.anyio

NS = "ns"
DAY = 86400.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)  # not 0: a "now" mistaken for 0 shows


@pytest.fixture
def reg(clock: FakeClock) -> MemoryRegistry:
    return MemoryRegistry(clock)


async def test_register_writes_the_whole_entry(reg: MemoryRegistry, clock: FakeClock) -> None:
    assert reg.now() == 100.0
    entry = await reg.register(NS, "s1", '{"a":1}', owner="a", lease=15, retention=DAY)
    assert entry == Entry("s1", '{"a":1}', 100.0, "a", 1, 115.0, None, 0)
    assert not entry.decided
    assert (len(reg), repr(reg)) == (1, "<MemoryRegistry sessions=1>")
    assert reg._open == {NS: {"s1": None}}


async def test_register_never_overwrites_a_live_entry(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "first", owner="a", lease=15, retention=DAY)
    await clock.run_for(20)
    claimed = await reg.claim(NS, "s1", "b", lease=15)
    assert claimed is not None and claimed.fence == 2
    again = await reg.register(NS, "s1", "second", owner="c", lease=99, retention=DAY)
    assert again == claimed  # owner b, fence 2, its lease and data: untouched
    assert await reg.get(NS, "s1") == claimed
    decided = await reg.decide(NS, "s1", "ok", ANSWER, fence=2, retention=DAY)
    assert await reg.register(NS, "s1", "third", owner="c", lease=5, retention=DAY) == decided


async def test_only_the_owner_with_its_fence_releases(reg: MemoryRegistry) -> None:
    entry = await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await reg.release(NS, "b", {"s1": entry.fence})  # right fence, wrong owner
    await reg.release(NS, "a", {"s1": entry.fence + 1})  # right owner, another fence
    await reg.release(NS, "a", {"s1": entry.fence - 1})  # right owner, a stale fence
    await reg.release(NS, "a", {"unknown": 1})
    assert await reg.get(NS, "s1") == entry
    assert reg.releases(NS) == 0
    assert await reg.orphans(NS) == []
    await reg.release(NS, "a", {"s1": entry.fence})
    released = await reg.get(NS, "s1")
    assert released == Entry("s1", "{}", 100.0, None, 1, -math.inf)
    assert reg.releases(NS) == 1 and reg.releases("other") == 0
    assert await reg.orphans(NS) == ["s1"]


async def test_release_counts_each_lease_let_go(reg: MemoryRegistry) -> None:
    for sid in ("s1", "s2", "s3"):
        await reg.register(NS, sid, "{}", owner="a", lease=15, retention=DAY)
    await reg.release(NS, "a", {"s1": 1, "s2": 1, "s3": 7})
    assert reg.releases(NS) == 2
    assert sorted(await reg.orphans(NS)) == ["s1", "s2"]


async def test_a_release_wakes_only_the_namespace_waiters(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await reg.register("other", "s1", "{}", owner="a", lease=15, retention=DAY)
    woke: list[str] = []

    async def waiter(ns: str) -> None:
        await reg.wait(ns, RELEASED, within=60)
        woke.append(ns)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter, NS)
        group.start_soon(waiter, "other")
        await anyio.wait_all_tasks_blocked()
        await reg.release(NS, "b", {"s1": 1})  # refused: wakes nobody
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        await reg.release(NS, "a", {"s1": 1})
        await anyio.wait_all_tasks_blocked()
        assert woke == [NS]
        await clock.run_for(60)
    assert woke == [NS, "other"]


async def test_claim_at_the_exact_end_of_a_lease(reg: MemoryRegistry, clock: FakeClock) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await clock.run_for(14.5)
    assert await reg.claim(NS, "s1", "b", lease=15) is None
    assert await reg.orphans(NS) == []
    await clock.run_for(0.5)  # lease_until == now: lapsed
    assert await reg.orphans(NS) == ["s1"]
    won = await reg.claim(NS, "s1", "b", lease=10)
    assert won == Entry("s1", "{}", 100.0, "b", 2, 125.0)
    assert await reg.get(NS, "s1") == won


async def test_an_owner_may_claim_its_own_live_lease_again(reg: MemoryRegistry) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    again = await reg.claim(NS, "s1", "a", lease=30)
    assert again is not None and (again.owner, again.fence, again.lease_until) == ("a", 2, 130)


async def test_claim_of_unknown_or_decided_is_none(reg: MemoryRegistry) -> None:
    assert await reg.claim(NS, "nope", "b", lease=15) is None
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await reg.release(NS, "a", {"s1": 1})
    await reg.decide(NS, "s1", "lost", LOST, fence=None, retention=DAY)
    assert await reg.claim(NS, "s1", "b", lease=15) is None
    assert await reg.claim(NS, "s1", "a", lease=15) is None


async def test_renew_at_the_exact_end_and_of_what_is_not_there(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await reg.register(NS, "s2", "{}", owner="a", lease=15, retention=DAY)
    await clock.run_for(14)
    assert await reg.renew(NS, "a", {"s1": 1, "gone": 1}, lease=20) == ["gone"]
    assert await reg.get(NS, "s1") == Entry("s1", "{}", 100.0, "a", 1, 134.0)  # only the lease
    await clock.run_for(1)  # s2: lease_until == now
    assert await reg.renew(NS, "a", {"s2": 1}, lease=20) == ["s2"]
    assert (await reg.get(NS, "s2")).lease_until == 115  # type: ignore[union-attr]


async def test_renew_names_a_wrong_owner_a_wrong_fence_and_a_decided_one(
    reg: MemoryRegistry,
) -> None:
    for sid in ("s1", "s2", "s3", "s4"):
        await reg.register(NS, sid, "{}", owner="a", lease=15, retention=DAY)
    await reg.decide(NS, "s3", "ok", ANSWER, fence=1, retention=DAY)
    assert await reg.renew(NS, "b", {"s1": 1}, lease=15) == ["s1"]
    assert await reg.renew(NS, "a", {"s1": 2, "s2": 0, "s3": 1, "s4": 1}, lease=50) == [
        "s1", "s2", "s3"]
    assert (await reg.get(NS, "s1")).lease_until == 115  # type: ignore[union-attr]
    assert (await reg.get(NS, "s4")).lease_until == 150  # type: ignore[union-attr]


async def test_decide_writes_the_outcome_and_ends_the_lease(reg: MemoryRegistry) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    decided = await reg.decide(NS, "s1", "ok", EXPIRED, fence=1, retention=DAY)
    assert decided == Entry("s1", "{}", 100.0, None, 1, -math.inf, "ok", EXPIRED)
    assert decided.decided and reg._open == {}
    assert await reg.orphans(NS) == []  # decided: no orphan, though its lease is over
    same = await reg.decide(NS, "s1", "other", EXPIRED, fence=None, retention=DAY)
    assert same == decided
    better = await reg.decide(NS, "s1", "answer", ANSWER, fence=None, retention=DAY)
    assert better is not None and (better.outcome, better.rank) == ("answer", ANSWER)


async def test_a_stale_fenced_decision_changes_nothing(reg: MemoryRegistry) -> None:
    entry = await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    assert await reg.decide(NS, "s1", "x", ANSWER, fence=2, retention=DAY) == entry
    assert await reg.decide(NS, "s1", "x", ANSWER, fence=0, retention=DAY) == entry
    assert await reg.get(NS, "s1") == entry


async def test_orphans_oldest_first_limited_and_per_namespace(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    for sid in ("c", "a", "d", "b"):  # created in this order, a second apart
        await reg.register(NS, sid, "{}", owner="x", lease=15, retention=DAY)
        await clock.run_for(1)
    await reg.register("other", "z", "{}", owner="x", lease=1, retention=DAY)
    await reg.release(NS, "x", {"b": 1, "a": 1})  # lapsed at once, in another order
    assert await reg.orphans(NS) == ["a", "b"]
    await clock.run_for(11)  # c's lease (until 115) is over, d's (until 117) not yet
    assert await reg.orphans(NS) == ["c", "a", "b"]
    assert await reg.orphans(NS, limit=2) == ["c", "a"]
    await clock.run_for(2)
    assert await reg.orphans(NS) == ["c", "a", "d", "b"]
    assert await reg.orphans("other") == ["z"]
    assert await reg.orphans("empty") == []


def _to_forget(reg: MemoryRegistry) -> int:
    """How many items the registry's queues of forget times still hold."""
    return sum(len(queue[0]) for queue in reg._forget.values())


async def test_an_undecided_entry_is_forgotten_at_its_retention_exactly(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=50)
    await clock.run_for(49.5)
    assert await reg.get(NS, "s1") is not None
    await clock.run_for(0.5)
    assert await reg.get(NS, "s1") is None
    assert reg._open == {} and _to_forget(reg) == 0 and reg._entries == {}


async def test_a_decision_keeps_the_entry_its_retention_from_then(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=50)
    await clock.run_for(40)
    await reg.decide(NS, "s1", "ok", ANSWER, fence=1, retention=30)
    await clock.run_for(29)  # past the registration's 50 s: still kept
    assert await reg.get(NS, "s1") is not None
    await clock.run_for(1)
    assert await reg.get(NS, "s1") is None
    assert _to_forget(reg) == 0 and reg._entries == {} and len(reg) == 0


async def test_every_step_forgets_what_is_due_first(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "old", "{}", owner="a", lease=15, retention=10)
    await reg.register(NS, "keep", "{}", owner="a", lease=15, retention=DAY)
    await clock.run_for(10)
    await reg.orphans(NS)
    assert len(reg) == 1
    fresh = await reg.register(NS, "old", "new", owner="b", lease=15, retention=10)
    assert (fresh.data, fresh.owner, fresh.fence) == ("new", "b", 1)  # a new entry
    await clock.run_for(10)
    assert await reg.claim(NS, "old", "c", lease=15) is None
    await reg.register(NS, "gone", "{}", owner="a", lease=15, retention=5)
    await clock.run_for(5)
    assert await reg.renew(NS, "a", {"gone": 1}, lease=15) == ["gone"]
    await reg.register(NS, "gone2", "{}", owner="a", lease=15, retention=5)
    await clock.run_for(5)
    await reg.release(NS, "a", {"gone2": 1})
    assert reg.releases(NS) == 0
    await reg.register(NS, "gone3", "{}", owner="a", lease=15, retention=5)
    await clock.run_for(5)
    assert await reg.decide(NS, "gone3", "x", ANSWER, fence=None, retention=5) is None
    assert len(reg) == 1


async def test_a_waiter_wakes_when_its_entry_is_forgotten(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=20)
    woke: list[float] = []

    async def waiter() -> None:
        await reg.wait(NS, "s1", within=60)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await clock.run_for(20)
        await reg.get(NS, "other")  # any step forgets what is due, and wakes its waiters
        await anyio.wait_all_tasks_blocked()
        assert woke == [120]


async def test_a_claim_and_a_release_wake_the_entrys_waiters_a_renew_does_not(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    woke: list[float] = []

    async def waiter() -> None:
        await reg.wait(NS, "s1", within=1000)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await reg.renew(NS, "a", {"s1": 1}, lease=15)
        await anyio.wait_all_tasks_blocked()
        assert woke == []
        await clock.run_for(1)
        await reg.claim(NS, "s1", "a", lease=15)
        await anyio.wait_all_tasks_blocked()
        assert woke == [101]
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await clock.run_for(1)
        await reg.release(NS, "a", {"s1": 2})
        await anyio.wait_all_tasks_blocked()
        assert woke == [101, 102]
    assert reg._changed == {}


async def test_a_wait_without_bound_lasts_a_day_at_most(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    woke: list[float] = []

    async def waiter() -> None:
        await reg.wait(NS, "s1", within=math.inf)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await clock.run_for(DAY - 1)
        assert woke == []
        await clock.run_for(1)
    assert woke == [100 + DAY]
    assert reg._changed == {}


async def test_waiters_share_one_event_the_last_to_leave_drops_it(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    woke: list[str] = []

    async def waiter(name: str, within: float) -> None:
        await reg.wait(NS, "s1", within=within)
        woke.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter, "short", 5)
        group.start_soon(waiter, "long", 50)
        await anyio.wait_all_tasks_blocked()
        await clock.run_for(5)
        assert woke == ["short"]
        assert (NS, "s1") in reg._changed  # "long" still waits on it
        await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
        await anyio.wait_all_tasks_blocked()
        assert woke == ["short", "long"]
    assert reg._changed == {}
    with anyio.CancelScope() as scope:
        scope.cancel()
        await reg.wait(NS, "s2", within=5)
    assert reg._changed == {}  # a cancelled waiter leaves nothing behind


async def test_a_decided_entry_decided_again_or_forgotten_beside_open_ones(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=DAY)
    await reg.register(NS, "s2", "{}", owner="a", lease=15, retention=DAY)
    await reg.decide(NS, "s1", "lost", LOST, fence=1, retention=10)
    upgraded = await reg.decide(NS, "s1", "ok", ANSWER, fence=None, retention=10)
    assert upgraded is not None and upgraded.outcome == "ok"
    assert reg._open == {NS: {"s2": None}}
    await clock.run_for(10)
    assert await reg.get(NS, "s1") is None  # forgotten while s2 stays open
    assert reg._open == {NS: {"s2": None}}


async def test_a_stale_reminder_does_not_hold_back_the_ones_behind_it(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=10)
    await reg.register(NS, "s2", "{}", owner="a", lease=15, retention=20)
    await reg.decide(NS, "s1", "ok", ANSWER, fence=1, retention=100)  # s1 kept longer now
    await clock.run_for(25)
    assert await reg.get(NS, "s2") is None  # due at 20, behind s1's stale reminder at 10
    assert await reg.get(NS, "s1") is not None
    assert len(reg) == 1


async def test_orphans_are_a_hundred_at_most_by_default(reg: MemoryRegistry) -> None:
    for i in range(101):
        await reg.register(NS, f"s{i:03}", "{}", owner="a", lease=0, retention=DAY)
    found = await reg.orphans(NS)
    assert len(found) == 100 and found[0] == "s000" and "s100" not in found


class _Records:
    """Records a manager in this process hands in (its session's handle, in the library)."""

    def __init__(self, record: dict[str, int]) -> None:
        self.record = record

    def _as_registered(self) -> str:
        return json.dumps(self.record)


async def test_data_kept_as_records_is_handed_out_as_text_made_when_read(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    """A manager in this process hands in its records encoded on demand: every step hands the
    entry out with its data as text, encoded from the record as it is at that moment."""
    record = {"n": 1}
    first = await reg.register(NS, "s1", _Records(record), owner="a", lease=15, retention=DAY)
    assert first == Entry("s1", '{"n": 1}', 100.0, "a", 1, 115.0)
    record["n"] = 2
    assert await reg.get(NS, "s1") == Entry("s1", '{"n": 2}', 100.0, "a", 1, 115.0)
    again = await reg.register(NS, "s1", "other", owner="b", lease=99, retention=DAY)
    assert again == Entry("s1", '{"n": 2}', 100.0, "a", 1, 115.0)  # the one already there
    await clock.run_for(5)
    assert await reg.renew(NS, "a", {"s1": 1}, lease=15) == []
    record["n"] = 3  # renewed, it still encodes the record when read
    assert await reg.get(NS, "s1") == Entry("s1", '{"n": 3}', 100.0, "a", 1, 120.0)
    claimed = await reg.claim(NS, "s1", "a", lease=15)
    assert claimed == Entry("s1", '{"n": 3}', 100.0, "a", 2, 120.0)
    decided = await reg.decide(NS, "s1", "ok", ANSWER, fence=2, retention=DAY)
    assert decided == Entry("s1", '{"n": 3}', 100.0, None, 2, -math.inf, "ok", ANSWER)


async def test_a_renew_in_a_namespace_with_nothing_kept_loses_every_lease(
    reg: MemoryRegistry, clock: FakeClock
) -> None:
    """Every entry of a namespace forgotten (at its retention) while its owner still renews:
    the renew, on the owner's shared lease and entry by entry, finds none of them."""
    await reg.register(NS, "s1", "{}", owner="a", lease=15, retention=20)
    assert await reg.renew_owned(NS, "a", {"s1": 1}, lease=15) == []  # a shared lease
    await clock.run_for(10)
    assert await reg.renew_owned(NS, "a", {"s1": 1}, lease=15) == []  # until 25
    await clock.run_for(2)
    await reg.register(NS, "s2", "{}", owner="a", lease=15, retention=8)  # noted for a
    await clock.run_for(9)  # both forgotten at 20; the shared lease good until 25
    assert await reg.orphans(NS) == [] and reg._entries == {}  # (a step forgets)
    assert sorted(await reg.renew_owned(NS, "a", {"s1": 1, "s2": 1}, lease=15)) == ["s1", "s2"]
