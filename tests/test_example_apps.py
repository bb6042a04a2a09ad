"""What the example web apps do around ``POST /connect``, for both (aiohttp and FastAPI), served on
loopback against the simulator and driven over HTTP.

Both mount the library's connect flow (``instantly_oauth_async.web``; its own tests are
tests/test_webflow.py): only a signed-in user of the app's stand-in sign-in may connect, a user
who asks again gets the connection they already have, the entries are bounded in all and leave
as soon as their session is decided, fails or expires.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import anyio
import pytest
import uvicorn
from aiohttp import web

from examples import _shared, aiohttp_app, fastapi_app
from instantly_oauth_async import MemoryStore, OAuthManager, PendingConnection
from instantly_oauth_async.testing import Simulator, Workspace
from instantly_oauth_async.web import ConnectFlow

pytestmark = pytest.mark.anyio
PASSWORD = "a shared secret for the tests"  # the stand-in sign-in's password


@dataclass
class Served:
    url: str
    workspace: Workspace
    flow: Callable[[], ConnectFlow]  # the app's (FastAPI makes it in its lifespan)

    def inits(self, sim: Simulator) -> int:
        return sum(1 for r in sim.requests if r.kind == "init")

    async def pending(self) -> int:
        return await self.flow().claims.count("connect")

    async def settled(self) -> None:
        """The app's watchers have done their part (dropped a decided session's entry)."""
        with anyio.fail_after(10):
            for task in list(self.flow()._watchers):
                await task


@asynccontextmanager
async def serve(kind: str, sim: Simulator, *, max_pending: int = 100) -> AsyncIterator[Served]:
    workspace = sim.add_workspace("acme")
    if kind == "aiohttp":
        async with OAuthManager(workspace.api_key, base_url=sim.url, poll_interval=0.05,
                                store=MemoryStore()) as m:
            app = aiohttp_app.make_app(m, password=PASSWORD, max_pending=max_pending)
            runner = web.AppRunner(app, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            try:
                yield Served(f"http://127.0.0.1:{runner.addresses[0][1]}", workspace,
                             lambda: app[aiohttp_app.FLOW])
            finally:
                await runner.cleanup()
        return
    fast = fastapi_app.make_app(workspace.api_key, base_url=sim.url, password=PASSWORD,
                                max_pending=max_pending, poll_interval=0.05, store=MemoryStore())
    server = uvicorn.Server(uvicorn.Config(fast, log_level="warning", lifespan="on"))
    listener = socket.create_server(("127.0.0.1", 0))  # listening now: requests wait in backlog
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [listener])
            try:
                yield Served(f"http://127.0.0.1:{listener.getsockname()[1]}", workspace,
                             lambda: fast.state.flow)
            finally:
                server.should_exit = True
    finally:
        listener.close()


@pytest.fixture(params=["aiohttp", "fastapi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def signed_in(served: Served, user: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A browser of ``user``, signed in at the app's stand-in sign-in form."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        form = {"user": user, "password": PASSWORD}
        async with http.post(f"{served.url}/login", data=form) as page:  # then 303 to /
            assert page.status == 200
            assert 'id="connect"' in await page.text()
        yield http


def same_site(served: Served) -> dict[str, str]:
    """What a browser sends with the page's own fetch("/connect", {method: "POST"})."""
    return {"Origin": served.url}


async def connect(http: aiohttp.ClientSession, served: Served) -> dict[str, str]:
    async with http.post(f"{served.url}/connect", headers=same_site(served)) as answer:
        assert answer.status == 200, await answer.text()
        body: dict[str, str] = await answer.json()
        return body


async def pending_of(served: Served, session: dict[str, str]) -> PendingConnection:
    return await served.flow().attach(session["session_id"])


async def test_connect_refuses_who_has_not_signed_in_and_spends_nothing(
    kind: str, sim: Simulator
) -> None:
    async with serve(kind, sim) as served, aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        async with http.get(f"{served.url}/") as page:  # the sign-in form, no Connect button
            text = await page.text()
            assert page.status == 200 and 'id="connect"' not in text and 'name="password"' in text
        async with http.post(f"{served.url}/connect", headers=same_site(served)) as answer:
            assert answer.status == 401
        forged = {"user": "ann.0123456789abcdef"}  # a cookie the app did not sign
        async with http.post(f"{served.url}/connect", cookies=forged,
                             headers=same_site(served)) as answer:
            assert answer.status == 401
        wrong = {"user": "ann", "password": "guess"}
        async with http.post(f"{served.url}/login", data=wrong, allow_redirects=False) as page:
            assert page.status == 403 and "user" not in page.cookies
        async with http.post(f"{served.url}/connect", headers=same_site(served)) as answer:
            assert answer.status == 401
        async with http.get(f"{served.url}/events/anything") as stream:
            assert stream.status == 401
        assert await served.pending() == 0
    assert served.inits(sim) == 0 and sim.sessions == {}  # no init reached the server


async def test_a_user_who_asks_again_gets_the_connection_they_have(
    kind: str, sim: Simulator
) -> None:
    async with serve(kind, sim) as served, signed_in(served, "ann") as ann:
        async with anyio.create_task_group() as group:  # two tabs at once, then a third
            answers: list[dict[str, str]] = []

            async def tab() -> None:
                answers.append(await connect(ann, served))

            group.start_soon(tab)
            group.start_soon(tab)
        answers.append(await connect(ann, served))
        assert len({json.dumps(a, sort_keys=True) for a in answers}) == 1
        assert served.inits(sim) == 1 and len(sim.sessions) == 1
        assert await served.pending() == 1
        async with signed_in(served, "bob") as bob:
            theirs = await connect(bob, served)
            assert theirs["session_id"] != answers[0]["session_id"]
            # bob cannot watch ann's session, even with the link ann was given
            for path in (f"/events/{answers[0]['session_id']}", answers[0]["events_url"]):
                async with bob.get(f"{served.url}{path}") as stream:
                    assert stream.status == 404
            async with ann.post(f"{served.url}/connect",  # another site's page, ann's cookie
                                headers={"Origin": "https://evil.example"}) as answer:
                assert answer.status == 403
        assert served.inits(sim) == 2 and await served.pending() == 2


async def test_pending_connections_are_bounded_in_all(kind: str, sim: Simulator) -> None:
    async with serve(kind, sim, max_pending=1) as served, signed_in(served, "ann") as ann, \
            signed_in(served, "bob") as bob:
        session = await connect(ann, served)
        async with bob.post(f"{served.url}/connect", headers=same_site(served)) as answer:
            assert answer.status == 503  # full: try again later
        assert served.inits(sim) == 1
        pending = await pending_of(served, session)
        sim.complete(session["session_id"], "ann@acme.io")
        with anyio.fail_after(10):
            assert (await pending).ok
        await served.settled()
        assert await served.pending() == 0
        await connect(bob, served)  # a slot came back
        assert served.inits(sim) == 2


async def test_an_entry_nobody_watches_leaves_when_its_session_is_decided(
    kind: str, sim: Simulator
) -> None:
    async with serve(kind, sim) as served, signed_in(served, "ann") as ann:
        session = await connect(ann, served)
        pending = await pending_of(served, session)
        sim.complete(session["session_id"], "ann@acme.io")
        with anyio.fail_after(10):
            result = await pending
        assert result.ok and result.email == "ann@acme.io"
        await served.settled()
        assert await served.pending() == 0
        again = await connect(ann, served)  # decided: asking again starts a new one
        assert again["session_id"] != session["session_id"]


async def test_an_entry_leaves_when_its_session_expires_and_the_stream_says_so(
    kind: str, sim: Simulator
) -> None:
    async with serve(kind, sim) as served, signed_in(served, "ann") as ann:
        session = await connect(ann, served)
        with anyio.fail_after(10):
            async with ann.get(f"{served.url}{session['events_url']}") as stream:
                assert stream.status == 200  # streaming from here on
                sim.expire(session["session_id"])
                body = (await stream.read()).decode()
        assert json.loads(body.split("data: ", 1)[1]) == {
            "ok": False, "email": None, "reason": "Session expired"}
        await served.settled()
        assert await served.pending() == 0


async def test_an_entry_leaves_when_its_session_cannot_start(kind: str, sim: Simulator) -> None:
    async with serve(kind, sim) as served, signed_in(served, "ann") as ann:
        sim.revoke(served.workspace)  # the API key stops working: the init gets a 401
        async with ann.post(f"{served.url}/connect", headers=same_site(served)) as answer:
            assert answer.status == 503
            assert "UnauthorizedError" in await answer.text()
        assert await served.pending() == 0


def test_both_apps_share_one_sign_in_pages_and_configuration() -> None:
    """The stand-in sign-in, the pages and the configuration (``OAuthManager.from_env`` or the
    simulator) live once, in examples/_shared.py, so the two apps cannot drift apart (the flow
    itself is the library's)."""
    for name in ("Login", "manager_for_this_run", "COOKIE", "LOGIN_PAGE", "PAGE"):
        assert getattr(aiohttp_app, name) is getattr(fastapi_app, name) \
            is getattr(_shared, name), name


# -- aiohttp only: the pages that name a session find it with manager.attach() -------------------


@asynccontextmanager
async def aiohttp_worker(manager: OAuthManager) -> AsyncIterator[str]:
    """One worker of the aiohttp app around ``manager``, served on loopback: its base URL."""
    runner = web.AppRunner(aiohttp_app.make_app(manager, password=PASSWORD), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_another_worker_streams_the_result_of_a_session_this_one_started(
    sim: Simulator,
) -> None:
    """Two workers (two managers sharing one store, as two processes share a RedisStore): ann
    connects on the first, her link is served by the second, which never saw her session."""
    workspace = sim.add_workspace("acme")
    store = MemoryStore()
    async with OAuthManager(workspace.api_key, base_url=sim.url, store=store,
                            poll_interval=0.05) as first_manager, \
            OAuthManager(workspace.api_key, base_url=sim.url, store=store,
                         poll_interval=0.05) as second_manager, \
            aiohttp_worker(first_manager) as first, aiohttp_worker(second_manager) as second, \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as ann:
        form = {"user": "ann", "password": PASSWORD}
        async with ann.post(f"{first}/login", data=form) as page:
            assert page.status == 200
        async with ann.post(f"{first}/connect", headers={"Origin": first}) as answer:
            session = await answer.json()
        async with ann.get(f"{second}{session['result_url']}") as page:
            assert page.status == 200 and 'id="result"' in await page.text()
        with anyio.fail_after(10):
            async with ann.get(f"{second}{session['events_url']}") as stream:  # the cookie too
                assert stream.status == 200
                sim.complete(session["session_id"], "ann@acme.io")
                body = (await stream.read()).decode()
        assert json.loads(body.split("data: ", 1)[1]) == {
            "ok": True, "email": "ann@acme.io", "reason": "success"}
        assert second_manager.stats().requests == {}  # it waited on the registry, read nothing


async def test_a_link_to_no_session_of_the_user_gets_a_clear_404_page(sim: Simulator) -> None:
    async with serve("aiohttp", sim) as served, signed_in(served, "ann") as ann:
        tag = served.flow().tag("ann", "no-such-session")  # a well-signed link
        for path in (f"/result/no-such-session?tag={tag}", f"/events/no-such-session?tag={tag}",
                     "/result/no-such-session?tag=forged", "/result/no-such-session"):
            async with ann.get(f"{served.url}{path}") as page:
                assert page.status == 404, path
                assert page.content_type == "text/html"
                assert "No such session" in await page.text()
        async with aiohttp.ClientSession() as stranger, stranger.get(  # no cookie: sign in
                f"{served.url}/result/no-such-session?tag={tag}") as page:
            assert page.status == 401
    assert served.inits(sim) == 0
