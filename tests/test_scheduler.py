"""The scheduler on its own (issue 26), with stand-in reads (a slot at once, or after a budget
that opens when the test says) and plain steps: who reads next, on which place of a room of
reads under way shared by managers, and what a closing manager no longer does. The managers on
a real shared ``aiohttp.ClientSession`` against the simulator: tests/test_shared_room.py."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Callable

import aiohttp
import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from instantly_oauth_async._limits.clock import SystemClock
from instantly_oauth_async._limits.limiter import Grant
from instantly_oauth_async._manager import scheduler as scheduler_module
from instantly_oauth_async._manager.pending import PendingConnection
from instantly_oauth_async._manager.scheduler import Scheduler, Step, _pool, _Room, _room
from instantly_oauth_async._stores.store import StoreError
from instantly_oauth_async._wire.exceptions import session_key
from instantly_oauth_async.testing import FakeClock
from tests._sessions import session_named

pytestmark = pytest.mark.anyio


class _Reads:
    """Stand-in reads for two schedulers on one small room: ``at_once`` grants every slot
    at once (an in-process store with room in its budget); else every slot waits on
    ``budget`` (a workspace at its status budget)."""

    def __init__(self, at_once: bool) -> None:
        self.at_once = at_once
        self.budget = anyio.Event()
        self.asked = anyio.Event()  # a slot was asked for (and waits, unless at_once)
        self._client = types.SimpleNamespace(_session=None, _owns_session=True)
        self.granted: list[Grant] = []  # each grant a lease of its own, as a store's are
        self.released: list[Grant] = []

    def _grant(self) -> Grant:
        self.granted.append(Grant(0.0, f"lease-{len(self.granted)}", False))
        return self.granted[-1]

    async def slot_now(self) -> Grant | None:
        return self._grant() if self.at_once else None

    async def slot(self) -> Grant:
        self.asked.set()
        await self.budget.wait()
        return self._grant()

    async def release(self, grant: Grant) -> None:
        self.released.append(grant)


def _pending(name: str) -> PendingConnection:
    return PendingConnection(session_named(name), None)


async def _run_until(runs: list[tuple[Scheduler, Step]], done: Callable[[], bool],
                     seconds: float) -> None:
    """Run each scheduler with its step until ``done()`` (checked at every turn of the loop),
    failing after ``seconds``; then cancel them all (the managers close)."""
    async with anyio.create_task_group() as group:
        for scheduler, step in runs:
            group.start_soon(scheduler.run, group, step)
        with anyio.fail_after(seconds):
            while not done():
                await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()


def _count_handed(scheduler: Scheduler) -> list[str]:
    """The sessions ``scheduler`` hands out to workers (not those a worker goes on with)."""
    handed: list[str] = []
    dispatch = scheduler._dispatch

    def counted(group: anyio.abc.TaskGroup, step: Step, pending: PendingConnection,
                grant: Grant) -> None:
        handed.append(pending.session.session_id)
        dispatch(group, step, pending, grant)

    scheduler._dispatch = counted  # type: ignore[method-assign]
    return handed


def _again(scheduler: Scheduler, reads: list[int]) -> Step:
    """A step that counts its read in ``reads[0]`` and has its session due again at once."""

    async def step(pending: PendingConnection, grant: Grant) -> None:
        reads[0] += 1
        await anyio.lowlevel.checkpoint()
        scheduler.schedule(pending, 0.0)

    return step


async def test_a_woken_scheduler_waiting_on_its_budget_passes_the_room_on() -> None:
    """A scheduler woken for room whose own budget then makes it wait wakes the next one
    waiting: the other workspace reads meanwhile, on the places left (three: the fourth is
    kept for the one waiting on its budget), else it waits until a read ends, and here none is
    left under way."""
    room = _Room(4)
    fast, slow = _Reads(at_once=True), _Reads(at_once=False)
    one, two = Scheduler(fast, SystemClock()), Scheduler(slow, SystemClock())  # type: ignore[arg-type]
    one._room = two._room = room
    stepped: list[str] = []
    batch = [anyio.Event() for _ in range(3)]

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)
        await batch[min(2, (len(stepped) - 1) // 4)].wait()

    for i in range(12):
        one.schedule(_pending(f"one-{i}"), 0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(one.run, group, step)
        with anyio.fail_after(5):
            while len(stepped) < 4 or len(room.waiting) < 1:
                await anyio.lowlevel.checkpoint()
            two.schedule(_pending("two-0"), 0.0)
            group.start_soon(two.run, group, step)
            while len(room.waiting) < 2:
                await anyio.lowlevel.checkpoint()
            batch[0].set()  # the first four end: "one" is woken, takes four more
            while len(stepped) < 8 or len(room.waiting) < 2:
                await anyio.lowlevel.checkpoint()
            batch[1].set()  # they end: "two" is woken, and waits on its budget
            while len(stepped) < 11:
                await anyio.lowlevel.checkpoint()
        assert "two-0" not in stepped and not slow.budget.is_set() and room.steps == room.cap
        group.cancel_scope.cancel()


async def test_a_scheduler_waiting_on_its_budget_keeps_its_place_in_the_room() -> None:
    """A manager waits for a slot of its budget while another fills the room: the first
    one's place is kept meanwhile, so once its slot comes the room is at its cap, not over it
    (before, each manager whose slot had waited made the room one read over its cap, into the
    tenth of the pool left for other requests)."""
    room = _Room(2)
    slow, fast = _Reads(at_once=False), _Reads(at_once=True)
    one, two = Scheduler(slow, SystemClock()), Scheduler(fast, SystemClock())  # type: ignore[arg-type]
    one._room = two._room = room
    stepped: list[str] = []
    most = [0]
    forever = anyio.Event()

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)
        most[0] = max(most[0], room.steps)
        await forever.wait()

    one.schedule(_pending("one-0"), 0.0)
    for i in range(3):
        two.schedule(_pending(f"two-{i}"), 0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(one.run, group, step)
        with anyio.fail_after(5):
            await slow.asked.wait()
            group.start_soon(two.run, group, step)
            while not stepped or not room.waiting:  # "two" read, and waits for room
                await anyio.lowlevel.checkpoint()
            slow.budget.set()
            while "one-0" not in stepped:
                await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert most[0] <= room.cap == 2 and stepped == ["two-0", "one-0"]


@pytest.mark.parametrize("clock", [SystemClock(), FakeClock(100.0)], ids=["system", "still"])
async def test_a_worker_whose_step_ends_goes_on_with_the_next_session_due(
    clock: SystemClock | FakeClock,
) -> None:
    """One manager, a room of four, twelve sessions due: four steps are handed out, and each
    worker goes on with the next due as its step ends (the read's objects freed and the next
    one's made side by side, not in bursts: issue 26's garbage collection). Due at this very
    instant (a clock standing still) is due."""
    room = _Room(4)
    reads = _Reads(at_once=True)
    scheduler = Scheduler(reads, clock)  # type: ignore[arg-type]
    scheduler._room = room
    stepped: list[str] = []
    handed = _count_handed(scheduler)

    async def step(pending: PendingConnection, grant: Grant) -> None:
        # In a step (cancel() leaves its ending to the step: a one-time answer is kept), no
        # longer queued (so it can be scheduled again), however it was handed out.
        assert pending._in_step and not pending._due
        assert grant is reads.granted[len(stepped)]  # its own slot, however it was handed out
        stepped.append(pending.session.session_id)
        await anyio.lowlevel.checkpoint()

    for i in range(12):
        scheduler.schedule(_pending(f"s-{i}"), clock.monotonic())  # due now
    await _run_until([(scheduler, step)], lambda: len(stepped) >= 12, 5)
    assert sorted(stepped) == sorted(f"s-{i}" for i in range(12))  # each once
    assert len(handed) == 4 and room.steps == 0


@pytest.mark.parametrize("places", [2, 4])
async def test_a_manager_over_its_share_gives_the_room_back_as_its_steps_end(places: int) -> None:
    """Two managers on a room of two or four places: the first takes them all, its sessions
    always due again; as its steps end it holds more than its share (one, or two), so it does
    not go on with its own: the second manager, waiting for room, reads at once, long before
    the first one's turn would have ended (else it would wait a turn, or for ever)."""
    room = _Room(places)
    one = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    two = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    one._room = two._room = room
    stepped: list[str] = []
    started = anyio.Event()

    async def step_one(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)
        await started.wait()
        await anyio.lowlevel.checkpoint()
        one.schedule(pending, 0.0)  # due again at once

    async def step_two(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)

    for i in range(8):
        one.schedule(_pending(f"one-{i}"), 0.0)
    two.schedule(_pending("two-0"), 0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(one.run, group, step_one)
        with anyio.fail_after(5):
            while room.steps < places or not room.waiting:
                await anyio.lowlevel.checkpoint()
            group.start_soon(two.run, group, step_two)
            while room.members < 2:
                await anyio.lowlevel.checkpoint()
            started.set()
            while "two-0" not in stepped:
                await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert room.members == 0
    # the reads of the first manager before: 5 and 10 (those under way, and those of its
    # workers within its share); a turn's end would be past 64
    assert stepped.index("two-0") < 16


async def test_turns_on_a_place_are_turn_reads_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two managers on a room of one place, their sessions always due again: once both wait,
    the place goes from one to the other after each turn of exactly ``_TURN`` reads."""
    monkeypatch.setattr(scheduler_module, "_TURN", 4)
    room = _Room(1)
    stepped: list[str] = []
    runs: list[tuple[Scheduler, Step]] = []
    for name in ("a", "b"):
        scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
        scheduler._room = room

        async def step(pending: PendingConnection, grant: Grant,
                       scheduler: Scheduler = scheduler) -> None:
            stepped.append(pending.session.session_id[0])
            await anyio.lowlevel.checkpoint()
            scheduler.schedule(pending, 0.0)  # due again at once

        for i in range(2):
            scheduler.schedule(_pending(f"{name}-{i}"), 0.0)
        runs.append((scheduler, step))
    await _run_until(runs, lambda: len(stepped) >= 60, 5)
    turns = "".join(stepped).replace("ab", "a b").replace("ba", "b a").split()
    # (the first is longer: "b" was not waiting yet; the last is cut)
    assert len(turns) > 6 and all(len(turn) == 4 for turn in turns[1:-1]), turns


async def test_a_worker_out_of_steps_waits_for_the_next_one_and_is_woken_for_it() -> None:
    """Steps handed out one after another (no worker goes on) go to the workers that wait
    idle, not to a new task each: 200 reads on a room of two places take two workers."""
    scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = _Room(2, follows=False)
    workers, reads = [0], [0]
    worker = scheduler._worker

    async def counted(step: Step) -> None:
        workers[0] += 1
        await worker(step)

    scheduler._worker = counted  # type: ignore[method-assign]
    for i in range(3):
        scheduler.schedule(_pending(f"s-{i}"), 0.0)
    await _run_until([(scheduler, _again(scheduler, reads))], lambda: reads[0] >= 200, 5)
    assert workers == [2]


async def test_a_manager_alone_in_its_room_keeps_its_places_past_a_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One manager on a room of two places, more sessions due than places: its scheduler
    waits in the room's queue, and its own wait is nobody else's: its workers go on past a
    turn (``_TURN``), no place is ever handed over (two handed out, for 200 reads)."""
    monkeypatch.setattr(scheduler_module, "_TURN", 4)
    scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = _Room(2)
    handed, reads = _count_handed(scheduler), [0]
    for i in range(4):
        scheduler.schedule(_pending(f"s-{i}"), 0.0)
    await _run_until([(scheduler, _again(scheduler, reads))], lambda: reads[0] >= 200, 5)
    assert len(handed) == 2


async def test_a_scheduler_whose_slot_waited_leaves_a_free_place_to_the_one_woken() -> None:
    """A manager woken for a place in the room waits there on its budget (so it wakes the
    next in the queue, and gives up its right to the room's free places); as its slot comes, a
    place comes free and the room wakes the other manager, queued: that one takes the place,
    and the first queues behind it (else it took the place from under the one woken)."""
    room = _Room(2, follows=False)  # (no worker goes on: every free place goes to the queue)
    slow, fast = _Reads(at_once=False), _Reads(at_once=True)
    one, two = Scheduler(slow, SystemClock()), Scheduler(fast, SystemClock())  # type: ignore[arg-type]
    one._room = two._room = room
    stepped: list[str] = []
    gates = {name: anyio.Event() for name in ("b0", "b1", "b2")}

    async def step(pending: PendingConnection, grant: Grant) -> None:
        name = pending.session.session_id
        stepped.append(name)
        if name in gates:
            await gates[name].wait()
        if name == "b1":
            slow.budget.set()  # "one"'s slot comes as this place comes free

    for name in ("b0", "b1"):
        two.schedule(_pending(name), 0.0)
    for name in ("a0", "a1"):
        one.schedule(_pending(name), 0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(two.run, group, step)
        with anyio.fail_after(5):
            while len(stepped) < 2:  # b0 and b1 fill the room
                await anyio.lowlevel.checkpoint()
            group.start_soon(one.run, group, step)
            while len(room.waiting) < 1:  # "one" queued for a0
                await anyio.lowlevel.checkpoint()
            two.schedule(_pending("b2"), 0.0)
            while len(room.waiting) < 2:  # "two" queued behind it for b2
                await anyio.lowlevel.checkpoint()
            gates["b0"].set()  # "one" is woken, takes a0's place, waits on its budget
            await slow.asked.wait()
            gates["b1"].set()  # its slot comes, and "two" is woken for b1's place
            while "a1" not in stepped or "b2" not in stepped:
                await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert stepped.index("b2") < stepped.index("a1"), stepped


async def test_managers_beyond_the_rooms_places_get_theirs_in_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three managers on a room of two places, their sessions always due again: each worker
    goes on with its own manager's reads (most reads are not handed out by a scheduler), and
    hands its place to the manager waiting after a turn of ``_TURN`` reads: all three read,
    each about a third of the reads."""
    monkeypatch.setattr(scheduler_module, "_TURN", 4)
    room = _Room(2)
    schedulers = [Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
                  for _ in range(3)]
    counts: list[list[int]] = []
    handed: list[list[str]] = []
    runs: list[tuple[Scheduler, Step]] = []
    for index, scheduler in enumerate(schedulers):
        scheduler._room = room
        handed.append(_count_handed(scheduler))
        counts.append([0])
        scheduler.schedule(_pending(f"{index}-a"), 0.0)
        scheduler.schedule(_pending(f"{index}-b"), 0.0)
        runs.append((scheduler, _again(scheduler, counts[-1])))
    await _run_until(runs, lambda: sum(count[0] for count in counts) >= 600, 5)
    reads = [count[0] for count in counts]
    assert all(150 < n < 250 for n in reads), reads
    assert sum(map(len, handed)) < sum(reads) / 3  # a hand-over a turn, not a read


async def test_a_scheduler_behind_only_a_closed_managers_wait_takes_the_free_place() -> None:
    """The room's queue holds only the wait of a manager that closed while it waited (its
    future cancelled): a scheduler with a session due and the room empty queues behind it, and
    is woken at once, not left waiting for a read to end (none is under way)."""
    room = _Room(2)
    gone = asyncio.get_running_loop().create_future()
    gone.cancel()
    room.waiting.append(gone)
    scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = room
    stepped = anyio.Event()

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.set()

    scheduler.schedule(_pending("s"), 0.0)
    await _run_until([(scheduler, step)], stepped.is_set, 2)


async def test_a_step_that_outlives_its_closed_scheduler_starts_no_other_read() -> None:
    """The manager closes while a step is under way (its answer is stored before it ends,
    shielded): when it ends, its worker goes on to no other read, though another session is
    due, and gives its place back."""
    room = _Room(4)
    scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = room
    stepped: list[str] = []
    answer = anyio.Event()

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)
        with anyio.CancelScope(shield=True):
            await answer.wait()

    scheduler.schedule(_pending("first"), 0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.run, group, step)
        with anyio.fail_after(2):
            while not stepped:
                await anyio.lowlevel.checkpoint()
            scheduler.schedule(_pending("second"), 0.0)  # due, its place taken by "first"
            room.steps = room.cap  # (so the scheduler leaves it to the worker)
            group.cancel_scope.cancel()  # the manager closes
            with anyio.CancelScope(shield=True):
                while not scheduler.closing:
                    await anyio.lowlevel.checkpoint()
            answer.set()
    assert stepped == ["first"] and room.members == 0


async def test_a_closing_managers_scheduler_takes_no_slot() -> None:
    """The manager closes (no read starts from then on, each step handed out releases its
    slot unused) with sessions due: its scheduler takes no more slots, each of which would
    have spent the workspace's budget for a window on nothing (a deploy's SIGTERM, while the
    new processes need that budget)."""
    reads = _Reads(at_once=True)
    asked = [0]
    slot_now = reads.slot_now

    async def counted() -> Grant | None:
        asked[0] += 1
        return await slot_now()

    reads.slot_now = counted  # type: ignore[method-assign]
    scheduler = Scheduler(reads, SystemClock())  # type: ignore[arg-type]
    scheduler._room = _Room(4)
    stepped: list[str] = []

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)

    for i in range(3):
        scheduler.schedule(_pending(f"s-{i}"), 0.0)
    scheduler.closing = True
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.run, group, step)
        with anyio.fail_after(2):
            await anyio.wait_all_tasks_blocked()
        assert asked == [0] and stepped == [] and scheduler._room.steps == 0
        group.cancel_scope.cancel()


class _Refusing(_Reads):
    """Reads on a store that refuses every slot (``StoreError``: an ACL, a wrong password)."""

    async def slot_now(self) -> Grant | None:
        raise StoreError("NOPERM this user has no permissions", code="NOPERM")


async def test_a_store_refusing_a_slot_ends_each_session_with_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store that refuses slots (waiting won't cure it) ends each due session with its
    ``StoreError``, says so once a session, reads nothing, and leaves the room as it was."""
    scheduler = Scheduler(_Refusing(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = room = _Room(2)
    first, second = _pending("first"), _pending("second")
    stepped: list[str] = []

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)

    scheduler.schedule(first, 0.0)
    scheduler.schedule(second, 0.0)
    with caplog.at_level(logging.WARNING, logger="instantly_oauth_async"):
        await _run_until([(scheduler, step)], lambda: first.done() and second.done(), 2)
    for pending in (first, second):
        with pytest.raises(StoreError):
            await pending
        assert not pending._due  # (so a session resumed again is queued again)
    assert stepped == [] and room.steps == 0
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [f"no slot for session {session_key(name)}: StoreError"
                      for name in ("first", "second")], warned


class _Yielding(_Reads):
    """Reads on a store whose take suspends once (a ``MemoryStore`` subclass may)."""

    async def slot_now(self) -> Grant | None:
        await anyio.lowlevel.checkpoint()
        return self._grant()


async def test_a_worker_whose_slot_took_a_while_reads_no_session_cancelled_meanwhile() -> None:
    """A worker going on with the next due session (y) asks for a slot; the store suspends,
    and y is cancelled meanwhile: the worker reads neither y, ended, nor z, now first, which
    would leave z out of the queue yet marked queued (never read again): it gives the slot
    back, and the scheduler reads z."""
    reads = _Yielding(at_once=True)
    scheduler = Scheduler(reads, SystemClock())  # type: ignore[arg-type]
    scheduler._room = _Room(1)
    x, y, z = _pending("x"), _pending("y"), _pending("z")
    stepped: list[tuple[str, bool]] = []

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append((pending.session.session_id, pending.done()))
        if pending is x:
            scheduler.schedule(y, 0.0)
            scheduler.schedule(z, 0.0)
            asyncio.get_running_loop().call_soon(y.cancel)  # as the worker waits for a slot

    scheduler.schedule(x, 0.0)
    await _run_until([(scheduler, step)], lambda: len(stepped) >= 2, 2)
    assert stepped == [("x", False), ("z", False)]
    assert reads.released == [reads.granted[1]]  # the worker's slot (x's was the first)


@pytest.mark.parametrize(("limit", "per_host", "pool"),
                         [(100, 0, 100), (20, 0, 20), (0, 5, 5), (20, 5, 5), (5, 20, 5), (0, 0, 0),
                          (1, 0, 1)])
async def test_the_pool_is_the_connectors_tighter_limit(limit: int, per_host: int,
                                                        pool: int) -> None:
    """An ``aiohttp.TCPConnector`` opens at most ``limit`` connections, and ``limit_per_host``
    to one host (the API's): the pool the room is cut from is the tighter (0: no limit)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=per_host)
    try:
        assert _pool(connector) == pool
    finally:
        await connector.close()


def test_a_connector_without_limits_has_a_pool_without_limit() -> None:
    """A session without a connector, or a connector of another kind, has either limit or
    neither: what it has counts, what it lacks limits nothing."""
    assert _pool(None) == 0
    assert _pool(types.SimpleNamespace(limit_per_host=7)) == 7
    assert _pool(types.SimpleNamespace(limit=7)) == 7
    assert _pool(types.SimpleNamespace(limit="7", limit_per_host=-1)) == 0


@pytest.mark.parametrize(("pool", "cap", "follows"), [
    (0, 100, True), (1, 1, False), (2, 1, True), (10, 9, True), (15, 14, True), (19, 18, True),
    (20, 18, True), (100, 90, True), (250, 225, True)])
def test_status_reads_take_nine_tenths_of_the_pool_and_leave_at_least_one(
        pool: int, cap: int, follows: bool) -> None:
    """A pool of N connections: N less a tenth (at least one) for status reads, the rest for
    the session's other requests, and a worker goes on with its next read only where one is
    left; a pool of one is all theirs (nothing would be left to read with), and a pool with
    no limit (0) shares 100 reads under way (its other requests open connections of their own)."""
    room = _room(pool)
    assert (room.cap, room.follows) == (cap, follows)


async def test_workers_out_of_steps_wait_idle_up_to_the_bound_and_the_rest_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three steps end and nothing else is due: ``_MAX_IDLE`` of their workers (here one) wait
    for the next step, the others end (a burst of reads leaves no crowd of idle tasks)."""
    monkeypatch.setattr(scheduler_module, "_MAX_IDLE", 1)
    scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = _Room(3, follows=False)
    stepped: list[str] = []

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)
        await anyio.lowlevel.checkpoint()

    for i in range(3):
        scheduler.schedule(_pending(f"s-{i}"), 0.0)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.run, group, step)
        with anyio.fail_after(2):
            while len(stepped) < 3:
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
        assert len(scheduler._idle) == 1 and scheduler._room.steps == 0
        group.cancel_scope.cancel()


async def test_a_session_scheduled_again_while_queued_keeps_its_place_and_is_read_once() -> None:
    """A session already queued and scheduled again (an adoption, a registry notice) stays
    queued once, at its first time: one read, never two at once."""
    scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = _Room(4)
    pending = _pending("s")
    stepped: list[str] = []

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append(pending.session.session_id)
        await anyio.lowlevel.checkpoint()

    scheduler.schedule(pending, 0.0)
    scheduler.schedule(pending, 0.0)
    scheduler.schedule(pending, 10**9)  # (later: its first time stands)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.run, group, step)
        with anyio.fail_after(2):
            while not stepped:
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
        assert stepped == ["s"] and pending._next_at == 0.0
        group.cancel_scope.cancel()


async def test_a_scheduler_reads_on_the_room_of_its_clients_session() -> None:
    """A client that opens its own session reads on a room of its own (nine tenths of its
    pool of ``OWN_POOL``); managers whose clients were given one ``aiohttp.ClientSession``
    share its room, cut from its connector's pool; another session has another room."""
    own = _Reads(at_once=True)
    assert Scheduler(own, SystemClock())._room.cap == 90  # type: ignore[arg-type]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as shared, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=10)) as other:
        rooms = []
        for session in (shared, shared, other):
            reads = _Reads(at_once=True)
            reads._client = types.SimpleNamespace(_session=session, _owns_session=False)
            rooms.append(Scheduler(reads, SystemClock())._room)  # type: ignore[arg-type]
    assert rooms[0] is rooms[1] and rooms[0].cap == 18 and rooms[2].cap == 9
    assert Scheduler(own, SystemClock())._room is not rooms[0]  # type: ignore[arg-type]


@pytest.mark.parametrize("next_due", [True, False], ids=["next-due", "none-due"])
async def test_a_session_cancelled_while_its_slot_was_waited_for_is_not_read(
        next_due: bool) -> None:
    """The scheduler waits on the budget for x's slot; x is cancelled meanwhile: x is not
    read; the slot goes to the next session due (y), or, none due, back to the store."""
    reads = _Reads(at_once=False)
    clock = FakeClock(100.0)  # (y due at this very instant is due)
    scheduler = Scheduler(reads, clock)  # type: ignore[arg-type]
    scheduler._room = room = _Room(4)
    x, y = _pending("x"), _pending("y")
    stepped: list[tuple[str, Grant]] = []

    async def step(pending: PendingConnection, grant: Grant) -> None:
        stepped.append((pending.session.session_id, grant))
        pending._in_step = False

    scheduler.schedule(x, 100.0)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.run, group, step)
        with anyio.fail_after(2):
            await reads.asked.wait()
            x.cancel()
            scheduler.schedule(y, 100.0 if next_due else 101.0)
            reads.budget.set()
            while not (stepped or reads.released):
                await anyio.lowlevel.checkpoint()
            await anyio.wait_all_tasks_blocked()
        if next_due:
            assert stepped == [("y", reads.granted[0])] and reads.released == []
        else:
            assert stepped == [] and reads.released == reads.granted == [reads.granted[0]]
            assert y._due and scheduler._due.first() is y  # still queued for its time
        assert not x._due and room.steps == 0  # (the step ended; no place kept for x)
        group.cancel_scope.cancel()


async def test_a_scheduler_waits_in_turn_behind_one_the_room_has_woken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A place is free, and another manager waits for one (woken for it, not yet run): a
    scheduler that starts, or wakes from its alarm as its session comes due, queues behind
    it instead of taking the place from under it."""
    clock = FakeClock(100.0)
    for due_at in (100.0, 101.0):  # due as it starts; due once the clock moves
        room = _Room(1)
        other = asyncio.get_running_loop().create_future()  # the other manager's wait
        scheduler = Scheduler(_Reads(at_once=True), clock)  # type: ignore[arg-type]
        scheduler._room = room
        stepped: list[str] = []

        async def step(pending: PendingConnection, grant: Grant,
                       stepped: list[str] = stepped) -> None:
            stepped.append(pending.session.session_id)

        scheduler.schedule(_pending("s"), due_at)
        async with anyio.create_task_group() as group:
            if due_at > clock.monotonic():
                group.start_soon(scheduler.run, group, step)
                await anyio.wait_all_tasks_blocked()  # asleep until s is due
                room.waiting.append(other)
                clock.advance(due_at - clock.monotonic())
            else:
                room.waiting.append(other)
                group.start_soon(scheduler.run, group, step)
            with anyio.fail_after(2):
                await anyio.wait_all_tasks_blocked()
            assert stepped == [] and other.done() and room.woken is other
            assert len(room.waiting) == 1  # the scheduler, queued behind the other
            room.resumed(other)
            room.wake_one()  # the other ran and took nothing: the scheduler's turn
            with anyio.fail_after(2):
                while not stepped:
                    await anyio.lowlevel.checkpoint()
            group.cancel_scope.cancel()


async def test_a_store_that_never_waits_lets_the_steps_run_every_64_handed_out() -> None:
    """On a store that grants at once and a room with space, the scheduler hands out steps
    without suspending; every 64 it lets them run (else none began until all were out)."""
    scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = _Room(500, follows=False)
    handed, seen = _count_handed(scheduler), []

    async def step(pending: PendingConnection, grant: Grant) -> None:
        seen.append(len(handed))

    for i in range(200):
        scheduler.schedule(_pending(f"s-{i}"), 0.0)
    await _run_until([(scheduler, step)], lambda: len(seen) >= 200, 5)
    assert seen[0] == 64 and seen[64] == 128
