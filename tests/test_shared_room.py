"""Managers sharing one ``aiohttp.ClientSession`` share its cap on status reads under way
(issue 26): the server never sees more than 90 of all of theirs at a time (nine tenths of its
pool, the rest left for other requests), and a manager that closes with reads under way gives
their room back to the others."""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Callable
from datetime import datetime, timezone

import aiohttp
import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from instantly_oauth_async import OAuthManager, OAuthSession, Provider, RateLimit
from instantly_oauth_async._limits.clock import SystemClock
from instantly_oauth_async._limits.limiter import Grant
from instantly_oauth_async._manager import scheduler as scheduler_module
from instantly_oauth_async._manager.pending import PendingConnection
from instantly_oauth_async._manager.scheduler import _MAX_STEPS, _ROOMS, Scheduler, Step, _Room
from instantly_oauth_async._stores.store import MemoryStore
from instantly_oauth_async.testing import Simulator

pytestmark = pytest.mark.anyio
BIG = 10**6
OPEN = RateLimit(BIG, per=1)


def _more(sim: Simulator, seen: int) -> bool:
    return len(sim.requests) > seen


def _manager(sim: Simulator, key: str, http: aiohttp.ClientSession) -> OAuthManager:
    return OAuthManager(key, base_url=sim.url, session=http, init_limit=OPEN,
                        ip_init_limit=OPEN, standard_limit=OPEN, status_limit=OPEN,
                        poll_interval=0.05, fetch_account=False, store=MemoryStore())


async def test_managers_on_one_session_have_at_most_90_reads_in_flight_together(
    slow_sim: Simulator,
) -> None:
    """Three workspaces, 60 sessions each due at once, on one session whose pool holds 100
    connections: the server never sees more than 90 of their reads at a time (nine tenths of
    the pool: the rest is for the session's other requests)."""
    keys = [slow_sim.add_workspace(f"ws{i}").api_key for i in range(3)]
    most = 0
    async with aiohttp.ClientSession() as http:
        async with _manager(slow_sim, keys[0], http) as one, \
                _manager(slow_sim, keys[1], http) as two, \
                _manager(slow_sim, keys[2], http) as three:
            managers = (one, two, three)
            async with anyio.create_task_group() as group:
                for manager in managers:
                    for _ in range(60):
                        group.start_soon(manager.start, "google")
            with anyio.fail_after(30):
                while sum(sum(m.stats().requests.get("status", {}).values())
                          for m in managers) < 400:
                    most = max(most, len(slow_sim.in_flight("status")))
                    await slow_sim.wait_for(functools.partial(_more, slow_sim,
                                                              len(slow_sim.requests)))
            room = _ROOMS[http]
            assert room.cap == 90 and _MAX_STEPS == 100
            assert 50 < most <= 90
        assert room.steps == 0 and not room.waiting  # all closed: nothing left counted


@pytest.mark.parametrize(("pool", "cap"), [(20, 18), (1, 1)])
async def test_the_callers_own_requests_on_a_shared_session_are_answered_while_it_polls(
    slow_sim: Simulator, pool: int, cap: int,
) -> None:
    """A session whose pool holds 20 connections (or one), a manager polling 60 sessions on it
    (each read 0.4 s, always one due): its reads take at most 18 connections (the one), and
    the caller's own requests on the session are answered meanwhile, not kept waiting for a
    connection by workers going on with their next read (on a pool of one, none does)."""
    key = slow_sim.add_workspace("ws").api_key
    most = 0
    connector = aiohttp.TCPConnector(limit=pool)
    async with aiohttp.ClientSession(connector=connector) as http, \
            _manager(slow_sim, key, http) as manager:
        async with anyio.create_task_group() as group:
            for _ in range(60):
                group.start_soon(manager.start, "google")
        with anyio.fail_after(30):
            while manager.stats().requests.get("status", {}).get(200, 0) < 5 * cap:
                most = max(most, len(slow_sim.in_flight("status")))
                await slow_sim.wait_for(functools.partial(_more, slow_sim,
                                                          len(slow_sim.requests)))
        for _ in range(10):  # reads go on meanwhile: all 60 sessions are due
            with anyio.fail_after(2):
                async with http.get(f"{slow_sim.url}/api/v2/accounts/ann@acme.io",
                                    headers={"Authorization": f"Bearer {key}"}) as response:
                    assert response.status == 404
            most = max(most, len(slow_sim.in_flight("status")))
        assert _ROOMS[http].cap == cap
        assert cap / 2 < most <= cap


async def test_a_manager_closing_with_reads_under_way_gives_their_room_back(
    slow_sim: Simulator,
) -> None:
    keys = [slow_sim.add_workspace(f"ws{i}").api_key for i in range(2)]
    async with aiohttp.ClientSession() as http:
        async with _manager(slow_sim, keys[0], http) as stays:
            async with _manager(slow_sim, keys[1], http) as leaves:
                async with anyio.create_task_group() as group:
                    for _ in range(150):
                        group.start_soon(leaves.start, "google")
                room = _ROOMS[http]
                with anyio.fail_after(10):
                    while room.steps < room.cap:  # noqa: ASYNC110 - no event to await
                        await anyio.sleep(0.01)
            # Closed with its reads at the cap: the other manager reads at once.
            assert room.steps < room.cap
            pending = await stays.start("google")
            slow_sim.complete(pending.session.session_id, "ann@acme.io")
            with anyio.fail_after(10):
                result = await pending
            assert result.email == "ann@acme.io"
        assert room.steps == 0


async def test_schedulers_at_the_cap_are_woken_one_at_a_time_as_places_come_free() -> None:
    room = _Room(8)
    loop = asyncio.get_running_loop()
    room.steps = 8
    waiters = [loop.create_future() for _ in range(5)]
    room.waiting.extend(waiters)
    waiters[0].cancel()  # a scheduler cancelled as its manager closed: skipped
    room.wake_one()
    assert not any(w.done() for w in waiters[1:])  # 8 under way: no place
    room.ended()
    assert [w.done() for w in waiters[1:]] == [True, False, False, False]  # 7: the first
    room.ended()
    assert [w.done() for w in waiters[1:]] == [True, False, False, False]  # it has yet to run
    room.resumed(waiters[1])  # it runs: takes what it has due, then leaves room unused
    room.wake_one()
    assert [w.done() for w in waiters[1:]] == [True, True, False, False]  # passed on
    room.resumed(waiters[2])
    room.steps = 8
    room.wake_one()
    assert not waiters[3].done()
    room.ended(8)
    assert waiters[3].done() and room.woken is waiters[3]
    room.ended(0)  # no room for the next while the one woken has yet to run
    assert not waiters[4].done()
    room.resumed(waiters[3])  # cancelled as its manager closes: Scheduler.run gives its
    room.ended(0)  # steps not begun back, waking the next in its place
    assert waiters[4].done() and not room.waiting


async def test_a_scheduler_woken_by_the_room_takes_what_it_has_due_in_one_go(
    slow_sim: Simulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workspaces on one session, 150 sessions each, reads slow: the schedulers are woken
    for room at most once per 8 reads (their workers go on with their reads, and one woken
    takes what it has due in one go), not about every other read, as 100 managers were."""
    keys = [slow_sim.add_workspace(f"ws{i}").api_key for i in range(2)]
    wakes = 0
    real = _Room.resumed

    def counted(room: _Room, wake: asyncio.Future[None]) -> None:
        nonlocal wakes
        wakes += 1
        real(room, wake)

    async with aiohttp.ClientSession() as http, _manager(slow_sim, keys[0], http) as one, \
            _manager(slow_sim, keys[1], http) as two:
        async with anyio.create_task_group() as group:
            for manager in (one, two):
                for _ in range(150):
                    group.start_soon(manager.start, "google")
        monkeypatch.setattr(_Room, "resumed", counted)
        with anyio.fail_after(30):
            while sum(sum(m.stats().requests.get("status", {}).values())
                      for m in (one, two)) < 600:
                await slow_sim.wait_for(functools.partial(_more, slow_sim,
                                                          len(slow_sim.requests)))
        reads = sum(sum(m.stats().requests.get("status", {}).values()) for m in (one, two))
        monkeypatch.undo()
    assert 0 < wakes <= reads // 8  # (8-30 in 600 reads; a wake-up every other read before)


class _Reads:
    """Stand-in reads for two schedulers on one small room: ``at_once`` grants every slot
    at once (an in-process store with room in its budget); else every slot waits on
    ``budget`` (a workspace at its status budget)."""

    def __init__(self, at_once: bool) -> None:
        self.at_once = at_once
        self.budget = anyio.Event()
        self.asked = anyio.Event()  # a slot was asked for (and waits, unless at_once)
        self._client = types.SimpleNamespace(_session=None, _owns_session=True)

    async def slot_now(self) -> Grant | None:
        return Grant(0.0, None, False) if self.at_once else None

    async def slot(self) -> Grant:
        self.asked.set()
        await self.budget.wait()
        return Grant(0.0, None, False)


def _pending(name: str) -> PendingConnection:
    session = OAuthSession(name, "https://accounts.example/consent",
                           datetime(2026, 1, 1, tzinfo=timezone.utc), Provider.GOOGLE)
    return PendingConnection(session, None)


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


async def test_a_worker_whose_step_ends_goes_on_with_the_next_session_due() -> None:
    """One manager, a room of four, twelve sessions due: four steps are handed out, and each
    worker goes on with the next due as its step ends (the read's objects freed and the next
    one's made side by side, not in bursts: issue 26's garbage collection)."""
    room = _Room(4)
    scheduler = Scheduler(_Reads(at_once=True), SystemClock())  # type: ignore[arg-type]
    scheduler._room = room
    stepped: list[str] = []
    handed: list[str] = []
    dispatch = scheduler._dispatch

    def counted(group: anyio.abc.TaskGroup, step: Step, pending: PendingConnection,
                grant: Grant) -> None:
        handed.append(pending.session.session_id)
        dispatch(group, step, pending, grant)

    scheduler._dispatch = counted  # type: ignore[method-assign]

    async def step(pending: PendingConnection, grant: Grant) -> None:
        # In a step (cancel() leaves its ending to the step: a one-time answer is kept), no
        # longer queued (so it can be scheduled again), however it was handed out.
        assert pending._in_step and not pending._due
        stepped.append(pending.session.session_id)
        await anyio.lowlevel.checkpoint()

    for i in range(12):
        scheduler.schedule(_pending(f"s-{i}"), 0.0)
    await _run_until([(scheduler, step)], lambda: len(stepped) >= 12, 5)
    assert sorted(stepped) == sorted(f"s-{i}" for i in range(12))  # each once
    assert len(handed) == 4 and room.steps == 0


async def test_a_manager_over_its_share_gives_the_room_back_as_its_steps_end() -> None:
    """Two managers on a room of four: the first takes all four places, its sessions always
    due again; as its steps end it holds more than its share (two), so it does not go on with
    its own: the second manager, waiting for room, reads (else it would wait for ever)."""
    room = _Room(4)
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
            while room.steps < 4 or not room.waiting:
                await anyio.lowlevel.checkpoint()
            group.start_soon(two.run, group, step_two)
            while room.members < 2:
                await anyio.lowlevel.checkpoint()
            started.set()
            while "two-0" not in stepped:
                await anyio.lowlevel.checkpoint()
        group.cancel_scope.cancel()
    assert room.members == 0


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
    reads = [0, 0, 0]
    handed = [0]
    runs: list[tuple[Scheduler, Step]] = []
    for index, scheduler in enumerate(schedulers):
        scheduler._room = room
        dispatch = scheduler._dispatch

        def counted(group: anyio.abc.TaskGroup, step: Step, pending: PendingConnection,
                    grant: Grant, dispatch: Callable[..., None] = dispatch) -> None:
            handed[0] += 1
            dispatch(group, step, pending, grant)

        scheduler._dispatch = counted  # type: ignore[method-assign]

        async def step(pending: PendingConnection, grant: Grant, index: int = index,
                       scheduler: Scheduler = scheduler) -> None:
            reads[index] += 1
            await anyio.lowlevel.checkpoint()
            scheduler.schedule(pending, 0.0)  # due again at once

        scheduler.schedule(_pending(f"{index}-a"), 0.0)
        scheduler.schedule(_pending(f"{index}-b"), 0.0)
        runs.append((scheduler, step))
    await _run_until(runs, lambda: sum(reads) >= 600, 5)
    assert all(150 < n < 250 for n in reads), reads
    assert handed[0] < sum(reads) / 3  # a hand-over a turn, not a read


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


class _Yielding(_Reads):
    """Reads on a store whose take suspends once (a ``MemoryStore`` subclass may)."""

    async def slot_now(self) -> Grant | None:
        await anyio.lowlevel.checkpoint()
        return Grant(0.0, None, False)

    async def release(self, grant: Grant) -> None:
        self.released += 1

    released = 0


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
    assert stepped == [("x", False), ("z", False)] and reads.released == 1
