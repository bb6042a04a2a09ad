"""The default store's guard (issue 22): a manager on an in-process store that finds another
process of the host using the same workspace on one of its own says so, once, naming the fix;
one process never warns about itself. Real processes, real advisory locks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from instantly_oauth_async import OAuthManager
from instantly_oauth_async.sqlite import SQLiteStore
from tests._redis import _die_with_parent
from tests._tree import ROOT

pytestmark = pytest.mark.anyio

_CHILD = """
import asyncio, sys
from instantly_oauth_async import OAuthManager
async def main():
    async with OAuthManager(sys.argv[1], base_url="http://127.0.0.1:9"):
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


@asynccontextmanager
async def other_process(key: str, runtime: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process of the host with a manager open on the default store."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, key, cwd=ROOT,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent)
    assert process.stdout is not None and process.stdin is not None
    try:
        with anyio.fail_after(30):
            assert await process.stdout.readline() == b"ready\n"
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.communicate()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "another process of this host" in r.getMessage()]


async def test_two_processes_on_one_workspace_each_with_its_own_store_are_told(
    runtime: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    async with other_process("key-a", runtime) as child:
        async with OAuthManager("key-a", base_url="http://127.0.0.1:9"), \
                OAuthManager("key-a", base_url="http://127.0.0.1:9"):
            pass
        (warning,) = warnings_of(caplog)  # once, however many managers
        assert f"pid {child.pid}" in warning and "SQLiteStore" in warning
        assert "RedisStore" in warning and "key-a" not in warning


async def test_one_process_other_workspaces_and_shared_stores_are_not_told(
    runtime: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    async with OAuthManager("key-b", base_url="http://127.0.0.1:9"), \
            OAuthManager("key-b", base_url="http://127.0.0.1:9"):
        pass  # two managers of one process: one store, nothing to say
    async with other_process("key-c", runtime):
        async with OAuthManager("key-b", base_url="http://127.0.0.1:9"):
            pass  # another workspace
        async with SQLiteStore(tmp_path / "shared.db") as store, \
                OAuthManager("key-c", base_url="http://127.0.0.1:9", store=store):
            pass  # a shared store: the budgets are the host's
    assert warnings_of(caplog) == []


async def test_a_process_that_died_leaves_nothing_to_warn_about(
    runtime: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    async with other_process("key-d", runtime) as child:
        child.send_signal(signal.SIGKILL)  # its lock goes with it; its file stays
        await child.wait()
        async with OAuthManager("key-d", base_url="http://127.0.0.1:9"):
            pass
    assert warnings_of(caplog) == []
    assert str(child.pid) not in lock_files(runtime)  # its leftover file was removed


def lock_files(runtime: Path) -> list[str]:
    return [p.stem for p in runtime.rglob("*.lock")]
