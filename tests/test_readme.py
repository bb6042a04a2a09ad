"""Every ```python block of the README runs, in order, in one namespace, like a notebook.

The blocks are written against the real API. Here the library's default base URL (and, for the
manager, its limits) point at a compressed simulator, ``api_key`` is a workspace key of it, the
helpers the blocks call (``redirect_the_person_to``, ``show_url``) play the person, and the fleet
block's Redis URL is a redis-server of the test's own.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from instantly_oauth_async import InstantlyClient, OAuthManager, OAuthSession, RateLimit
from instantly_oauth_async.testing import Simulator, SimulatorLimits
from tests._redis import RedisServer

pytestmark = pytest.mark.anyio
README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
FLEET_URL = "redis://10.0.0.5:6379/0"
SQLITE_PATH = "/var/lib/myapp/instantly.db"


@pytest.fixture
def redis_url() -> Iterator[str]:
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def test_the_readme_has_the_blocks_this_test_knows() -> None:
    assert len(BLOCKS) >= 4
    assert any(FLEET_URL in block for block in BLOCKS)
    assert any(SQLITE_PATH in block for block in BLOCKS)


@pytest.mark.timeout(120)
async def test_every_python_block_of_the_readme_runs(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
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

        namespace: dict[str, Any] = {
            "api_key": workspace.api_key, "redirect_the_person_to": redirect_the_person_to,
            "show_url": show_url,
        }
        for number, block in enumerate(BLOCKS):
            source = block.replace(FLEET_URL, redis_url).replace(
                SQLITE_PATH, str(tmp_path / "instantly.db"))
            code = compile(source, f"README.md python block {number}", "exec",
                           flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)  # noqa: S307 - our own README, on purpose
            if result is not None:
                await result
        assert people == 200  # the bulk block's people all came
        assert namespace["result"].ok
