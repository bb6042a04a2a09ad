"""Every ```python block of the README and of every page of the site (docs/) runs: a page's
blocks in order, in one namespace, like a notebook, and a comment ``# -> text`` on a line of a
block says what the block prints (the test checks that it printed ``text``).

The blocks are written against the real API. Here the library's default base URL (and, for the
manager, its limits) point at a compressed simulator, ``api_key`` is a workspace key of it (and
``INSTANTLY_API_KEY`` too), the helpers the blocks call (``redirect_the_person_to``,
``show_url``) play the person, and the Redis URL of the fleet blocks is a redis-server of the
test's own. A few pages show fragments of a larger program (docs/LIMITS.md, docs/FLEET.md): the
names they take from it (``manager``, ``http``, ``session_id``, ...) are given to them here.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from instantly_oauth_async import InstantlyClient, OAuthManager, OAuthSession, RateLimit
from instantly_oauth_async.redis import RedisStore
from instantly_oauth_async.testing import Simulator, SimulatorLimits
from tests._redis import RedisServer
from tests._tree import SOURCE

pytestmark = pytest.mark.anyio
README = SOURCE / "README.md"
DOCS = SOURCE / "docs"
FLEET_URL = "redis://10.0.0.5:6379/0"
SQLITE_PATH = "/var/lib/myapp/instantly.db"
PRINTS = re.compile(r"#\s*->\s*(.+?)\s*$", re.M)
# Pages whose person is nobody the blocks name: the test's person allows every session at once.
PEOPLE_COME = {"docs/tutorial.md", "docs/FLEET.md"}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def page_name(path: Path) -> str:
    return path.relative_to(SOURCE).as_posix()


#: Every page with a python block, by its path in the repository: README.md, docs/...
PAGES = {page_name(p): p.read_text(encoding="utf-8") for p in [README, *sorted(DOCS.rglob("*.md"))]
         if python_blocks(p.read_text(encoding="utf-8"))}


class Namespace(dict[str, Any]):
    """The blocks' globals: ``session_id``, when no block set it, is the last started session's
    (docs/FLEET.md's fragment "in any process of the fleet" names one)."""

    def __missing__(self, name: str) -> Any:
        if name == "session_id" and "pending" in self:
            return self["pending"].session.session_id
        raise KeyError(name)


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def test_the_pages_have_the_blocks_this_test_knows() -> None:
    blocks = [b for text in PAGES.values() for b in python_blocks(text)]
    assert len(blocks) >= 18
    assert any(FLEET_URL in block for block in blocks)
    assert any(SQLITE_PATH in block for block in blocks)
    assert set(PAGES) >= {
        "README.md", "docs/tutorial.md", "docs/how-to/testing.md", "docs/FLEET.md",
        "docs/LIMITS.md", "docs/reference/configuration.md"}
    assert sum(len(PRINTS.findall(b)) for b in blocks) >= 5


@contextlib.asynccontextmanager
async def people_who_allow(sim: Simulator) -> AsyncIterator[None]:
    async def allow() -> None:
        while True:
            for session in sim.pending_sessions():
                sim.complete(session.session_id, "ann@acme.io")
            await asyncio.sleep(0.01)

    task = asyncio.create_task(allow())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.timeout(120)
@pytest.mark.parametrize("page", sorted(PAGES))
async def test_every_python_block_of_the_page_runs(
    page: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    text = PAGES[page]
    redis_url = request.getfixturevalue("redis_url") if FLEET_URL in text else FLEET_URL
    async with Simulator(limits=SimulatorLimits().compressed(60)) as sim:
        workspace = sim.add_workspace("readme")
        defaults: dict[str, Any] = {
            "base_url": sim.url, "poll_interval": 0.05,
            "init_limit": RateLimit(75, per=1), "ip_init_limit": RateLimit(150, per=1),
        }
        manager_defaults = OAuthManager.__init__.__kwdefaults__
        client_defaults = InstantlyClient.__init__.__kwdefaults__
        assert manager_defaults is not None and client_defaults is not None
        for name, value in defaults.items():
            monkeypatch.setitem(manager_defaults, name, value)
        monkeypatch.setitem(client_defaults, "base_url", sim.url)
        # OAuthManager.from_env(): the key from the environment, the rest the defaults above
        monkeypatch.setenv("INSTANTLY_API_KEY", workspace.api_key)
        for name in ("INSTANTLY_BASE_URL", "INSTANTLY_WORKSPACE", "INSTANTLY_STORE"):
            monkeypatch.delenv(name, raising=False)
        people = 0

        def redirect_the_person_to(url: str) -> None:
            sim.complete(sim.session_for(url).session_id, "ann@acme.io")

        def show_url(session: OAuthSession) -> None:
            nonlocal people
            people += 1
            sim.complete(session.session_id, f"person{people}@acme.io")

        async with contextlib.AsyncExitStack() as stack:
            namespace = Namespace(
                api_key=workspace.api_key, redirect_the_person_to=redirect_the_person_to,
                show_url=show_url)
            if page == "docs/LIMITS.md":  # a fragment inside an open manager
                namespace["manager"] = await stack.enter_async_context(
                    OAuthManager(workspace.api_key))
                namespace["http"] = await stack.enter_async_context(aiohttp.ClientSession())
                namespace["api"] = sim.url
                namespace["auth"] = {"Authorization": f"Bearer {workspace.api_key}"}
            if page == "docs/FLEET.md":  # names imported before the fragment
                namespace.update(RedisStore=RedisStore, OAuthManager=OAuthManager)
            if page in PEOPLE_COME:
                await stack.enter_async_context(people_who_allow(sim))
            for number, block in enumerate(python_blocks(text)):
                source = block.replace(FLEET_URL, redis_url).replace(
                    SQLITE_PATH, str(tmp_path / "instantly.db"))
                code = compile(source, f"{page} python block {number}", "exec",
                               flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    result = eval(code, namespace, namespace)  # noqa: S307 - our own pages
                    if result is not None:
                        await result
                for expected in PRINTS.findall(source):
                    assert expected in printed.getvalue(), (number, expected, printed.getvalue())
        if "show_url" in text:
            assert people == 200  # the bulk block's people all came
        if "result" in namespace:
            assert namespace["result"].ok
