"""The batcher behind ``RedisStore`` (one EVALSHA carrying many script steps), the fleet's line of
askers in TAKE, and GATED_TAKE, against a real redis-server.

Time in the scripts is driven by ``RedisStore.time_override`` wherever a test compares times; the
batcher's own behaviour is checked by counting round trips and steps and by reading Redis, never
by measuring how long something took.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from instantly_oauth_async import RateLimit
from instantly_oauth_async._limits.breaker import BreakerPolicy
from instantly_oauth_async._limits.clock import SystemClock
from instantly_oauth_async._limits.limiter import FairLimiter
from instantly_oauth_async.redis import RedisStore, StoreError
from instantly_oauth_async.redis import _lua as _redis_lua
from instantly_oauth_async.redis._batch import Batcher, _Lane, hash_tag
from tests._redis import RedisServer, free_port

pytestmark = pytest.mark.anyio

T0 = 1000.0  #: the scripts' clock at the start of each test that drives it


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client of its own, to read (and prepare) what the scripts wrote."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def batcher(redis_server: RedisServer) -> AsyncIterator[Batcher]:
    client = aioredis.Redis.from_url(redis_server.url)
    b = Batcher(client)
    yield b
    await b.aclose()
    await client.aclose()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(redis_server.url)
    s.time_override = T0
    yield s
    await s.aclose()


def key(name: str = "k") -> str:
    """A key of its own (one hash tag a test, so all its steps share a lane)."""
    return f"iox:{{{uuid.uuid4().hex}}}:{name}"


def lane(b: Batcher, k: str) -> _Lane:
    return b._lanes[hash_tag(k)]


async def until(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds (a bound, not a timing)."""
    with anyio.fail_after(within):
        while not await condition():  # noqa: ASYNC110 - Redis's state has no event to await
            await anyio.sleep(0.002)


def released(admin: aioredis.Redis, k: str, lease: str) -> Callable[[], Awaitable[bool]]:
    """A condition for :func:`until`: Redis no longer holds ``lease``'s slot of budget ``k``, and
    logs it as freed (back a window after its request ended)."""
    async def condition() -> bool:
        return (await admin.zscore(f"{k}:held", lease) is None
                and await admin.zscore(f"{k}:freed", lease) is not None)
    return condition


async def ask(store: RedisStore, at: float, specs: list[tuple[str, RateLimit]], asker: str | None,
              **kwargs: Any) -> float:
    """One TAKE at the scripts' time ``at``: the time the asker is told to come back (``at`` when
    granted)."""
    store.time_override = at
    wait, blocked = await store.take(specs, [], asker=asker, **kwargs)
    assert not blocked
    return at + wait


# -- coalescing ------------------------------------------------------------------------------

async def test_steps_asked_while_a_trip_is_out_share_the_next_trip(batcher: Batcher) -> None:
    a, b = key("blk"), key("blk")
    replies = await _gather(*(lambda: batcher.run("BLOCKED_FOR", [a], [""]) for _ in range(5)))
    # the first goes alone at once; the four asked while it was out share the second trip
    assert replies == [b"0"] * 5
    assert batcher.round_trips == 2
    assert batcher.steps["BLOCKED_FOR"] == 5
    # two hash tags are two lanes: their trips do not wait for one another, nor share
    replies = await _gather(*(lambda k=k: batcher.run("BLOCKED_FOR", [k], [""])
                              for k in (a, b, a, b, a, b)))
    assert replies == [b"0"] * 6
    assert batcher.round_trips == 2 + 4
    assert batcher.steps["(posted alone)"] == 0


async def test_a_lone_step_goes_at_once_and_carries_what_is_posted(
    batcher: Batcher, admin: aioredis.Redis
) -> None:
    blk, other = key("blk"), key("blk")
    assert await batcher.run("BLOCKED_FOR", [blk], [""]) == b"0"
    assert batcher.round_trips == 1
    assert lane(batcher, blk).timer is None  # nothing was left to a timer
    # A posted step that may wait an hour: a lone awaited step neither waits for it nor
    # leaves it behind; it rides along, first, in the one trip.
    batcher.post("BLOCK", [blk], ["30", ""], within=3600)
    with anyio.fail_after(5):
        left = await batcher.run("BLOCKED_FOR", [blk], [""])
    assert 29 < float(left) <= 30
    assert batcher.round_trips == 2
    assert batcher.steps["BLOCK"] == 1
    assert batcher.steps["(posted alone)"] == 0
    assert lane(batcher, blk).queued == []
    # a step of another hash tag does not carry it
    batcher.post("BLOCK", [blk], ["30", ""], within=3600)
    await batcher.run("BLOCKED_FOR", [other], [""])
    assert len(lane(batcher, blk).queued) == 1
    assert batcher.round_trips == 3


async def test_steps_of_one_trip_run_in_the_order_asked(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    """A release posted before a take rides on the take's trip and runs first: the slot it frees
    (a window after the release) is the one the take then gets."""
    k = key("b")
    specs = [(k, RateLimit(1, per=1, margin=0))]
    assert await ask(store, T0, specs, None, lease="L", hold=100) == T0
    store.time_override = T0 + 0.5
    await store.release(specs, "L")  # posted: freed at T0 + 1.5 by its own clock
    trips = store.round_trips
    # by T0 + 2 that slot is back, if the release ran before the take
    assert await ask(store, T0 + 2, specs, None) == T0 + 2
    assert store.round_trips == trips + 1
    assert store.steps["RELEASE"] == 1
    assert store.steps["(posted alone)"] == 0
    assert await admin.zscore(f"{k}:held", "L") is None


async def test_an_error_reply_fails_its_own_step_only(
    batcher: Batcher, store: RedisStore, admin: aioredis.Redis
) -> None:
    good = key("blk")
    bad = f"{good}:bad"  # the same hash tag: the same lane, so the same trips
    await admin.lpush(bad, "not a block")  # GET on a list: WRONGTYPE
    replies = await _gather(
        lambda: batcher.run("BLOCKED_FOR", [good], [""]),
        lambda: batcher.run("BLOCK", [good], ["30", ""]),
        lambda: batcher.run("BLOCKED_FOR", [bad], [""]),
        lambda: batcher.run("BLOCKED_FOR", [good], [""]),
    )
    assert batcher.round_trips == 2  # the last three shared a trip
    assert replies[0] == b"0"
    assert replies[1] == 1
    assert isinstance(replies[2], ResponseError)
    assert "WRONGTYPE" in str(replies[2])
    assert 29 < float(replies[3]) <= 30  # ran after the failed step, and saw the block
    # The store: a StoreError for that step, as before batching; the others are answered.
    specs = [(f"{good}:b", RateLimit(5, per=60, margin=0))]
    trips = store.round_trips
    answers = await _gather(
        lambda: store.blocked_for([good]),
        lambda: store.blocked_for([bad]),
        lambda: store.take(specs, []),
        lambda: store.blocked_for([good]),
    )
    assert store.round_trips == trips + 2
    assert isinstance(answers[1], StoreError)
    assert answers[1].code == "WRONGTYPE"
    assert answers[2] == (0.0, False)
    assert isinstance(answers[3], float)
    assert not store.degraded


async def test_a_script_error_names_its_lua_file_and_line(
    batcher: Batcher, admin: aioredis.Redis
) -> None:
    good = key("blk")
    bad = f"{good}:bad"
    await admin.lpush(bad, "not a block")
    wrong_type, no_number = await _gather(
        lambda: batcher.run("BLOCKED_FOR", [bad], [""]),
        lambda: batcher.run("BLOCK", [good], ["not a number", ""]),
    )
    # A Redis command's error reply: Redis names no line, the step's file is named.
    assert isinstance(wrong_type, ResponseError)
    assert str(wrong_type).startswith("WRONGTYPE")  # the code stays first, for StoreError.code
    assert str(wrong_type).endswith("(in blocked_for.lua)")
    # A Lua error: the file and the line in it, not the line of the whole batch script.
    lines = (Path(_redis_lua.__file__).parent / "lua" / "block.lua").read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if "tonumber(ARGV[1])" in text)
    assert isinstance(no_number, ResponseError)
    assert f"block.lua:{line}: attempt to perform arithmetic" in str(no_number)
    assert "user_script" not in str(no_number)


async def test_steps_failing_in_one_trip_each_get_an_error_of_their_own() -> None:
    """A trip that fails as a whole (no server) fails each of its steps with an exception of
    its own: one instance raised in many tasks would pile every task's traceback onto it."""
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    b = Batcher(client)
    try:
        errors = await _gather(*(lambda: b.run("BLOCKED_FOR", ["k"], [""]) for _ in range(4)))
    finally:
        await client.aclose()
    assert b.round_trips == 2
    assert all(isinstance(e, RedisConnectionError) for e in errors), errors
    assert len({id(e) for e in errors}) == 4
    assert str(errors[1]) == str(errors[2])


# -- cancellation ----------------------------------------------------------------------------

async def test_a_caller_cancelled_before_its_step_was_sent_takes_it_out(
    batcher: Batcher, admin: aioredis.Redis
) -> None:
    blk = key("blk")
    gone = f"{blk}:gone"
    await batcher.run("BLOCKED_FOR", [blk], [""])  # connected, script loaded
    replies: dict[str, Any] = {}
    scope = anyio.CancelScope()

    async def one(name: str, step: str, args: list[str], k: str) -> None:
        replies[name] = await batcher.run(step, [k], args)

    async def cancelled() -> None:
        with scope:
            await one("cancelled", "BLOCK", ["30", ""], gone)

    await admin.client_pause(300)  # the first trip waits in the server for 300 ms
    async with anyio.create_task_group() as tg:
        tg.start_soon(one, "first", "BLOCKED_FOR", [""], blk)
        await _until_sync(lambda: lane(batcher, blk).busy)
        tg.start_soon(cancelled)
        tg.start_soon(one, "after", "BLOCKED_FOR", [""], blk)
        await _until_sync(lambda: len(lane(batcher, blk).queued) == 2)
        scope.cancel()
        await _until_sync(lambda: len(lane(batcher, blk).queued) == 1)
    assert replies == {"first": b"0", "after": b"0"}
    assert batcher.round_trips == 3
    assert batcher.steps["BLOCK"] == 0
    assert await admin.exists(gone) == 0  # it never ran


async def test_a_leader_cancelled_by_asyncio_mid_trip_leaves_the_others_answered(
    batcher: Batcher,
) -> None:
    """asyncio's own cancellation (``task.cancel()``, ``asyncio.timeout``; aiohttp cancels a
    handler whose client went away) goes through anyio's shield. The caller whose task sends a
    trip carrying other callers' steps may be cancelled so: the trip still runs to its end, and
    the others get their answers (they used to be neither answered nor queued, and sent empty
    batches in a loop, for ever)."""
    real = batcher._script
    gates = [asyncio.Event(), asyncio.Event()]
    sent: list[int] = []

    async def held(**kwargs: Any) -> Any:
        sent.append(int(kwargs["args"][0]))
        if len(sent) <= len(gates):
            await gates[len(sent) - 1].wait()
        return await real(**kwargs)

    batcher._script = held
    blk = key("blk")
    tasks = [asyncio.ensure_future(batcher.run("BLOCKED_FOR", [blk], [""])) for _ in range(3)]
    try:
        await _until_sync(lambda: sent == [1] and len(lane(batcher, blk).queued) == 2)
        gates[0].set()  # the first trip comes back; the second caller sends the other two steps
        await _until_sync(lambda: sent == [1, 2])
        tasks[1].cancel()
        await _until_sync(tasks[1].done)
        gates[1].set()
        done, _ = await asyncio.wait({tasks[2]}, timeout=5)
        assert done, f"no answer after {batcher.round_trips} round trips"
        assert tasks[2].result() == b"0"
        assert tasks[0].result() == b"0"
        assert sent == [1, 2]
        assert batcher.round_trips == 2
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- posted steps ----------------------------------------------------------------------------

async def test_a_posted_step_goes_alone_when_due(store: RedisStore, admin: aioredis.Redis) -> None:
    k = key("b")
    specs = [(k, RateLimit(2, per=60, margin=0))]
    await ask(store, T0, specs, None, lease="L", hold=100)
    trips = store.round_trips
    await store.release(specs, "L")
    await until(released(admin, k, "L"))
    assert await admin.zscore(f"{k}:freed", "L") == T0 + 60
    assert store.round_trips == trips + 1
    assert store.steps["(posted alone)"] == 1


async def test_a_release_sent_late_frees_its_slot_a_window_after_its_request_ended(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    """On Redis's own clock (no override): a slot taken from a budget at most half spent has its
    release wait up to 250 ms for a trip to ride on; none comes, so it goes alone that late. It
    carries how long ago its request ended, so the slot comes back a window after the release
    was asked for, not after it arrived."""
    k = key("late")
    specs = [(k, RateLimit(4, per=60, margin=0))]
    async with RedisStore.from_url(redis_server.url) as store:
        wait, _ = await store.take(specs, [], lease="L", hold=100)
        assert wait == 0
        asked = _seconds(await admin.time())
        await store.release(specs, "L")
        await until(released(admin, k, "L"))
        arrived = _seconds(await admin.time())
        score = await admin.zscore(f"{k}:freed", "L")
        assert score is not None
        assert arrived - asked >= 0.2  # it did wait for company, and went alone
        assert asked + 60 <= score < asked + 60 + 0.05  # back a window after it was asked for
        assert store.steps["(posted alone)"] == 1


def _seconds(reply: Any) -> float:
    """Redis TIME's reply, in seconds."""
    whole, micros = reply
    return int(whole) + int(micros) / 1e6


async def test_a_step_posted_while_a_trip_is_out_goes_after_it_when_due(
    batcher: Batcher, admin: aioredis.Redis
) -> None:
    blk = key("blk")
    await batcher.run("BLOCKED_FOR", [blk], [""])
    await admin.client_pause(100)
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run, "BLOCKED_FOR", [blk], [""])
        await _until_sync(lambda: lane(batcher, blk).busy)
        batcher.post("BLOCK", [blk], ["30", ""], within=0.005)  # no timer: the lane is busy
    # that trip is back and nothing else comes: the lane's timer, set when it came back, sends it

    async def blocked() -> bool:
        return await admin.exists(blk) == 1

    await until(blocked)
    assert batcher.round_trips == 3
    assert batcher.steps["(posted alone)"] == 1


async def _holding_l1(redis_server: RedisServer
                      ) -> tuple[str, list[tuple[str, RateLimit]], RedisStore]:
    """A new store and budget (5 a minute), lease L1 taken in it."""
    k = key("b")
    specs = [(k, RateLimit(5, per=60, margin=0))]
    store = RedisStore.from_url(redis_server.url)
    assert await store.take(specs, [], lease="L1", hold=100) == (0.0, False)
    return k, specs, store


async def test_aclose_sends_what_is_still_posted(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    k, specs, store = await _holding_l1(redis_server)
    try:
        assert await store.take(specs, [], lease="L2", hold=100) == (0.0, False)
        await store.release(specs, "L1")
    finally:
        await store.aclose()
    assert await released(admin, k, "L1")()  # at once: sent by aclose
    assert await admin.zscore(f"{k}:held", "L2") is not None


async def test_aclose_sends_what_was_posted_while_a_trip_was_out(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    k, specs, store = await _holding_l1(redis_server)
    taken: list[tuple[float, bool]] = []

    async def take() -> None:
        taken.append(await store.take(specs, [], lease="L2", hold=100))

    try:
        await admin.client_pause(200)
        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            await _until_sync(lambda: lane(store._batch, k).busy)
            await store.release(specs, "L1")  # posted while the lane's trip is out
            await store.aclose()
    finally:
        await store.aclose()
    assert taken == [(0.0, False)]
    assert not store.degraded
    assert await released(admin, k, "L1")()


# -- the fleet's line of askers in TAKE ------------------------------------------------------

async def _spent(store: RedisStore) -> tuple[str, list[tuple[str, RateLimit]]]:
    """A new budget of 2 slots a 10 s, both taken with no asker: at T0 and T0 + 9."""
    k = key("b")
    specs = [(k, RateLimit(2, per=10, margin=0))]
    assert await ask(store, T0, specs, None) == T0
    assert await ask(store, T0 + 9, specs, None) == T0 + 9
    return k, specs


async def test_askers_are_told_the_return_they_are_in_line_for(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    k, specs = await _spent(store)  # back at T0 + 10 and T0 + 19
    # first asker: the first return; second: the second (not the soonest, which A will take)
    assert await ask(store, T0 + 9.5, specs, "A") == pytest.approx(T0 + 10)
    assert await ask(store, T0 + 9.6, specs, "B") == pytest.approx(T0 + 19)
    assert await admin.zrange(f"{k}:line", 0, -1) == ["A", "B"]
    # with no asker, TAKE is as before: told the soonest return, in no line
    assert await ask(store, T0 + 9.7, specs, None) == pytest.approx(T0 + 10)
    assert await admin.zcard(f"{k}:line") == 2
    # a slot is back, but A is ahead of B: B waits; A gets it and leaves the line
    assert await ask(store, T0 + 10.5, specs, "B") == pytest.approx(T0 + 19)
    assert await ask(store, T0 + 10.6, specs, "A") == T0 + 10.6
    assert await admin.zrange(f"{k}:line", 0, -1) == ["B"]
    # and without the line nobody would have waited at T0 + 10.5
    other = [(key("b"), RateLimit(2, per=10, margin=0))]
    assert await ask(store, T0, other, None) == T0
    assert await ask(store, T0 + 9, other, None) == T0 + 9
    assert await ask(store, T0 + 10.5, other, None) == T0 + 10.5


async def test_an_asker_past_its_time_and_grace_loses_its_place(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    k, specs = await _spent(store)
    assert await ask(store, T0 + 9.5, specs, "A") == pytest.approx(T0 + 10)  # keeps it to +11
    assert await ask(store, T0 + 9.6, specs, "B") == pytest.approx(T0 + 19)
    assert await ask(store, T0 + 10.9, specs, "B") == pytest.approx(T0 + 19)  # A still ahead
    # A never came back: past T0 + 10 and the grace (1 s), B is first, and a slot is free
    assert await ask(store, T0 + 11.2, specs, "B") == T0 + 11.2
    assert await admin.zcard(f"{k}:line") == 0
    assert await admin.zcard(f"{k}:due") == 0
    # A asking now is a newcomer, at the end of the (empty) line: the next return is its own
    assert await ask(store, T0 + 11.3, specs, "A") == pytest.approx(T0 + 19)


async def test_leave_takes_an_asker_out_of_the_line(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    k, specs = await _spent(store)
    await ask(store, T0 + 9.5, specs, "A")
    await ask(store, T0 + 9.6, specs, "B")
    await ask(store, T0 + 9.7, specs, "C")
    await store.leave(specs, "A")  # posted: rides on B's trip, before B's take

    trips = store.round_trips
    assert await ask(store, T0 + 10.5, specs, "B") == T0 + 10.5
    assert store.round_trips == trips + 1
    assert await admin.zrange(f"{k}:line", 0, -1) == ["C"]
    # a LEAVE with no trip to ride on goes alone, when due
    await store.leave(specs, "C")

    async def empty() -> bool:
        return await admin.zcard(f"{k}:line") == 0 and await admin.zcard(f"{k}:due") == 0

    await until(empty)
    assert store.steps["(posted alone)"] == 1


async def test_the_kth_return_counts_held_slots_among_freed_ones(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    """Freed slots may come back later than a window from now (a held slot replayed into the
    log after an outage comes back at its hold's end): the k-th return is then a freed one
    *after* the held ones, not the held ones' time."""
    k = key("b")
    specs = [(k, RateLimit(3, per=2, margin=0))]
    store.time_override = T0
    # what _recover writes for a slot held locally for 8 s more: a freed entry at T0 + 10
    await store._batch.run("REPLAY", [f"{k}:freed"], ["1", "10", "replayed", repr(T0)])
    assert await ask(store, T0, specs, None, lease="L", hold=5) == T0  # back >= T0 + 2
    assert await ask(store, T0, specs, None) == T0  # back at T0 + 2
    # the returns, soonest first: T0 + 2 (freed), >= now + 2 (held), T0 + 10 (replayed)
    assert await ask(store, T0 + 0.1, specs, "A") == pytest.approx(T0 + 2)
    assert await ask(store, T0 + 0.2, specs, "B") == pytest.approx(T0 + 2.2)
    assert await ask(store, T0 + 0.3, specs, "C") == pytest.approx(T0 + 10)


async def test_a_limiter_whose_waiters_are_gone_leaves_the_line(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    """Two processes' limiters on one budget: the one whose only waiter is cancelled takes its
    asker out of the fleet's line (LEAVE), so nobody waits for a turn it will never take."""
    k = key("b")
    specs = [(k, RateLimit(1, per=60, margin=0))]
    store = RedisStore.from_url(redis_server.url)
    first = FairLimiter(store, specs, [], SystemClock(), prefix="p1:")
    second = FairLimiter(store, specs, [], SystemClock(), prefix="p2:")

    async def line() -> int:
        return int(await admin.zcard(f"{k}:line"))

    try:
        await first.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(second.acquire)
            await until(lambda: _is(line(), 1))
            tg.cancel_scope.cancel()
        await until(lambda: _is(line(), 0))
        assert await admin.zcard(f"{k}:due") == 0
        assert store.steps["LEAVE"] == 1
        # refused by take_now, which will not ask again: not left in line either
        grant, wait, _ = await second.take_now()
        assert grant is None and wait > 0
        await until(lambda: _is(line(), 0))
        assert store.steps["LEAVE"] == 2
    finally:
        await store.aclose()


# -- GATED_TAKE: a breaker's admission and a budget's slot in one step --------------------------

POLICY = BreakerPolicy(failure_threshold=1, cooldown=5, max_cooldown=60, probe_timeout=30)


async def _open(store: RedisStore, breaker: str) -> None:
    await store.breaker_record(breaker, POLICY, success=False, probe=False)


async def test_an_open_breaker_refuses_without_spending_a_slot(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    k, breaker = key("b"), key("breaker")
    specs = [(k, RateLimit(2, per=10, margin=0))]
    await _open(store, breaker)  # open until T0 + 5
    store.time_override = T0 + 1
    wait, blocked, admission = await store.take_gated(specs, [], (breaker, POLICY), lease="L",
                                                      hold=10, asker="A")
    assert not admission.allowed
    assert wait == pytest.approx(4) == admission.wait
    assert not blocked
    assert await admin.zcard(f"{k}:held") == 0
    assert await admin.zcard(f"{k}:freed") == 0
    assert await admin.zcard(f"{k}:line") == 0  # nor a place in line
    assert store.steps["GATED_TAKE"] == 1


async def test_a_half_open_probe_is_granted_with_a_free_slot(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    k, breaker = key("b"), key("breaker")
    specs = [(k, RateLimit(4, per=10, margin=0))]
    await _open(store, breaker)
    store.time_override = T0 + 6  # cooldown over
    wait, blocked, admission = await store.take_gated(specs, [], (breaker, POLICY), lease="L",
                                                      hold=10)
    assert (wait, blocked) == (0.0, False)
    assert admission.allowed and admission.probe
    assert await admin.hget(breaker, "state") == "half_open"
    assert float(await admin.hget(breaker, "probe_since") or "nan") == T0 + 6
    assert await admin.zscore(f"{k}:held", "L") == T0 + 6 + 10 + 10
    # one probe across the fleet: the next is refused, and spends nothing
    wait, _, admission = await store.take_gated(specs, [], (breaker, POLICY), lease="M", hold=10)
    assert not admission.allowed and wait > 0
    assert await admin.zcard(f"{k}:held") == 1
    # a quarter of the budget spent: its release may wait longer for a trip (see release())
    assert "L" in store._roomy


async def test_a_probe_is_given_back_when_no_slot_is_free(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    k, breaker = key("b"), key("breaker")
    specs = [(k, RateLimit(1, per=10, margin=0))]
    assert await ask(store, T0, specs, None) == T0  # the only slot, back at T0 + 10
    store.time_override = T0
    await _open(store, breaker)
    store.time_override = T0 + 6
    wait, blocked, admission = await store.take_gated(specs, [], (breaker, POLICY))
    assert wait == pytest.approx(4) and not blocked
    assert admission.allowed and not admission.probe
    assert await admin.hget(breaker, "state") == "half_open"
    assert await admin.hget(breaker, "probe_since") == ""
    # the probe is there for the next asker once a slot is back
    store.time_override = T0 + 10.5
    wait, _, admission = await store.take_gated(specs, [], (breaker, POLICY))
    assert wait == 0 and admission.probe


async def test_a_probe_is_given_back_when_the_take_fails(
    store: RedisStore, admin: aioredis.Redis
) -> None:
    k, breaker = key("b"), key("breaker")
    specs = [(k, RateLimit(1, per=10, margin=0))]
    await admin.set(f"{k}:freed", "not a sorted set")
    store.time_override = T0
    await _open(store, breaker)
    store.time_override = T0 + 6
    with pytest.raises(StoreError) as caught:
        await store.take_gated(specs, [], (breaker, POLICY))
    assert caught.value.code == "WRONGTYPE"
    assert await admin.hget(breaker, "state") == "half_open"
    assert await admin.hget(breaker, "probe_since") == ""  # not held for probe_timeout


# -- helpers ---------------------------------------------------------------------------------

async def _gather(*calls: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Start every call in the order given, in one go; their replies or exceptions, in order."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as exc:  # noqa: BLE001 - returned to the test, which checks it
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return results


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _until_sync(condition: Callable[[], bool], within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while not condition():  # the batcher's state has no event to await
            await anyio.lowlevel.checkpoint()
