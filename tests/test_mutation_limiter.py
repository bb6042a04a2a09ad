"""The limiter at its edges (issue 27): the pure slot log at exact boundaries, a release after
the hold ran out, refused takes that spend nothing, and FairLimiter's paths that
tests/test_limiter.py leaves open: take_now, the breaker gate, leaving the store's line, and the
shields around store calls that a cancellation must not cut short.

``LineStore`` is a MemoryStore that records what the limiter asks of it and, like a store on the
network, takes a turn of the event loop inside each call (so an unshielded call is cut short by a
cancellation, as it would be over the wire); ``pause`` holds its next ``take`` mid-call."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import anyio
import anyio.lowlevel
import pytest

from instantly_oauth_async import BreakerPolicy, CircuitState, MemoryStore, RateLimit
from instantly_oauth_async._limits.breaker import Admission
from instantly_oauth_async._limits.limiter import (
    FairLimiter,
    GateShutError,
    Grant,
    SlotLog,
    TooLongError,
    check,
    release,
    spend,
    take,
)
from instantly_oauth_async.testing import FakeClock

ONE = RateLimit(1, per=10, margin=0)  # window 10
TWO = RateLimit(2, per=10, margin=0)


# -- the pure log ----------------------------------------------------------------------------

def test_a_slot_is_back_at_the_exact_end_of_its_window() -> None:
    logs: dict[str, SlotLog] = {}
    assert take(logs, [("k", ONE)], 0.0) == 0
    assert take(logs, [("k", ONE)], 9.5) == 0.5
    assert take(logs, [("k", ONE)], 10.0) == 0  # freed at 10: free at 10
    assert list(logs["k"].freed) == [20.0]


def test_a_refused_take_spends_nothing_however_short_its_wait() -> None:
    logs: dict[str, SlotLog] = {}
    take(logs, [("k", ONE)], 0.0)
    for now in (9.0, 9.5, 9.99):  # waits of 1 s and less
        assert take(logs, [("k", ONE)], now, "lease", 30) > 0
    assert list(logs["k"].freed) == [10.0] and logs["k"].held == {}


def test_a_held_slot_is_back_when_its_hold_and_window_are_over() -> None:
    logs: dict[str, SlotLog] = {}
    assert take(logs, [("k", ONE)], 0.0, "a", 30) == 0
    assert logs["k"].held == {"a": 40.0}  # granted + hold + window
    assert take(logs, [("k", ONE)], 1.0) == 10  # held: look again one window on
    assert take(logs, [("k", ONE)], 39.5) == 10
    assert logs["k"].held == {"a": 40.0}
    assert take(logs, [("k", ONE)], 40.0) == 0  # at 40 exactly
    assert logs["k"].held == {}


def test_only_the_lapsed_holds_are_pruned() -> None:
    log = SlotLog(held={"old": 5.0, "new": 50.0, "edge": 10.0})
    log.prune(10.0)
    assert log.held == {"new": 50.0}
    log.prune(20.0)
    assert log.held == {"new": 50.0}


def test_wait_is_the_soonest_return_or_a_window_for_a_hold() -> None:
    assert SlotLog().wait(ONE, 0.0) == 0
    assert SlotLog(freed=[13.0]).wait(ONE, 5.0) == 8  # the freed one, 8 s on
    assert SlotLog(freed=[13.0]).wait(TWO, 5.0) == 0  # room for one more
    assert SlotLog(held={"a": 99.0}).wait(ONE, 5.0) == 10  # a window, not the hold's end
    assert SlotLog(freed=[13.0], held={"a": 99.0}).wait(TWO, 5.0) == 8
    assert SlotLog(freed=[30.0], held={"a": 99.0}).wait(TWO, 5.0) == 10


def test_check_is_the_longest_wait_of_all_budgets_and_spends_nothing() -> None:
    logs = {"a": SlotLog(freed=[3.0]), "b": SlotLog(freed=[7.0])}
    assert check(logs, [("a", ONE), ("b", ONE)], 0.0) == 7
    assert check(logs, [("b", ONE), ("a", ONE)], 0.0) == 7
    assert check(logs, [("a", ONE), ("c", ONE)], 0.0) == 3
    assert list(logs["a"].freed) == [3.0] and list(logs["c"].freed) == []
    assert check(logs, [], 0.0) == 0


def test_spend_records_each_budget_by_its_own_window() -> None:
    logs: dict[str, SlotLog] = {}
    long = RateLimit(5, per=60, margin=0)
    spend(logs, [("a", ONE), ("b", long)], 2.0)
    assert (list(logs["a"].freed), list(logs["b"].freed)) == ([12.0], [62.0])
    spend(logs, [("a", ONE), ("b", long)], 3.0, "L", 5.0)
    assert (logs["a"].held, logs["b"].held) == ({"L": 18.0}, {"L": 68.0})
    spend(logs, [("a", ONE)], 50.0)  # spends whatever check would say
    assert list(logs["a"].freed) == [12.0, 60.0]


def test_a_release_brings_the_slot_back_one_window_from_then() -> None:
    logs: dict[str, SlotLog] = {}
    long = RateLimit(5, per=60, margin=0)
    take(logs, [("a", ONE), ("b", long)], 0.0, "L", 30.0)
    release(logs, [("a", ONE), ("b", long)], "L", 4.0)
    assert (logs["a"].held, list(logs["a"].freed)) == ({}, [14.0])
    assert (logs["b"].held, list(logs["b"].freed)) == ({}, [64.0])
    assert take(logs, [("a", ONE)], 13.0) == 1


def test_budgets_of_one_window_log_one_float_for_a_slot() -> None:
    """A slot spent or released in several budgets logs one float per window, shared by the
    budgets of that window (48 B a slot less for the init budgets and the standard minute)."""
    logs: dict[str, SlotLog] = {}
    long = RateLimit(5, per=60, margin=0)
    specs = [("a", ONE), ("b", long), ("c", ONE), ("d", long)]
    spend(logs, specs, 2.5)
    take(logs, specs, 3.5, "L", 30.0)
    release(logs, specs, "L", 4.5)
    for first, second in (("a", "c"), ("b", "d")):
        assert logs[first].freed == logs[second].freed
        assert all(x is y for x, y in zip(logs[first].freed, logs[second].freed, strict=True))
    assert list(logs["a"].freed) == [12.5, 14.5] and list(logs["b"].freed) == [62.5, 64.5]


def test_a_release_after_the_hold_ran_out_counts_the_window_again() -> None:
    logs: dict[str, SlotLog] = {}
    assert take(logs, [("k", TWO)], 0.0, "late", 5.0) == 0  # held until 15
    assert take(logs, [("k", TWO)], 20.0) == 0  # the hold was pruned here
    assert logs["k"].held == {}
    release(logs, [("k", TWO)], "late", 21.0)  # no KeyError: the request ended only now
    assert list(logs["k"].freed) == [30.0, 31.0]  # in order
    assert take(logs, [("k", TWO)], 22.0) == 8
    release(logs, [("new", ONE)], "never-taken", 0.0)  # an unknown budget: counted from now
    assert list(logs["new"].freed) == [10.0]


# -- FairLimiter -----------------------------------------------------------------------------

class LineStore(MemoryStore):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.askers: list[str | None] = []
        self.left: list[str] = []
        self.released: list[str] = []
        self.pause: anyio.Event | None = None

    async def take(self, specs: Sequence[tuple[str, RateLimit]], block_keys: Sequence[str], *,
                   lease: str | None = None, hold: float = 0.0, asker: str | None = None
                   ) -> tuple[float, bool]:
        self.askers.append(asker)
        await anyio.lowlevel.checkpoint()
        if self.pause is not None:
            pause, self.pause = self.pause, None
            await pause.wait()
        return await super().take(specs, block_keys, lease=lease, hold=hold, asker=asker)

    async def leave(self, specs: Sequence[tuple[str, RateLimit]], asker: str) -> None:
        await anyio.lowlevel.checkpoint()
        assert list(specs) == [("k", ONE)], specs  # every test's limiter has this one budget
        self.left.append(asker)

    async def release(self, specs: Sequence[tuple[str, RateLimit]], lease: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.released.append(lease)
        await super().release(specs, lease)


def in_line(limiter: FairLimiter) -> bool:
    return limiter._in_line  # read through a call, so mypy does not narrow across awaits


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> LineStore:
    return LineStore(clock)


@pytest.fixture(params=[False, True], ids=["shielded", "immediate"])
def immediate(request: pytest.FixtureRequest) -> bool:
    """Both ways a manager builds its limiters: shielded store calls (a store on the network),
    and ``immediate=True`` (a MemoryStore, which never suspends inside a step)."""
    return bool(request.param)


pytestmark = pytest.mark.anyio


async def test_repr_waiting_and_the_grants_it_gives(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("a", RateLimit(1, per=1)), ("b", ONE)], [], clock,
                          immediate=immediate)
    assert repr(limiter) == "<FairLimiter [a, b] waiting=0>"
    first = await limiter.acquire()
    assert first == Grant(0.0, None, False)
    assert Grant(1.0) == Grant(1.0, lease=None, probe=False)
    async with anyio.create_task_group() as group:
        group.start_soon(limiter.acquire)
        await anyio.wait_all_tasks_blocked()
        assert limiter.waiting == 1
        assert repr(limiter) == "<FairLimiter [a, b] waiting=1>"
        await clock.run_for(10)
    assert limiter.waiting == 0


async def test_waited_is_the_time_in_the_queue(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock, immediate=immediate)
    await clock.run_for(3)  # not from 0: the time waited, not the time of day
    grants: list[Grant] = []

    async def waiter() -> None:
        grants.append(await limiter.acquire())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        group.start_soon(waiter)
        await clock.run_for(30)
    assert [g.waited for g in grants] == [0.0, 10.0]


async def test_a_held_grant_has_a_prefixed_lease_an_unheld_one_none(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("k", TWO)], [], clock, prefix="ws1:", immediate=immediate)
    held = await limiter.acquire(hold=5)
    assert held.lease is not None and held.lease.startswith("ws1:") and held.lease[4:].isdigit()
    assert await limiter.acquire(hold=0) == Grant(0.0, None, False)
    assert store._logs["k"].held == {held.lease: 15.0}
    assert store.askers[0] is not None and store.askers[0].startswith("ws1:q")
    other = FairLimiter(store, [("k", TWO)], [], clock, prefix="ws1:")
    assert other._asker != limiter._asker  # each limiter its own place in the line


async def test_a_budget_wait_is_slept_whatever_max_block(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire(max_block=1)
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: limiter.acquire(max_block=1))
        await clock.run_for(10)
    assert limiter.waiting == 0


async def test_a_block_of_exactly_max_block_is_waited_out(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("k", TWO)], ["blk"], clock, immediate=immediate)
    await store.block(["blk"], 120)
    grants: list[Grant] = []

    async def waiter() -> None:
        grants.append(await limiter.acquire(max_block=120))

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await clock.run_for(120)
    assert [g.waited for g in grants] == [120]
    assert store.left == []  # a block puts nobody in the store's line


async def test_a_waiter_behind_one_that_raises_gets_its_turn(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", TWO)], ["blk"], clock)
    await store.block(["blk"], 50)
    outcomes: list[object] = []

    async def impatient() -> None:
        try:
            await limiter.acquire(max_block=10)
        except TooLongError as exc:
            outcomes.append(exc.wait)

    async def patient() -> None:
        outcomes.append(await limiter.acquire())

    async with anyio.create_task_group() as group:
        group.start_soon(impatient)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(patient)
        await clock.run_for(50)
    assert outcomes == [50, Grant(50.0, None, False)]
    assert TooLongError(3.0).args == (3.0,)


async def test_the_last_waiter_gone_leaves_the_line_shielded(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire()
    assert not in_line(limiter)  # granted: the store took it out of its line
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:
            group.start_soon(limiter.acquire)
            group.start_soon(limiter.acquire)
            await anyio.wait_all_tasks_blocked()
            assert in_line(limiter)  # refused by a full budget: in line
            scope.cancel()
    assert store.left == [limiter._asker]  # once, when the last one left, despite the cancel
    assert not in_line(limiter) and limiter.waiting == 0


async def test_a_granted_waiter_leaves_no_line_to_leave(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire()
    async with anyio.create_task_group() as group:
        group.start_soon(limiter.acquire)
        await clock.run_for(10)
    assert store.left == [] and not in_line(limiter)


async def test_take_now_grants_or_says_how_long_and_never_queues(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock, prefix="p", immediate=immediate)
    grant, wait, blocked = await limiter.take_now(hold=5)
    assert grant is not None and grant.lease is not None and grant.lease.startswith("p")
    assert (grant.waited, grant.probe, wait, blocked) == (0.0, False, 0.0, False)
    assert await limiter.take_now() == (None, 10.0, False)  # held: look again in a window
    assert store.left == [limiter._asker] and not in_line(limiter)  # it will not ask again
    assert limiter.waiting == 0
    await clock.run_for(3)
    await limiter.release(grant)  # back at 13
    await clock.run_for(5)
    assert await limiter.take_now() == (None, 5.0, False)
    assert store.left == [limiter._asker] * 2
    await clock.run_for(5)
    unheld, wait, _ = await limiter.take_now(hold=0)
    assert unheld == Grant(0.0, None, False) and wait == 0


async def test_take_now_reports_a_block_and_stays_out_of_line(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], ["blk"], clock)
    await store.block(["blk"], 30)
    assert await limiter.take_now() == (None, 30.0, True)
    assert store.left == [] and not in_line(limiter)


async def test_take_now_never_goes_ahead_of_a_queued_waiter(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire()
    async with anyio.create_task_group() as group:
        group.start_soon(limiter.acquire)
        await anyio.wait_all_tasks_blocked()
        asked = len(store.askers)
        assert await limiter.take_now() == (None, float("inf"), False)
        assert len(store.askers) == asked  # did not even ask
        await clock.run_for(10)


async def test_take_now_leaves_the_line_shielded_from_a_cancel(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire()
    with anyio.CancelScope() as scope:
        pause = store.pause = anyio.Event()
        async with anyio.create_task_group() as group:
            result: list[object] = []

            async def now() -> None:
                result.append(await limiter.take_now())

            group.start_soon(now)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()  # while the store is being asked
            pause.set()
    assert result == [(None, 10.0, False)]  # the answer came back despite the cancel
    assert store.left == [limiter._asker]


async def test_a_grant_taken_during_a_cancel_is_handed_back(
    clock: FakeClock, store: LineStore
) -> None:
    """The store spent the slot while the cancel came: the caller still gets the grant, so it
    can release it (a network store cannot take back what it did)."""
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    got: list[Grant] = []

    async def waiter() -> None:
        got.append(await limiter.acquire(hold=5))

    with anyio.CancelScope() as scope:
        pause = store.pause = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            pause.set()
    assert len(got) == 1 and got[0].lease in store._logs["k"].held
    assert limiter.waiting == 0


async def test_release_is_shielded_and_skips_unheld_grants(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    unheld = await limiter.acquire()
    await limiter.release(unheld)
    assert store.released == []
    await clock.run_for(10)
    held = await limiter.acquire(hold=30)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.release(held)  # the request ended: the store must hear it
    assert store.released == [held.lease]
    assert store._logs["k"].held == {}


GATE = ("brk", BreakerPolicy(failure_threshold=1, cooldown=10, probe_timeout=30))


async def test_an_open_gate_raises_with_its_wait_and_frees_the_queue(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("k", TWO)], [], clock, gate=GATE, immediate=immediate)
    first = await limiter.acquire()
    assert first == Grant(0.0, None, False)
    await store.breaker_record(*GATE, success=False, probe=False)
    await clock.run_for(4)
    with pytest.raises(GateShutError) as info:
        await limiter.acquire()
    assert info.value.wait == 6 and info.value.args == (6,)
    assert limiter.waiting == 0
    with pytest.raises(GateShutError):
        await limiter.take_now()
    await clock.run_for(6)
    probe = await limiter.acquire()
    assert probe.probe and await store.breaker_state("brk") is CircuitState.HALF_OPEN
    with pytest.raises(GateShutError) as refused:  # one probe at a time
        await limiter.acquire()
    assert refused.value.wait == 1.0
    with pytest.raises(GateShutError):  # nor now: the probe is out
        await limiter.take_now()
    await store.breaker_record(*GATE, success=True, probe=True)
    await clock.run_for(10)
    now_grant, wait, _ = await limiter.take_now()
    assert now_grant == Grant(0.0, None, False) and wait == 0


async def test_a_gated_limiter_waits_out_a_block_of_its_keys(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    """The gate's ask names the block keys too: a 429's block holds a gated request back."""
    limiter = FairLimiter(store, [("k", TWO)], ["blk"], clock, gate=GATE, immediate=immediate)
    await store.block(["blk"], 3.0)
    assert await limiter.take_now() == (None, 3.0, True)
    assert store._logs.get("k") is None  # nothing spent while blocked
    await clock.run_for(3)
    grant, wait, _ = await limiter.take_now()
    assert grant == Grant(0.0, None, False) and wait == 0


async def test_a_probe_from_take_now_is_marked(clock: FakeClock, store: LineStore) -> None:
    limiter = FairLimiter(store, [("k", TWO)], [], clock, gate=GATE)
    await store.breaker_record(*GATE, success=False, probe=False)
    await clock.run_for(10)
    grant, _, _ = await limiter.take_now()
    assert grant is not None and grant.probe


async def test_gate_and_budgets_in_one_ask(clock: FakeClock, store: LineStore) -> None:
    """A full budget while half-open: the probe goes back, and the grant comes later as one."""
    limiter = FairLimiter(store, [("k", ONE)], [], clock, gate=GATE)
    await limiter.acquire()  # the budget is spent until 10
    await store.breaker_record(*GATE, success=False, probe=False)
    await clock.run_for(10)
    store._logs["k"].freed = collections.deque([15.0])
    granted: list[Grant] = []

    async def waiter() -> None:
        granted.append(await limiter.acquire())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await clock.run_for(5)
    assert granted == [Grant(5.0, None, True)]
    assert Admission(True).probe is False


def test_a_lease_without_a_hold_is_held_one_window() -> None:
    logs: dict[str, SlotLog] = {}
    assert take(logs, [("k", ONE)], 2.0, "L") == 0
    spend(logs, [("j", ONE)], 2.0, "M")
    assert (logs["k"].held, logs["j"].held) == ({"L": 12.0}, {"M": 12.0})


async def test_without_a_prefix_leases_and_askers_are_bare(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("k", TWO)], [], clock, immediate=immediate)
    grant = await limiter.acquire(hold=0.5)  # any hold above 0 holds
    assert grant.lease is not None and grant.lease.isdigit()
    assert store._logs["k"].held == {grant.lease: 10.5}
    assert limiter._asker.startswith("q") and limiter._asker[1:].isdigit()
    now, _, _ = await limiter.take_now(hold=0.25)
    assert now is not None and now.lease is not None and now.lease.isdigit()


async def test_a_short_refusal_is_no_grant_and_puts_the_asker_in_line(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire()
    await clock.run_for(9.5)
    assert await limiter.take_now() == (None, 0.5, False)
    assert store.left == [limiter._asker]  # it was in line (refused), and left
    async with anyio.create_task_group() as group:
        group.start_soon(limiter.acquire)
        await anyio.wait_all_tasks_blocked()
        assert in_line(limiter)  # refused for half a second: in line all the same
        await clock.run_for(0.5)
    assert not in_line(limiter)


async def test_a_held_grant_through_the_gate_is_held_for_this_asker(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("k", TWO)], [], clock, gate=GATE, immediate=immediate)
    grant = await limiter.acquire(hold=5)
    assert grant.lease is not None and store._logs["k"].held == {grant.lease: 15.0}
    assert store.askers == [limiter._asker]


async def test_a_waiter_cancelled_behind_the_head_leaves_the_order_alone(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await limiter.acquire()
        order.append(name)

    middle = anyio.CancelScope()

    async def cancelled() -> None:
        with middle:
            await waiter("middle")

    async with anyio.create_task_group() as group:
        group.start_soon(waiter, "head")
        await anyio.wait_all_tasks_blocked()
        group.start_soon(cancelled)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(waiter, "tail")
        await anyio.wait_all_tasks_blocked()
        asked = len(store.askers)
        middle.cancel()
        await anyio.wait_all_tasks_blocked()
        assert limiter.waiting == 2 and len(store.askers) == asked  # tail did not jump ahead
        assert store.left == []  # head is still in line
        await clock.run_for(10)
        assert order == ["head"]
        await clock.run_for(10)
    assert order == ["head", "tail"]


async def test_the_head_cancelled_with_others_waiting_stays_in_line(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire()
    head = anyio.CancelScope()
    order: list[str] = []

    async def first() -> None:
        with head:
            await limiter.acquire()
            order.append("head")

    async def second() -> None:
        await limiter.acquire()
        order.append("second")

    async with anyio.create_task_group() as group:
        group.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        head.cancel()
        await anyio.wait_all_tasks_blocked()
        assert store.left == [] and in_line(limiter)  # the second still needs its turn
        await clock.run_for(10)
    assert order == ["second"] and store.left == []


async def test_the_last_waiter_cancelled_gives_nobody_a_turn_out_of_order(
    clock: FakeClock, store: LineStore
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock)
    await limiter.acquire()
    order: list[str] = []
    last = anyio.CancelScope()

    async def waiter(name: str) -> None:
        await limiter.acquire()
        order.append(name)

    async def cancelled() -> None:
        with last:
            await waiter("last")

    async with anyio.create_task_group() as group:
        group.start_soon(waiter, "head")
        await anyio.wait_all_tasks_blocked()
        group.start_soon(waiter, "middle")
        group.start_soon(cancelled)
        await anyio.wait_all_tasks_blocked()
        asked = len(store.askers)
        last.cancel()
        await anyio.wait_all_tasks_blocked()
        assert len(store.askers) == asked  # the middle one still waits for the head
        assert limiter.waiting == 2
        await clock.run_for(20)
    assert order == ["head", "middle"]


async def test_an_immediate_limiter_puts_no_shield_around_the_store(
    clock: FakeClock, store: LineStore
) -> None:
    """``immediate=True`` is the promise that the store never suspends inside a step, so the
    limiter shields none of its calls: a store that broke the promise would be cut short by a
    cancellation (its take spends nothing, its release is not heard), where a shielded limiter
    sees both through (test_a_grant_taken_during_a_cancel_is_handed_back,
    test_release_is_shielded_and_skips_unheld_grants)."""
    limiter = FairLimiter(store, [("k", ONE)], [], clock, immediate=True)
    got: list[Grant] = []

    async def waiter() -> None:
        got.append(await limiter.acquire(hold=5))

    with anyio.CancelScope() as scope:
        pause = store.pause = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
            pause.set()
    assert got == [] and store._logs.get("k") is None  # cut short before it spent anything
    assert limiter.waiting == 0
    held = await limiter.acquire(hold=30)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.release(held)
    assert store.released == []  # the release was cut short too
    assert store._logs["k"].held == {held.lease: 40.0}


async def test_a_caller_cancelled_before_it_asks_takes_no_slot(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    """First in line, with nobody waiting (an immediate store is asked before any queueing),
    a caller already cancelled asks nothing and spends nothing."""
    limiter = FairLimiter(store, [("k", ONE)], [], clock, immediate=immediate)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire(hold=5)
    assert scope.cancelled_caught
    assert store.askers == [] and store._logs.get("k") is None and limiter.waiting == 0
    assert await limiter.acquire() == Grant(0.0, None, False)  # the slot is still there


async def test_a_refusal_of_any_length_is_waited_out_by_the_first_in_line(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    """Nobody waiting, the store refuses with a wait under a second: no grant before it."""
    limiter = FairLimiter(store, [("k", RateLimit(1, per=0.5, margin=0))], [], clock,
                          immediate=immediate)
    await limiter.acquire()
    got: list[Grant] = []

    async def second() -> None:
        got.append(await limiter.acquire())

    async with anyio.create_task_group() as group:
        group.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert got == [] and limiter.waiting == 1  # refused for 0.5 s: it waits in line
        await clock.run_for(0.49)
        assert got == []
        await clock.run_for(0.01)
    assert got == [Grant(0.5, None, False)] and len(store.askers) == 3


async def test_only_the_head_of_the_queue_asks_the_store(
    clock: FakeClock, store: LineStore, immediate: bool
) -> None:
    limiter = FairLimiter(store, [("k", ONE)], [], clock, immediate=immediate)
    await limiter.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await limiter.acquire()
        order.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter, "head")
        await anyio.wait_all_tasks_blocked()
        assert len(store.askers) == 2  # the head asked, and sleeps out the wait it was given
        group.start_soon(waiter, "second")
        group.start_soon(waiter, "third")
        await anyio.wait_all_tasks_blocked()
        assert len(store.askers) == 2 and limiter.waiting == 3  # the others wait their turn
        await clock.run_for(10)
        assert order == ["head"] and len(store.askers) == 4  # head granted; second refused
        await clock.run_for(20)
    assert order == ["head", "second", "third"] and len(store.askers) == 7
