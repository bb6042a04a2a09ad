"""``OAuthManager.from_env``: one way to configure, for the library, the CLI and the examples.

Each variable is read from a mapping the test gives (as ``os.environ`` would be), and every
manager built here talks HTTP to the simulator on loopback; the Redis store is a real
redis-server, the SQLite store a real file.
"""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

import anyio
import pytest

from instantly_oauth_async import (
    ClientStateError,
    ConfigurationError,
    EnvironmentVariableError,
    MemoryStore,
    OAuthManager,
    RateLimit,
    StartTimeoutError,
)
from instantly_oauth_async._manager.config import parse_store
from instantly_oauth_async.sqlite import SQLiteStore
from instantly_oauth_async.testing import Simulator
from tests._redis import RedisServer

pytestmark = pytest.mark.anyio

KEY = "INSTANTLY_API_KEY"
SECRET = "hunter2-not-for-logs"


def env_of(sim: Simulator, api_key: str, **more: str) -> dict[str, str]:
    return {KEY: api_key, "INSTANTLY_BASE_URL": sim.url, **more}


async def connect_one(manager: OAuthManager, sim: Simulator, email: str) -> None:
    """One session through ``manager``: created, allowed by the person, its result read."""
    pending = await manager.start("google")
    sim.complete(pending.session.session_id, email)
    with anyio.fail_after(10):
        result = await pending
    assert result.ok and result.email == email


# -- the key ------------------------------------------------------------------------------------

@pytest.mark.parametrize("environ", [{}, {KEY: ""}, {KEY: "   "}], ids=["unset", "empty", "blank"])
def test_a_missing_key_raises_one_typed_error_naming_the_variable(environ: dict[str, str]) -> None:
    with pytest.raises(EnvironmentVariableError) as caught:
        OAuthManager.from_env(environ)
    assert caught.value.variable == KEY
    assert isinstance(caught.value, ConfigurationError)
    assert str(caught.value) == "INSTANTLY_API_KEY is not set: set it to the workspace's API key"


def test_a_key_that_cannot_go_in_a_header_is_named_and_never_shown() -> None:
    with pytest.raises(EnvironmentVariableError) as caught:
        OAuthManager.from_env({KEY: f"{SECRET}\nX-Injected: 1"})
    assert caught.value.variable == KEY
    assert "INSTANTLY_API_KEY holds characters" in str(caught.value)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)


def test_the_error_survives_pickling_with_its_variable() -> None:
    error = EnvironmentVariableError("INSTANTLY_STORE", "INSTANTLY_STORE must be ...")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (type(copy), copy.variable, str(copy)) == (
        EnvironmentVariableError, "INSTANTLY_STORE", "INSTANTLY_STORE must be ...")


async def test_a_manager_from_the_environment_connects_a_mailbox(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    async with OAuthManager.from_env(env_of(sim, workspace.api_key), poll_interval=0.05) as m:
        await connect_one(m, sim, "ann@acme.io")
    assert [r.kind for r in sim.requests if r.kind == "init"] == ["init"]


async def test_it_reads_os_environ_when_given_no_mapping(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = sim.add_workspace("acme")
    for name, value in env_of(sim, workspace.api_key).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("INSTANTLY_STORE", raising=False)
    monkeypatch.delenv("INSTANTLY_WORKSPACE", raising=False)
    async with OAuthManager.from_env(poll_interval=0.05) as manager:
        await connect_one(manager, sim, "ann@acme.io")


# -- the base URL ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "says"), [
    (f"ftp://user:{SECRET}@api.example.com", "must be an absolute http(s) URL: got "
                                             "'ftp://api.example.com'"),
    ("http://api.example.com", "must use https"),
    (f"https://api.example.com/?token={SECRET}", "must not hold credentials, a query"),
    ("not a url", "must be an absolute http(s) URL"),
])
def test_a_malformed_base_url_is_named_with_what_is_expected(url: str, says: str) -> None:
    with pytest.raises(EnvironmentVariableError) as caught:
        OAuthManager.from_env({KEY: "k" * 20, "INSTANTLY_BASE_URL": url})
    assert caught.value.variable == "INSTANTLY_BASE_URL"
    assert str(caught.value).startswith("INSTANTLY_BASE_URL ")
    assert says in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_an_override_wins_and_its_variable_is_not_read(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    environ = {KEY: "not-this-key", "INSTANTLY_BASE_URL": "ftp://nowhere",
               "INSTANTLY_WORKSPACE": "other", "INSTANTLY_STORE": "postgres://nowhere"}
    async with OAuthManager.from_env(environ, api_key=workspace.api_key, base_url=sim.url,
                                     store=MemoryStore(), poll_interval=0.05) as manager:
        assert manager._owned_store is None  # a store passed in is never the manager's
        await connect_one(manager, sim, "ann@acme.io")
    assert {r.status for r in sim.requests} == {200}  # the key given, not the variable's


# -- the workspace --------------------------------------------------------------------------------

async def test_instantly_workspace_makes_two_keys_share_one_budget(sim: Simulator) -> None:
    """Two keys of one workspace: with ``INSTANTLY_WORKSPACE`` both spend one init budget (one
    init a minute here, so the second start finds it spent); without it, each key has its
    own."""
    workspace = sim.add_workspace("acme")
    second_key = sim.add_api_key(workspace)
    limits = {"init_limit": RateLimit(1, per=60), "ip_init_limit": RateLimit(100, per=60)}

    async def second_start_gets_a_slot(**shared: str) -> bool:
        async with OAuthManager.from_env(env_of(sim, workspace.api_key, **shared), **limits) as a, \
                OAuthManager.from_env(env_of(sim, second_key, **shared), **limits) as b:
            await a.start("google", timeout=0)
            try:
                await b.start("google", timeout=0)
            except StartTimeoutError:
                return False
            return True

    assert await second_start_gets_a_slot(INSTANTLY_WORKSPACE="acme-shared") is False
    assert await second_start_gets_a_slot() is True


# -- the store ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "", "memory", "MEMORY", " memory "])
def test_memory_is_the_default_store(value: str | None) -> None:
    assert parse_store(None if value is None else value.strip() or None).kind == "memory"


async def test_a_sqlite_url_builds_a_store_the_manager_owns_and_closes(
    sim: Simulator, tmp_path: Path
) -> None:
    workspace = sim.add_workspace("acme")
    path = tmp_path / "instantly.db"
    manager = OAuthManager.from_env(
        env_of(sim, workspace.api_key, INSTANTLY_STORE=f"sqlite://{path}"), poll_interval=0.05)
    store = manager._owned_store
    assert isinstance(store, SQLiteStore) and store.path == str(path)
    async with manager:
        await connect_one(manager, sim, "ann@acme.io")
        assert await store.blocked_for(["any"]) == 0  # open while the manager is
    assert path.exists()  # the sessions' registry lived there
    with pytest.raises(ClientStateError):
        await store.blocked_for(["any"])  # closed with the manager


async def test_a_store_passed_in_stays_the_callers(sim: Simulator, tmp_path: Path) -> None:
    workspace = sim.add_workspace("acme")
    async with SQLiteStore(tmp_path / "mine.db") as store:
        async with OAuthManager.from_env(env_of(sim, workspace.api_key), store=store,
                                         poll_interval=0.05) as manager:
            assert manager._owned_store is None
            await connect_one(manager, sim, "ann@acme.io")
        assert await store.blocked_for(["any"]) == 0  # still open: the caller closes it


@pytest.mark.parametrize(("value", "expected"), [
    ("./instantly.db", "cwd/instantly.db"),
    ("data/instantly.db", "cwd/data/instantly.db"),
    ("~/instantly.db", "home/instantly.db"),
    ("sqlite:////{tmp}/abs.db", "abs.db"),  # four slashes, as SQLAlchemy writes an absolute one
])
def test_a_file_path_is_a_sqlite_store(
    value: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cwd" / "data").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    spec = parse_store(value.replace("/{tmp}", str(tmp_path)))
    assert spec.kind == "sqlite"
    assert Path(spec.target).resolve() == (tmp_path / expected).resolve()


@pytest.mark.parametrize(("value", "says"), [
    ("memroy", "INSTANTLY_STORE must be memory, redis://HOST[:PORT][/DB], rediss://..., "
               "sqlite:///ABSOLUTE/PATH, or a file path holding a '/': got 'memroy'"),
    (f"postgres://app:{SECRET}@db/app", "postgres:// is none of them"),
    ("sqlite://relative.db", "sqlite:///ABSOLUTE/PATH"),
    ("{tmp}/no-such-dir/instantly.db", "a directory that does not exist"),
    ("{tmp}", "names a directory"),
    (f"redis://:{SECRET}@db.example.com:notaport/0", "not a readable Redis URL "
                                                      "(redis://db.example.com:notaport/0)"),
    (f"redis://:{SECRET}@/0", "names no Redis host"),
    (f"rediss://:{SECRET}@db.example.com:6379/zero", "must be a database number"),
    (f"redis://db.example.com:6379/0?password={SECRET}", None),  # valid: the query is redis-py's
])
def test_a_malformed_store_is_named_with_what_is_expected_and_no_secret(
    value: str, says: str | None, tmp_path: Path
) -> None:
    value = value.replace("{tmp}", str(tmp_path))
    if says is None:
        spec = parse_store(value)
        assert spec.kind == "redis" and SECRET not in spec.describe() + repr(spec)
        return
    with pytest.raises(EnvironmentVariableError) as caught:
        OAuthManager.from_env({KEY: "k" * 20, "INSTANTLY_STORE": value})
    assert caught.value.variable == "INSTANTLY_STORE"
    assert says in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_a_redis_url_builds_a_store_the_manager_owns_and_closes(
    sim: Simulator, redis_server: RedisServer
) -> None:
    """The manager's sessions go through the real Redis (its registry keys are there while it
    runs), and its aclose() closes the store's connection pool: Redis sees its clients go."""
    import redis.asyncio as aioredis  # noqa: PLC0415 - the redis extra

    from instantly_oauth_async.redis import RedisStore  # noqa: PLC0415

    workspace = sim.add_workspace("acme")
    async with aioredis.Redis.from_url(redis_server.url) as watcher:
        await watcher.flushall()

        async def clients() -> int:
            return len(await watcher.client_list()) - 1  # all but the watcher

        before = await clients()
        manager = OAuthManager.from_env(
            env_of(sim, workspace.api_key, INSTANTLY_STORE=redis_server.url), poll_interval=0.05)
        assert isinstance(manager._owned_store, RedisStore)
        async with manager:
            await connect_one(manager, sim, "ann@acme.io")
            assert await clients() > before
            assert [k async for k in watcher.scan_iter("iox:*")]
        # Redis drops a closed client as it reads the close: look again until it has (bounded)
        with anyio.fail_after(5):
            for _ in range(500):
                if await clients() <= before:
                    break
                await anyio.sleep(0.01)
        assert await clients() == before


def test_a_redis_url_without_the_redis_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis fails, as when not installed
    monkeypatch.delitem(sys.modules, "redis.asyncio", raising=False)
    monkeypatch.delitem(sys.modules, "instantly_oauth_async.redis", raising=False)
    with pytest.raises(EnvironmentVariableError) as caught:
        OAuthManager.from_env({KEY: "k" * 20, "INSTANTLY_STORE": f"redis://:{SECRET}@h:6379/0"})
    assert caught.value.variable == "INSTANTLY_STORE"
    assert "pip install 'instantly-oauth-async[redis]'" in str(caught.value)
    assert SECRET not in str(caught.value)


# -- other variables ------------------------------------------------------------------------------

def test_unknown_instantly_variables_are_named_once_never_their_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    environ = {KEY: "k" * 20, "INSTANTLY_BASEURL": f"https://{SECRET}.example.com",
               "INSTANTLY_CAMPAIGN": SECRET, "OTHER_VARIABLE": "x"}
    with caplog.at_level(logging.WARNING, logger="instantly_oauth_async"):
        OAuthManager.from_env(environ)
    assert [r.getMessage() for r in caplog.records] == [
        "ignored environment variables: INSTANTLY_BASEURL (did you mean INSTANTLY_BASE_URL?), "
        "INSTANTLY_CAMPAIGN; known: INSTANTLY_API_KEY, INSTANTLY_BASE_URL, INSTANTLY_WORKSPACE, "
        "INSTANTLY_STORE"]
    assert SECRET not in caplog.text


def test_a_base_url_with_an_unreadable_port_is_named_without_its_password() -> None:
    with pytest.raises(EnvironmentVariableError) as caught:
        OAuthManager.from_env({KEY: "k" * 20,
                               "INSTANTLY_BASE_URL": f"https://u:{SECRET}@h.example:port"})
    assert str(caught.value) == "INSTANTLY_BASE_URL is not a URL: got 'https://h.example:port'"
