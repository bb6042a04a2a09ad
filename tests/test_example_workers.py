"""The aiohttp example as a real deployment runs it: two worker processes sharing a RedisStore
(``INSTANTLY_STORE=redis://... python examples/aiohttp_app.py PORT``, each started here and
stopped by its PID),
a real redis-server, the simulator on loopback, and a real headless Chromium (Debian's, driven
by Playwright) playing the person.

The person starts on worker A and allows on the consent page; the result page comes from worker
B, which never saw the session start. Then the same with worker A stopped (SIGTERM, as a restart
does, or SIGKILL, as a crash does) while the person is on the consent page and started again on
its port: B adopts the session (at once, or one lease later), and both B's result page and the
person's own page on A, whose event stream reconnects to the new A, show the connected mailbox.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from playwright.async_api import Browser, Page, Response, async_playwright

from instantly_oauth_async.testing import Simulator
from tests._processes import Child, _signal, running
from tests._redis import RedisServer
from tests._tree import ROOT
from tests._webflow_workers import example_env
from tests.test_browser import CHROMIUM, FLAGS, PASSWORD

pytestmark = pytest.mark.anyio
LEASE = 1.5  # seconds a crashed worker's sessions wait before another takes them over


@asynccontextmanager
async def worker(redis: RedisServer, sim: Simulator, api_key: str, port: int = 0
                 ) -> AsyncIterator[tuple[Child, str]]:
    """One worker process, as its docstring starts it; yields it and its base URL."""
    argv = [sys.executable, str(ROOT / "examples" / "aiohttp_app.py"), str(port),
            "--session-lease", str(LEASE), "--poll-interval", "0.1"]
    env = example_env(INSTANTLY_API_KEY=api_key, INSTANTLY_BASE_URL=sim.url,
                      INSTANTLY_STORE=redis.url, APP_PASSWORD=PASSWORD)
    async with running(argv, cwd=ROOT, env=env) as child:
        with anyio.fail_after(30):
            line = await child.stdout.wait_for(r"^http://127\.0\.0\.1:\d+ ")
        assert "shared through Redis" in line
        yield child, line.split()[0]
    assert "Traceback" not in child.stderr.text(), child.stderr.text()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            await browser.close()


async def connect_on(page: Page, base: str) -> tuple[Page, dict[str, Any]]:
    """Sign in at ``base``, click Connect: the consent page (a popup) and the app's answer."""
    await page.goto(f"{base}/")
    await page.fill("#user", "ann")
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_selector("#connect")

    def is_connect(response: Response) -> bool:
        return response.url == f"{base}/connect"

    async with page.expect_popup() as popup, page.expect_response(is_connect) as answer:
        await page.click("#connect")
    consent = await popup.value
    await consent.wait_for_selector("#allow")
    assert "Sign in with Google Workspace" in await consent.title()
    session: dict[str, Any] = await (await answer.value).json()
    return consent, session


async def allow(consent: Page, email: str) -> None:
    await consent.fill("#email", email)
    await consent.click("#allow")
    await consent.wait_for_selector("#done")


def status_reads(sim: Simulator, session_id: str) -> list[int]:
    return [r.status for r in sim.requests if r.kind == "status" and r.path.endswith(session_id)]


@pytest.mark.timeout(120)
async def test_the_result_of_a_consent_started_on_one_worker_comes_from_the_other(
    csim: Simulator, redis_server: RedisServer,
) -> None:
    key = csim.add_workspace("acme").api_key
    async with worker(redis_server, csim, key) as (_, a), worker(redis_server, csim, key) as (
            _, b), chromium() as browser:
        context = await browser.new_context()  # one person: cookies of 127.0.0.1, any port
        consent, session = await connect_on(await context.new_page(), a)
        await allow(consent, "ann@acme.io")
        on_b = await context.new_page()
        shown = await on_b.goto(f"{b}{session['result_url']}")
        assert shown is not None and shown.status == 200
        await on_b.wait_for_selector("text=Connected ann@acme.io", timeout=20_000)
        assert await on_b.text_content("#result") == "Connected ann@acme.io"

        # B's clear answer for a link to no session of hers
        missing = await on_b.goto(f"{b}/result/no-such-session?tag=forged")
        assert missing is not None and missing.status == 404
        assert await on_b.text_content("h1") == "No such session"
    assert "ann@acme.io" in csim.accounts  # the mailbox really is connected on the server's side
    assert 404 not in status_reads(csim, session["session_id"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_worker_restarted_mid_flow_still_delivers_the_result(
    csim: Simulator, redis_server: RedisServer, stop: signal.Signals,
) -> None:
    key = csim.add_workspace("acme").api_key
    async with AsyncExitStack() as stack:
        child_a, a = await stack.enter_async_context(worker(redis_server, csim, key))
        _, b = await stack.enter_async_context(worker(redis_server, csim, key))
        browser = await stack.enter_async_context(chromium())
        context = await browser.new_context()
        on_a = await context.new_page()
        consent, session = await connect_on(on_a, a)
        session_id = session["session_id"]
        on_b = await context.new_page()
        await on_b.goto(f"{b}{session['result_url']}")  # B watches: no API budget spent
        with anyio.fail_after(10):  # A, which started the session, polls it
            await csim.wait_for(lambda: bool(status_reads(csim, session_id)))

        _signal(child_a.process, stop)  # mid-flow: the person is on the consent page
        with anyio.fail_after(15):
            code = await child_a.wait()
        assert code == (0 if stop == signal.SIGTERM else -signal.SIGKILL), child_a.stderr.text()
        reads_by_a = len(status_reads(csim, session_id))
        await allow(consent, "ann@acme.io")  # while A is down

        await on_b.wait_for_selector("text=Connected ann@acme.io", timeout=10 * LEASE * 1000)
        assert len(status_reads(csim, session_id)) > reads_by_a  # B adopted it and read the answer
        assert await on_a.text_content("#result") == "Waiting for you to allow access..."
        port_a = int(a.rsplit(":", 1)[1])
        await stack.enter_async_context(worker(redis_server, csim, key, port=port_a))
        # the person's own page on A: its stream reconnects to the new A, which attaches
        await on_a.wait_for_selector("text=Connected ann@acme.io", timeout=20_000)
        assert await on_a.text_content("#result") == "Connected ann@acme.io"
    assert "ann@acme.io" in csim.accounts
    assert 404 not in status_reads(csim, session_id)  # the one-time answer was read once


@pytest.mark.parametrize("kind", ["aiohttp", "fastapi"])
@pytest.mark.parametrize("variable", ["INSTANTLY_STORE", "INSTANTLY_BASE_URL"])
async def test_a_worker_without_an_api_key_refuses_a_shared_store_or_another_server(
    kind: str, variable: str, redis_server: RedisServer, sim: Simulator,
) -> None:
    """Without INSTANTLY_API_KEY a worker would serve a simulator of its own, which no other
    worker could reach (and not the server INSTANTLY_BASE_URL names): it says so, naming the
    variable, instead of starting."""
    value = redis_server.url if variable == "INSTANTLY_STORE" else sim.url
    if kind == "aiohttp":
        argv = [sys.executable, str(ROOT / "examples" / "aiohttp_app.py"), "0"]
    else:
        argv = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", "0"]
    env = example_env(APP_PASSWORD=PASSWORD, **{variable: value})
    cwd = ROOT if kind == "aiohttp" else ROOT / "examples"
    async with running(argv, cwd=cwd, env=env) as refused:
        with anyio.fail_after(30):
            assert await refused.wait() != 0
    message = f"{variable} needs INSTANTLY_API_KEY: without it the app runs the built-in simulator"
    text = refused.stderr.text()
    if kind == "aiohttp":  # one line, and nothing else
        assert text.strip().splitlines() == [f"aiohttp_app: {message}, in one process"], text
    else:  # uvicorn reports a failed lifespan with its traceback; the error ends it
        assert f"EnvironmentVariableError: {message}" in text, text
    assert sim.requests == []
