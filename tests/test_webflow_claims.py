"""The connect guard's contract (``store.claims``), the same for MemoryStore, SQLiteStore and
RedisStore (on a real redis-server, its scripts timed by the test's FakeClock): one pending
connection per user, a cap in all, an entry gone once dropped or past its deadline. Then the
guard across processes: two processes on one SQLite file, and on one Redis, race for one user's
claim and exactly one wins; a claim of a process killed with SIGKILL leaves at its deadline."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from instantly_oauth_async import ConfigurationError, MemoryStore, StoreError
from instantly_oauth_async._stores.claims import Claims
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.sqlite import SQLiteStore
from instantly_oauth_async.testing import FakeClock
from tests._processes import child_env, running
from tests._redis import RedisServer
from tests._tree import LIBRARY, ROOT

pytestmark = pytest.mark.anyio
NS = "test-connect"
EPOCH = 1_800_000_000.0  # the Redis scripts' time when the fake clock reads 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def claims(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
                 ) -> AsyncIterator[Claims]:
    if request.param == "memory":
        yield MemoryStore(clock).claims
    elif request.param == "sqlite":
        async with SQLiteStore(tmp_path / "claims.db", clock=clock) as store:
            yield store.claims
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        async with RedisStore.from_url(server.url, clock=clock) as store:
            await store._redis.flushdb()
            store.claims.time_source = lambda: EPOCH + clock.monotonic()
            yield store.claims


async def test_the_stores_offer_claims(claims: Claims) -> None:
    assert isinstance(claims, Claims)
    assert "secret" not in repr(claims)


async def test_a_user_holds_one_pending_connection(claims: Claims) -> None:
    taken = await claims.claim(NS, "ann", hold=60, per_user=1, limit=10)
    assert taken.state == "taken" and len(taken.ticket) == 32 and taken.session_id is None
    again = await claims.claim(NS, "ann", hold=60, per_user=1, limit=10)
    assert (again.state, again.ticket, again.session_id) == ("held", taken.ticket, None)
    assert await claims.bind(NS, "ann", taken.ticket, "s1", hold=600)
    again = await claims.claim(NS, "ann", hold=60, per_user=1, limit=10)
    assert (again.state, again.ticket, again.session_id) == ("held", taken.ticket, "s1")
    bob = await claims.claim(NS, "bob", hold=60, per_user=1, limit=10)
    assert bob.state == "taken" and bob.ticket != taken.ticket
    assert await claims.count(NS) == 2 and await claims.count(NS, "ann") == 1
    assert await claims.count("another-flow") == 0  # namespaces are apart


async def test_per_user_allows_more_and_names_a_bound_one(claims: Claims) -> None:
    first = await claims.claim(NS, "ann", hold=60, per_user=2, limit=10)
    await claims.bind(NS, "ann", first.ticket, "s1", hold=600)
    second = await claims.claim(NS, "ann", hold=60, per_user=2, limit=10)
    assert second.state == "taken"
    third = await claims.claim(NS, "ann", hold=60, per_user=2, limit=10)
    assert (third.state, third.session_id) == ("held", "s1")  # the one with a session


async def test_the_cap_in_all_refuses_until_a_claim_leaves(claims: Claims) -> None:
    ann = await claims.claim(NS, "ann", hold=60, per_user=1, limit=2)
    await claims.claim(NS, "bob", hold=60, per_user=1, limit=2)
    full = await claims.claim(NS, "cid", hold=60, per_user=1, limit=2)
    assert (full.state, full.ticket) == ("full", "")
    # a user who holds one already is told so, not "full"
    assert (await claims.claim(NS, "ann", hold=60, per_user=1, limit=2)).state == "held"
    await claims.drop(NS, "ann", ticket=ann.ticket)
    assert (await claims.claim(NS, "cid", hold=60, per_user=1, limit=2)).state == "taken"


async def test_a_claim_is_dropped_by_ticket_or_by_session(claims: Claims) -> None:
    ann = await claims.claim(NS, "ann", hold=60, per_user=1, limit=10)
    await claims.bind(NS, "ann", ann.ticket, "s1", hold=600)
    await claims.drop(NS, "bob", session_id="s1")  # another user's drop touches nothing
    await claims.drop(NS, "ann", session_id="other")
    assert await claims.count(NS, "ann") == 1
    await claims.drop(NS, "ann", session_id="s1")
    assert await claims.count(NS) == 0
    assert not await claims.bind(NS, "ann", ann.ticket, "s1", hold=600)  # gone: not bound


async def test_a_claim_leaves_by_itself_at_its_deadline(claims: Claims, clock: FakeClock
                                                        ) -> None:
    """A holder that never drops (killed mid-flow): the start hold, then the session's."""
    starting = await claims.claim(NS, "ann", hold=30, per_user=1, limit=1)
    clock.advance(29.5)
    assert (await claims.claim(NS, "bob", hold=30, per_user=1, limit=1)).state == "full"
    clock.advance(0.5)
    assert await claims.count(NS) == 0
    assert not await claims.bind(NS, "ann", starting.ticket, "s1", hold=600)
    bob = await claims.claim(NS, "bob", hold=30, per_user=1, limit=1)
    assert await claims.bind(NS, "bob", bob.ticket, "s2", hold=600)  # the deadline moves
    clock.advance(599)
    assert await claims.count(NS, "bob") == 1
    clock.advance(1)
    assert (await claims.claim(NS, "ann", hold=30, per_user=1, limit=1)).state == "taken"


async def test_bad_arguments_are_refused_with_a_typed_error(claims: Claims) -> None:
    for ns, user, hold in (("", "ann", 1.0), ("a{b}", "ann", 1.0), (NS, "", 1.0),
                           (NS, "ann", 0.0), (NS, "ann", float("nan"))):
        with pytest.raises(ConfigurationError):
            await claims.claim(ns, user, hold=hold, per_user=1, limit=1)
    with pytest.raises(ConfigurationError):
        await claims.claim(NS, "ann", hold=1, per_user=0, limit=1)


# -- across processes ------------------------------------------------------------------------


async def _racers(target: str, count: int, go: Path) -> list[dict[str, str]]:
    """``count`` processes of tests/_webflow_claimer.py on ``target``, each claiming ann's one
    slot at the same moment (once all are ready, the file ``go`` appears); their answers."""
    answers: list[dict[str, str]] = []
    argv = [sys.executable, "-m", "tests._webflow_claimer", "race", target, str(go)]
    ready: list[None] = []
    all_ready = anyio.Event()

    async def racer() -> None:
        async with running(argv, cwd=ROOT, env=child_env()) as child:
            with anyio.fail_after(30):
                await child.stdout.wait_for("^ready$")
            ready.append(None)
            if len(ready) == count:
                all_ready.set()
            with anyio.fail_after(60):
                answers.append(json.loads(await child.stdout.wait_for("^{")))

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(racer)
        with anyio.fail_after(60):
            await all_ready.wait()
        await anyio.Path(go).touch()
    return answers


async def test_a_redis_claims_script_error_names_its_lua_file(redis_server: RedisServer) -> None:
    async with RedisStore.from_url(redis_server.url) as store:
        await store._redis.set(f"iox:claims:{{{NS}}}:due", "not a sorted set")
        with pytest.raises(StoreError) as raised:
            await store.claims.claim(NS, "ann", hold=60, per_user=1, limit=10)
        assert raised.value.code == "WRONGTYPE"
        # Outside a pcall, Redis names the failing line: the file and line it came from.
        claims_lua = LIBRARY / "redis" / "lua" / "claims.lua"
        lines = claims_lua.read_text().splitlines()
        line = 1 + next(i for i, text in enumerate(lines) if "ZRANGEBYSCORE" in text)
        assert f"@claims.lua:{line}." in str(raised.value)
        assert "user_script" not in str(raised.value)
        await store._redis.delete(f"iox:claims:{{{NS}}}:due")


async def test_processes_on_one_sqlite_file_hold_one_claim_per_user(tmp_path: Path) -> None:
    answers = await _racers(str(tmp_path / "race.db"), 4, tmp_path / "go")
    assert sorted(a["state"] for a in answers) == ["held", "held", "held", "taken"]
    async with SQLiteStore(tmp_path / "race.db") as store:
        assert await store.claims.count(NS, "ann") == 1


async def test_processes_on_one_redis_hold_one_claim_per_user(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with RedisStore.from_url(redis_server.url) as store:
        await store._redis.flushdb()
        answers = await _racers(redis_server.url, 4, tmp_path / "go")
        assert sorted(a["state"] for a in answers) == ["held", "held", "held", "taken"]
        assert await store.claims.count(NS, "ann") == 1


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_the_claim_of_a_process_killed_with_sigkill_leaves_at_its_deadline(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = str(tmp_path / "killed.db")
    if kind == "redis":
        target = request.getfixturevalue("redis_server").url
        async with RedisStore.from_url(target) as fresh:
            await fresh._redis.flushdb()
    argv = [sys.executable, "-m", "tests._webflow_claimer", "hold", target]
    async with running(argv, cwd=ROOT, env=child_env()) as child:
        with anyio.fail_after(30):
            held = json.loads(await child.stdout.wait_for("^{"))
        due = time.monotonic() + 1.5  # the bound claim's deadline is before this
        child.process.send_signal(signal.SIGKILL)
        assert await child.wait() == -signal.SIGKILL
    assert held["state"] == "taken"
    store = SQLiteStore(target) if kind == "sqlite" else RedisStore.from_url(target)
    async with store:
        # the killed process's claim, bound to a session with a 1.5 s hold, still counts ...
        first = await store.claims.claim(NS, "ann", hold=30, per_user=1, limit=10)
        assert (first.state, first.session_id) == ("held", "s-killed")
        await anyio.sleep(max(0.0, due - time.monotonic()) + 0.05)  # to the known deadline
        assert await store.claims.count(NS, "ann") == 0  # ... until its deadline passed
        assert (await store.claims.claim(NS, "ann", hold=30, per_user=1, limit=10)).state \
            == "taken"
