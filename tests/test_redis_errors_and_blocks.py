"""Issue 12, items 15 and 17, against a real redis-server and the simulator over loopback.

15: ``RedisStore`` is an async context manager that closes only the client it made; importing
``instantly_oauth_async.redis`` without the extra names the extra; a Redis *error* (an ACL
``NOPERM``, a wrong password, ``WRONGTYPE``, a command the server lacks) raises
:class:`StoreError` instead of passing for an outage, while outages (and ``BUSY``, ``NOSCRIPT``)
still do what they did.

17: a block learned from a 429 outlives the manager and the process that learned it: through
Redis for every later manager and process (also when it was learned while Redis was away), and
through one ``MemoryStore`` for every manager of the process that shares it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from instantly_oauth_async import (
    InstantlyError,
    IPBlockedError,
    MemoryStore,
    OAuthManager,
    Provider,
    RateLimit,
    Store,
)
from instantly_oauth_async._limits.breaker import BreakerPolicy
from instantly_oauth_async.redis import RedisStore, StoreError
from instantly_oauth_async.testing import Simulator
from tests._redis import RedisServer
from tests._tree import ROOT

pytestmark = pytest.mark.anyio
EXTRA_HINT = "pip install 'instantly-oauth-async[redis]'"


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client of the default (all-powerful) user, to set the scene."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


def _specs() -> list[tuple[str, RateLimit]]:
    return [(f"iox-test:{uuid.uuid4().hex}", RateLimit(5, per=60))]


def _inits(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.kind == "init")


def _texts(exc: BaseException) -> list[str]:
    """The message and repr of an exception and of everything in its chain."""
    texts: list[str] = []
    seen: BaseException | None = exc
    for _ in range(10):  # bounded: chains are short
        if seen is None:
            break
        texts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return texts


# -- item 15: the store's lifetime -------------------------------------------------------------

async def test_redis_store_is_an_async_context_manager_closing_only_its_own_client(
    redis_server: RedisServer,
) -> None:
    specs = _specs()
    given = aioredis.Redis.from_url(redis_server.url)
    try:
        connection = await given.client_id()
        async with RedisStore(given) as store:
            assert isinstance(store, Store)
            assert await store.take(specs, []) == (0.0, False)
        # A client it was given stays open: the same connection answers (a closed pool would
        # have opened a new one, with a new id).
        assert await given.client_id() == connection
    finally:
        await given.aclose()

    async with RedisStore.from_url(redis_server.url) as own:
        assert await own.take(specs, []) == (0.0, False)
        made = own._redis
        before = await made.client_id()
    try:
        assert await made.client_id() != before  # the pool it made was closed on the way out
    finally:
        await made.aclose()


async def test_memory_store_is_an_async_context_manager_too() -> None:
    async with MemoryStore() as store:
        assert await store.take(_specs(), []) == (0.0, False)


def test_importing_the_redis_module_without_the_extra_names_the_extra() -> None:
    """Run in a fresh interpreter where ``redis`` cannot be imported, two ways: a meta-path
    finder that says it is not installed, and ``sys.modules['redis'] = None``."""
    script = textwrap.dedent("""
        import json, sys

        class NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name == "redis" or name.startswith("redis."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        import instantly_oauth_async  # the package itself never needs redis
        results = []
        for way in ("finder", "none"):
            if way == "finder":
                sys.meta_path.insert(0, NotInstalled())
            else:
                sys.meta_path.pop(0)
                sys.modules["redis"] = None
            try:
                import instantly_oauth_async.redis
            except ImportError as exc:
                results.append([way, type(exc).__name__, str(exc), exc.name])
            else:
                results.append([way, "imported", "", None])
            assert "instantly_oauth_async.redis" not in sys.modules
        print(json.dumps(results))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
        cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r[0] for r in results] == ["finder", "none"]
    for _, kind, message, name in results:
        assert kind == "ModuleNotFoundError"  # an ImportError: ``except ImportError`` catches it
        assert EXTRA_HINT in message, message
        assert name == "redis"


# -- item 15: errors are not outages -----------------------------------------------------------

async def test_a_user_without_evalsha_gets_a_store_error_not_a_stall(
    redis_server: RedisServer, admin: aioredis.Redis, sim: Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ACL ``NOPERM``: before, the store took it for an outage and ``start`` waited its whole
    deadline with nothing sent (fallback share 0); now it raises at once."""
    caplog.set_level(logging.DEBUG)
    user, password = f"iox-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    await admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                            channels=["*"], categories=["+@all"], commands=["-evalsha", "-eval"])
    store = RedisStore.from_url(f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0")
    workspace = sim.add_workspace("acme")
    try:
        async with OAuthManager(workspace.api_key, base_url=sim.url, store=store) as manager:
            with anyio.fail_after(20), pytest.raises(StoreError) as caught:
                await manager.start(Provider.GOOGLE, timeout=3)
            assert not store.degraded
        assert isinstance(caught.value, InstantlyError)
        assert caught.value.code == "NOPERM"
        assert "NOPERM" in str(caught.value)
        assert _inits(sim) == 0
        for text in [*_texts(caught.value), repr(store), caplog.text]:
            assert password not in text
            assert workspace.api_key not in text
    finally:
        await store.aclose()
        await admin.acl_deluser(user)


async def test_a_store_error_while_polling_reaches_the_awaiter(
    redis_server: RedisServer, admin: aioredis.Redis, sim: Simulator,
) -> None:
    """The poll scheduler's slot for a read hits ``NOPERM``: the due session ends with the
    StoreError; the manager's task group does not crash under the caller."""
    user, password = f"iox-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    await admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                            channels=["*"], categories=["+@all"], commands=["-evalsha", "-eval"])
    store = RedisStore.from_url(f"redis://{user}:{password}@127.0.0.1:{redis_server.port}/0")
    workspace = sim.add_workspace("acme")
    try:
        async with OAuthManager(workspace.api_key, base_url=sim.url, store=store,
                                poll_interval=0.05) as manager:
            pending = manager.resume(await manager.client.init_oauth("google"))
            with anyio.fail_after(20), pytest.raises(StoreError):
                await pending
            assert manager.stats().pending == 0
    finally:
        await store.aclose()
        await admin.acl_deluser(user)


async def test_a_wrong_password_raises_a_store_error(
    redis_server: RedisServer, admin: aioredis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    user, wrong = f"iox-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    await admin.acl_setuser(user, enabled=True, passwords=[f"+{secrets.token_urlsafe(18)}"],
                            keys=["*"], channels=["*"], categories=["+@all"])
    store = RedisStore.from_url(f"redis://{user}:{wrong}@127.0.0.1:{redis_server.port}/0")
    try:
        with anyio.fail_after(20), pytest.raises(StoreError) as caught:
            await store.take(_specs(), [])
        assert not store.degraded
        assert caught.value.code == "WRONGPASS"
        for text in [*_texts(caught.value), repr(store), caplog.text]:
            assert wrong not in text
    finally:
        await store.aclose()
        await admin.acl_deluser(user)


async def test_a_block_key_of_the_wrong_type_raises_a_store_error(
    redis_server: RedisServer, admin: aioredis.Redis, sim: Simulator,
) -> None:
    """``WRONGTYPE`` in the TAKE script (another program wrote a hash where the IP block goes)."""
    workspace = sim.add_workspace("acme")
    store = RedisStore.from_url(redis_server.url)
    manager = OAuthManager(workspace.api_key, base_url=sim.url, store=store)
    ip_key = manager._admission[Provider.GOOGLE]._block_keys[1]
    await admin.hset(ip_key, "not", "a block")
    try:
        async with manager:
            with anyio.fail_after(20), pytest.raises(StoreError) as caught:
                await manager.start(Provider.GOOGLE, timeout=3)
            assert not store.degraded
        assert caught.value.code == "WRONGTYPE"
        assert _inits(sim) == 0
    finally:
        await store.aclose()
        await admin.delete(ip_key)


async def test_a_breaker_key_of_the_wrong_type_raises_a_store_error(
    redis_server: RedisServer, admin: aioredis.Redis,
) -> None:
    """``WRONGTYPE`` in a script and in the plain ``HGET`` of ``breaker_state``: before, the
    state was quietly the local breaker's (closed)."""
    key = f"iox-test:{uuid.uuid4().hex}:breaker"
    await admin.rpush(key, "not a breaker")
    store = RedisStore.from_url(redis_server.url)
    try:
        with pytest.raises(StoreError) as in_state:
            await store.breaker_state(key)
        with pytest.raises(StoreError) as in_script:
            await store.breaker_admit(key, BreakerPolicy())
        assert in_state.value.code == in_script.value.code == "WRONGTYPE"
        assert not store.degraded
    finally:
        await store.aclose()
        await admin.delete(key)


async def test_a_server_without_a_needed_command_raises_a_store_error() -> None:
    """A server (or proxy) that lacks EVALSHA, as an old or locked-down one may."""
    server = RedisServer(("--rename-command", "EVALSHA", ""))
    server.start()
    store = RedisStore.from_url(server.url)
    try:
        with anyio.fail_after(20), pytest.raises(StoreError) as caught:
            await store.take(_specs(), [])
        assert caught.value.code == "ERR"
        assert "EVALSHA" in str(caught.value)
        assert not store.degraded
    finally:
        await store.aclose()
        server.close()


async def test_flushed_scripts_are_loaded_again(
    redis_server: RedisServer, admin: aioredis.Redis,
) -> None:
    """``NOSCRIPT`` after ``SCRIPT FLUSH`` (or a restart) is not an error: the script is loaded
    again and the take goes through Redis."""
    specs = _specs()
    store = RedisStore.from_url(redis_server.url)
    try:
        assert await store.take(specs, []) == (0.0, False)
        await admin.script_flush()
        assert await store.take(specs, []) == (0.0, False)
        assert not store.degraded
        assert await admin.zcard(f"{specs[0][0]}:freed") == 2  # both takes are in Redis
    finally:
        await store.aclose()


async def _answers_busy(client: aioredis.Redis) -> bool:
    try:
        await client.ping()
    except aioredis.ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


def _degraded(store: RedisStore) -> bool:
    return store.degraded  # a call, so that mypy does not narrow the property between asserts


async def test_a_busy_server_is_an_outage_not_an_error() -> None:
    """``BUSY`` (another script runs too long) passes: the store lives on its fallback, as when
    Redis is unreachable, and comes back once the script is killed."""
    server = RedisServer()
    server.start()
    store = RedisStore.from_url(server.url, retry_interval=0.05)
    probe = aioredis.Redis.from_url(server.url)
    specs = _specs()
    try:
        assert await store.take(specs, []) == (0.0, False)
        await probe.config_set("busy-reply-threshold", 50)
        script = b"while true do end"
        command = b"*3\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (len(script), script)
        async with await anyio.connect_tcp("127.0.0.1", server.port) as hog:
            await hog.send(command)
            with anyio.fail_after(10):
                for _ in range(10_000):  # bounded: until the server answers BUSY
                    if await _answers_busy(probe):
                        break
                else:
                    pytest.fail("the server never became busy")
            wait, blocked = await store.take(specs, [])
            assert store.degraded and wait > 0 and not blocked
            await probe.script_kill()
            # SCRIPT KILL answers before the script has unwound; its own error reply comes once
            # it has, and only then does the server stop answering BUSY.
            with anyio.fail_after(10):
                assert (await hog.receive()).startswith(b"-")
        store._next_try = 0.0  # no need to wait out retry_interval here
        assert await store.take(specs, []) == (0.0, False)
        assert not store.degraded
    finally:
        await probe.aclose()
        await store.aclose()
        server.close()


# -- item 17: learned blocks outlive their manager and process --------------------------------

WORKER = textwrap.dedent("""
    import asyncio, os, sys
    from instantly_oauth_async import IPBlockedError, OAuthManager
    from instantly_oauth_async.redis import RedisStore

    async def main():
        store = RedisStore.from_url(sys.argv[1])
        try:
            async with OAuthManager(os.environ["INSTANTLY_API_KEY"], base_url=sys.argv[2],
                                    store=store) as manager:
                try:
                    await manager.start("google", timeout=30)
                except IPBlockedError as exc:
                    print(f"blocked {exc.retry_after:.0f}")
                else:
                    print("connected")
        finally:
            await store.aclose()

    asyncio.run(main())
""")


async def test_a_block_learned_by_another_process_holds_back_new_managers(
    redis_server: RedisServer, sim: Simulator,
) -> None:
    """A process learns a 30-minute block from a 429 and exits. The server then lifts the block,
    so only what the fleet learned can hold a new manager back: a manager created afterwards in
    this process, on its own RedisStore, must not send a single init, whatever its workspace."""
    acme, other = sim.add_workspace("acme"), sim.add_workspace("other")
    sim.block_ip("google", "127.0.0.1", 1800)
    env = {**os.environ, "INSTANTLY_API_KEY": acme.api_key, "PYTHONPATH": str(ROOT)}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-c", WORKER, redis_server.url, sim.url], env=env, cwd=ROOT,
            check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split()[0] == "blocked"
    assert [(r.kind, r.status) for r in sim.requests] == [("init", 429)]
    sim.block_ip("google", "127.0.0.1", 0)  # the server forgets it: only the fleet remembers

    for workspace in (acme, other):  # the block is the IP's: other workspaces honour it too
        store = RedisStore.from_url(redis_server.url)
        try:
            async with OAuthManager(workspace.api_key, base_url=sim.url, store=store) as manager:
                with anyio.fail_after(20), pytest.raises(IPBlockedError) as caught:
                    await manager.start(Provider.GOOGLE, timeout=30)
            assert 1700 < caught.value.retry_after <= 1800
        finally:
            await store.aclose()
    assert _inits(sim) == 1


async def test_a_block_learned_while_redis_was_away_reaches_redis_on_its_return(
    sim: Simulator,
) -> None:
    """A 429's block learned while Redis is unreachable lives in that store only; when Redis
    comes back (here empty, as after a restart) it must be written there, or every other manager
    of the fleet, and this process after a restart, would send inits into it."""
    server = RedisServer()
    server.start()
    workspace = sim.add_workspace("acme")
    learner = RedisStore.from_url(server.url, retry_interval=0.05)
    store = RedisStore.from_url(server.url)
    manager = OAuthManager(workspace.api_key, base_url=sim.url, store=store)
    keys = list(manager._admission[Provider.GOOGLE]._block_keys)
    try:
        assert await learner.blocked_for(keys) == 0
        server.stop()
        await learner.block(keys, 1800)  # what Admission does with a 429's Retry-After
        assert _degraded(learner)
        server.start()  # back, and empty
        learner._next_try = 0.0  # no need to wait out retry_interval here
        assert await learner.blocked_for(keys) > 1700
        assert not learner.degraded
        async with manager:
            with anyio.fail_after(20), pytest.raises(IPBlockedError) as caught:
                await manager.start(Provider.GOOGLE, timeout=30)
        assert caught.value.retry_after > 1700
        assert _inits(sim) == 0
    finally:
        await learner.aclose()
        await store.aclose()
        server.close()


async def test_managers_sharing_one_memory_store_share_its_blocks(sim: Simulator) -> None:
    """With the memory store a block lives as long as the store (the process at most): every
    manager sharing it, created later and of any workspace, honours it."""
    store = MemoryStore()
    acme, other = sim.add_workspace("acme"), sim.add_workspace("other")
    sim.block_ip("google", "127.0.0.1", 1800)
    async with OAuthManager(acme.api_key, base_url=sim.url, store=store) as first:
        with anyio.fail_after(20), pytest.raises(IPBlockedError):
            await first.start(Provider.GOOGLE, timeout=30)
    assert [(r.kind, r.status) for r in sim.requests] == [("init", 429)]
    sim.block_ip("google", "127.0.0.1", 0)  # the server forgets it: only the store remembers

    for workspace in (acme, other):
        async with OAuthManager(workspace.api_key, base_url=sim.url, store=store) as manager:
            with anyio.fail_after(20), pytest.raises(IPBlockedError) as caught:
                await manager.start(Provider.GOOGLE, timeout=30)
        assert 1700 < caught.value.retry_after <= 1800
    assert _inits(sim) == 1
