"""The aiohttp example, end to end in a real headless Chromium (Debian's, driven by Playwright).

The browser signs in (the app's stand-in sign-in), clicks Connect, lands on the simulator's consent
page in a popup, allows, and the app's own page shows "Connected <email>" from its
server-sent-events stream.
"""

from __future__ import annotations

import shutil

import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from examples.aiohttp_app import make_app
from instantly_oauth_async import OAuthManager
from instantly_oauth_async.testing import Simulator

pytestmark = pytest.mark.anyio
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "a shared secret for the tests"  # the stand-in sign-in's password


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
