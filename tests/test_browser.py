"""The example apps, end to end in a real headless Chromium (Debian's, driven by Playwright).

The browser signs in (the app's stand-in sign-in), clicks Connect, lands on the simulator's consent
page in a popup, allows, and the app's own page shows "Connected <email>" from its
server-sent-events stream: the aiohttp example in this process; then both examples as two worker
processes on one SQLite file, one of them killed mid-flow and started again.
"""

from __future__ import annotations

import shutil
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from playwright.async_api import Page, async_playwright

from examples.aiohttp_app import make_app
from instantly_oauth_async import OAuthManager
from instantly_oauth_async.testing import Simulator
from tests._webflow_workers import PASSWORD as WORKERS_PASSWORD
from tests._webflow_workers import worker

pytestmark = pytest.mark.anyio
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = WORKERS_PASSWORD  # the stand-in sign-in's password (tests/test_example_workers too)


@pytest.mark.timing  # a browser's own event-loop traffic is slow under asyncio debug mode
@pytest.mark.timeout(120)
async def test_connect_button_shows_the_connected_mailbox(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    async with OAuthManager(workspace.api_key, base_url=sim.url, poll_interval=0.1) as manager:
        runner = web.AppRunner(make_app(manager, password=PASSWORD), shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                try:
                    page = await browser.new_page()
                    await page.goto(url)
                    await page.fill("#user", "ann")
                    await page.fill("#password", PASSWORD)
                    await page.click("#sign-in")
                    await page.wait_for_selector("#connect")
                    async with page.expect_popup() as popup_info:
                        await page.click("#connect")
                    consent = await popup_info.value
                    await consent.wait_for_selector("#allow")
                    assert "Sign in with Google Workspace" in await consent.title()
                    await consent.fill("#email", "ann@acme.io")
                    await consent.click("#allow")
                    await page.wait_for_selector("text=Connected ann@acme.io", timeout=20_000)
                    assert await page.text_content("#result") == "Connected ann@acme.io"
                finally:
                    await browser.close()
        finally:
            await runner.cleanup()
    assert sim.accounts  # the mailbox really is connected on the server's side


# -- both examples, two worker processes on one SQLite file (issues 22 and 23) -------------------


async def _connect_on(page: Page, base: str) -> tuple[Page, dict[str, Any]]:
    """Sign in at ``base``, click Connect: the consent page (a popup) and the app's answer."""
    await page.goto(f"{base}/")
    await page.fill("#user", "ann")
    await page.fill("#password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_selector("#connect")
    async with page.expect_popup() as popup, page.expect_response(
            lambda r: r.url == f"{base}/connect") as answer:
        await page.click("#connect")
    consent = await popup.value
    await consent.wait_for_selector("#allow")
    session: dict[str, Any] = await (await answer.value).json()
    return consent, session


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["aiohttp", "fastapi"])
async def test_two_workers_on_sqlite_one_killed_mid_flow_and_restarted(
    kind: str, csim: Simulator, tmp_path: Path
) -> None:
    """The consent starts on worker A; B shows the result page. A is killed with SIGKILL while
    the person is on the consent page; the person allows; B adopts the session (one lease
    later) and its page shows the mailbox; A comes back on its port and the person's own page
    there, whose event stream reconnects, shows it too. Nothing was lost, nothing read twice."""
    key = csim.add_workspace("acme").api_key
    db = str(tmp_path / "app.db")
    async with AsyncExitStack() as stack:
        child_a, a = await stack.enter_async_context(worker(kind, db, csim.url, key))
        _, b = await stack.enter_async_context(worker(kind, db, csim.url, key))
        playwright = await stack.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        stack.push_async_callback(browser.close)
        context = await browser.new_context()  # one person: cookies of 127.0.0.1, any port
        on_a = await context.new_page()
        consent, session = await _connect_on(on_a, a)
        sid = session["session_id"]
        on_b = await context.new_page()
        shown = await on_b.goto(f"{b}{session['result_url']}")  # B watches: no budget spent
        assert shown is not None and shown.status == 200
        with anyio.fail_after(10):  # A, which started the session, polls it
            await csim.wait_for(lambda: any(r.kind == "status" for r in csim.requests))

        child_a.process.send_signal(signal.SIGKILL)  # mid-flow, by its PID
        with anyio.fail_after(15):
            assert await child_a.wait() == -signal.SIGKILL
        await consent.fill("#email", "ann@acme.io")
        await consent.click("#allow")  # while A is down
        await on_b.wait_for_selector("text=Connected ann@acme.io", timeout=20_000)
        assert await on_a.text_content("#result") == "Waiting for you to allow access..."

        port_a = int(a.rsplit(":", 1)[1])
        await stack.enter_async_context(worker(kind, db, csim.url, key, port=port_a))
        await on_a.wait_for_selector("text=Connected ann@acme.io", timeout=20_000)
        assert await on_a.text_content("#result") == "Connected ann@acme.io"
    assert "ann@acme.io" in csim.accounts
    reads = [r.status for r in csim.requests if r.kind == "status" and r.path.endswith(sid)]
    assert 404 not in reads  # the one-time answer was read once
    assert sum(1 for r in csim.requests if r.kind == "init") == 1
