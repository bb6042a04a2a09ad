"""Worker processes of the example web apps for the multi-worker tests, each started here and
stopped by its PID: the aiohttp example (``python examples/aiohttp_app.py PORT``) and the
FastAPI one (``uvicorn tests._webflow_apps:app``), configured as their docstrings say, by the
environment (``OAuthManager.from_env``: INSTANTLY_API_KEY, INSTANTLY_BASE_URL = the test's
simulator, INSTANTLY_STORE = ``sqlite:///PATH`` or ``redis://...``), with 1.5 s leases."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from tests._processes import Child, child_env, running
from tests._redis import free_port
from tests._tree import ROOT

PASSWORD = "a shared secret for the tests"  # the stand-in sign-in's password
LEASE = 1.5  # seconds a crashed worker's sessions wait before another takes them over


def example_env(**variables: str) -> dict[str, str]:
    """The environment of an example's process: this one's without any INSTANTLY_* variable
    (the examples read them all), plus ``variables``."""
    env = {k: v for k, v in child_env().items() if not k.upper().startswith("INSTANTLY_")}
    env.update(variables)
    return env


@asynccontextmanager
async def worker(kind: str, store: str, sim_url: str, api_key: str, *, port: int = 0,
                 workers: int = 1) -> AsyncIterator[tuple[Child, str]]:
    """One worker (``workers`` under one uvicorn) on ``store`` (a SQLite path or a redis://
    URL); yields the process and its base URL."""
    port = port or free_port()
    redis = store.startswith("redis://")
    env = example_env(INSTANTLY_API_KEY=api_key, INSTANTLY_BASE_URL=sim_url, APP_PASSWORD=PASSWORD,
                      INSTANTLY_STORE=store if redis else f"sqlite://{store}")
    if kind == "aiohttp":
        argv = [sys.executable, str(ROOT / "examples" / "aiohttp_app.py"), str(port),
                "--session-lease", str(LEASE), "--poll-interval", "0.1"]
    else:
        argv = [sys.executable, "-m", "uvicorn", "tests._webflow_apps:app", "--port", str(port),
                "--workers", str(workers), "--timeout-graceful-shutdown", "1"]
    async with running(argv, cwd=ROOT, env=env) as child:
        with anyio.fail_after(60):
            if kind == "aiohttp":
                line = await child.stdout.wait_for(r"^http://127\.0\.0\.1:\d+ ")
            else:
                for n in range(1, workers + 1):  # every worker's lifespan has opened its store
                    await child.stderr.wait_for(r"Application startup complete", nth=n)
                line = await child.stdout.wait_for(r"sessions from")
        # from_env read all three: the key (else the simulator), the base URL and the store
        assert f"sessions from {sim_url}" in line, line
        assert ("shared through Redis" if redis else "shared through SQLite") in line, line
        yield child, f"http://127.0.0.1:{port}"
    text = child.stderr.text()
    assert "Traceback" not in text, text
    assert PASSWORD not in text + child.stdout.text()
    assert not re.search(r"(?i)api[_-]?key\s*[=:]\s*\S{8}", text)
