"""The FastAPI example served by a real uvicorn on loopback, driven over HTTP: in this process,
and as its own process run the ways its docstring tells people to, where only the installed
library is importable (not this checkout's ``examples`` package)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import aiohttp
import anyio
import pytest
import uvicorn

from examples.fastapi_app import make_app
from instantly_oauth_async.testing import Simulator
from tests._processes import as_installed, child_env, running
from tests._tree import ROOT

pytestmark = pytest.mark.anyio
PASSWORD = "a shared secret for the tests"  # the stand-in sign-in's password
UVICORN_URL = r"Uvicorn running on (http://127\.0\.0\.1:\d+)"


async def sign_in(http: aiohttp.ClientSession, base: str) -> None:
    form = {"user": "ann", "password": PASSWORD}
    async with http.post(f"{base}/login", data=form) as page:
        assert page.status == 200
        assert "Connect mailbox" in await page.text()


async def test_connect_then_the_event_stream_says_connected(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    app = make_app(workspace.api_key, base_url=sim.url, password=PASSWORD, poll_interval=0.05)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    listener = socket.create_server(("127.0.0.1", 0))  # listening now: requests wait in backlog
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    async with anyio.create_task_group() as group:
        group.start_soon(server.serve, [listener])
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await sign_in(http, base)
            async with http.post(f"{base}/connect", headers={"Origin": base}) as answer:
                session = await answer.json()
            with anyio.fail_after(10):
                async with http.get(f"{base}{session['events_url']}") as stream:
                    sim.complete(sim.session_for(session["auth_url"]).session_id, "ann@acme.io")
                    body = (await stream.read()).decode()
        server.should_exit = True
    listener.close()
    data = json.loads(body.split("data: ", 1)[1])
    assert data == {"ok": True, "email": "ann@acme.io", "reason": "success"}


async def test_python_runs_the_file_from_any_directory(tmp_path: Path) -> None:
    """``APP_PASSWORD=... python path/to/fastapi_app.py [PORT]``, from a directory of its own,
    without INSTANTLY_API_KEY: the app serves against its own simulator, whose consent page this
    test submits as the person would."""
    cwd, lib = tmp_path / "cwd", tmp_path / "lib"
    cwd.mkdir()
    lib.mkdir()
    argv = as_installed(lib, "file", str(ROOT / "examples" / "fastapi_app.py"), "0")
    async with running(argv, cwd=cwd, env=child_env(APP_PASSWORD=PASSWORD)) as app:
        with anyio.fail_after(30):
            base = re.search(UVICORN_URL, await app.stderr.wait_for(UVICORN_URL))
        assert base is not None
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            same_site = {"Origin": base[1]}
            async with http.post(f"{base[1]}/connect", headers=same_site) as answer:
                assert answer.status == 401
            await sign_in(http, base[1])
            async with http.post(f"{base[1]}/connect", headers=same_site) as answer:
                session = await answer.json()
            with anyio.fail_after(30):
                async with http.get(f"{base[1]}{session['events_url']}") as stream:
                    consent = {"action": "allow", "email": "ann@acme.io"}
                    async with http.post(session["auth_url"], data=consent) as page:
                        assert page.status == 200
                    body = (await stream.read()).decode()
    assert json.loads(body.split("data: ", 1)[1])["email"] == "ann@acme.io"
    assert PASSWORD not in app.stdout.text() + app.stderr.text()


async def test_uvicorn_serves_it_from_the_examples_directory(tmp_path: Path) -> None:
    """``cd examples && APP_PASSWORD=... uvicorn fastapi_app:app``."""
    argv = as_installed(tmp_path, "module", "uvicorn", "fastapi_app:app", "--port", "0")
    env = child_env(APP_PASSWORD=PASSWORD)
    async with running(argv, cwd=ROOT / "examples", env=env) as app:
        with anyio.fail_after(30):
            base = re.search(UVICORN_URL, await app.stderr.wait_for(UVICORN_URL))
        assert base is not None
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{base[1]}/") as page:
                assert page.status == 200 and 'name="password"' in await page.text()
            same_site = {"Origin": base[1]}
            async with http.post(f"{base[1]}/connect", headers=same_site) as answer:
                assert answer.status == 401
            await sign_in(http, base[1])
            async with http.post(f"{base[1]}/connect", headers=same_site) as answer:
                assert answer.status == 200
                assert (await answer.json())["auth_url"].startswith("http://127.0.0.1:")
    assert PASSWORD not in app.stdout.text() + app.stderr.text()
