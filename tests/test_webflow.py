"""The mountable connect flow (``instantly_oauth_async.web``), for aiohttp and for Starlette
(served by a real uvicorn), on loopback against the simulator, driven over HTTP: who may
connect, the guard (one pending connection per user, a cap in all, gone once decided or
expired), the event stream for late and returning subscribers, and the links and the POST
against other users and other sites."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest

from instantly_oauth_async import ConfigurationError, MemoryStore, OAuthManager
from instantly_oauth_async.testing import Simulator, Workspace
from instantly_oauth_async.web import ConnectFlow
from tests._webflow_serve import served

pytestmark = pytest.mark.anyio


class Wall:
    """A wall clock the test moves (the links' lifetime is wall-clock time)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["aiohttp", "starlette"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Setup:
    sim: Simulator
    workspace: Workspace
    manager: OAuthManager
    flow: ConnectFlow
    base: str
    wall: Wall

    def inits(self) -> int:
        return sum(1 for r in self.sim.requests if r.kind == "init")

    async def pending(self, user: str | None = None) -> int:
        return await self.flow.claims.count("connect", user)

    async def settled(self) -> None:
        """Every watcher of this worker has done its part (the drop of a decided claim)."""
        with anyio.fail_after(10):
            for task in list(self.flow._watchers):
                await task


@asynccontextmanager
async def setup(kind: str, sim: Simulator, *, prefix: str = "", **options: Any
                ) -> AsyncIterator[Setup]:
    workspace = sim.add_workspace("acme")
    wall = Wall()
    async with OAuthManager(workspace.api_key, base_url=sim.url, store=MemoryStore(),
                            poll_interval=0.05) as manager, \
            ConnectFlow(manager, secret="s3cret-for-links", wall_clock=wall, **options) as flow, \
            served(kind, flow, prefix=prefix) as base:
        yield Setup(sim, workspace, manager, flow, base, wall)


def as_user(base: str, user: str | None) -> dict[str, str]:
    headers = {"Origin": base}
    if user is not None:
        headers["X-User"] = user
    return headers


async def connect(http: aiohttp.ClientSession, s: Setup, user: str, prefix: str = ""
                  ) -> dict[str, str]:
    async with http.post(f"{s.base}{prefix}/connect", headers=as_user(s.base, user)) as answer:
        assert answer.status == 200, await answer.text()
        body: dict[str, str] = await answer.json()
        return body


def result_of(body: str) -> dict[str, Any]:
    events = [e for e in body.split("\n\n") if e.startswith("event: result")]
    assert len(events) == 1, body
    data: dict[str, Any] = json.loads(events[0].split("data: ", 1)[1])
    return data


async def test_nobody_signed_in_is_refused_and_spends_nothing(kind: str, sim: Simulator
                                                              ) -> None:
    async with setup(kind, sim) as s, aiohttp.ClientSession() as http:
        async with http.post(f"{s.base}/connect", headers=as_user(s.base, None)) as answer:
            assert answer.status == 401
        async with http.get(f"{s.base}/events/x?tag=1.2", headers=as_user(s.base, None)) as a:
            assert a.status == 401
        async with http.get(f"{s.base}/result/x?tag=1.2", headers=as_user(s.base, None)) as a:
            assert a.status == 401
        assert await s.pending() == 0
    assert s.inits() == 0 and sim.sessions == {}


async def test_a_user_holds_one_pending_connection_and_asking_again_gives_it_back(
    kind: str, sim: Simulator
) -> None:
    async with setup(kind, sim) as s, aiohttp.ClientSession() as http:
        answers: list[dict[str, str]] = []

        async def tab() -> None:
            answers.append(await connect(http, s, "ann"))

        async with anyio.create_task_group() as group:  # two tabs at once, then a third
            group.start_soon(tab)
            group.start_soon(tab)
        answers.append(await connect(http, s, "ann"))
        assert len({a["session_id"] for a in answers}) == 1
        assert {a["auth_url"] for a in answers} == {answers[0]["auth_url"]}
        assert s.inits() == 1 and await s.pending("ann") == 1
        bob = await connect(http, s, "bob")
        assert bob["session_id"] != answers[0]["session_id"] and s.inits() == 2
        assert await s.pending() == 2


async def test_the_cap_in_all_refuses_with_503_until_a_session_is_decided(
    kind: str, sim: Simulator
) -> None:
    async with setup(kind, sim, max_pending=1) as s, aiohttp.ClientSession() as http:
        ann = await connect(http, s, "ann")
        async with http.post(f"{s.base}/connect", headers=as_user(s.base, "bob")) as answer:
            assert answer.status == 503 and answer.headers["Retry-After"] == "60"
        assert s.inits() == 1
        sim.complete(ann["session_id"], "ann@acme.io")
        await s.settled()
        assert await s.pending() == 0
        await connect(http, s, "bob")  # a slot came back
        assert s.inits() == 2


async def test_a_decided_session_leaves_the_guard_and_a_new_one_may_start(
    kind: str, sim: Simulator
) -> None:
    async with setup(kind, sim) as s, aiohttp.ClientSession() as http:
        first = await connect(http, s, "ann")
        sim.complete(first["session_id"], "ann@acme.io")
        await s.settled()
        assert await s.pending() == 0
        again = await connect(http, s, "ann")
        assert again["session_id"] != first["session_id"]


async def test_an_expired_session_leaves_the_guard_and_its_stream_says_so(
    kind: str, sim: Simulator
) -> None:
    async with setup(kind, sim) as s, aiohttp.ClientSession() as http:
        ann = await connect(http, s, "ann")
        with anyio.fail_after(10):
            async with http.get(f"{s.base}{ann['events_url']}",
                                headers=as_user(s.base, "ann")) as stream:
                assert stream.status == 200
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                sim.expire(ann["session_id"])
                body = (await stream.read()).decode()
        assert result_of(body) == {"ok": False, "email": None, "reason": "Session expired"}
        await s.settled()
        assert await s.pending() == 0


async def test_a_session_that_cannot_start_leaves_no_claim(kind: str, sim: Simulator) -> None:
    async with setup(kind, sim) as s, aiohttp.ClientSession() as http:
        sim.revoke(s.workspace)  # the API key stops working: the init gets a 401
        async with http.post(f"{s.base}/connect", headers=as_user(s.base, "ann")) as answer:
            assert answer.status == 503
            assert await answer.text() == "UnauthorizedError"
        assert await s.pending() == 0


async def test_a_late_and_a_returning_subscriber_get_the_stored_outcome(
    kind: str, sim: Simulator
) -> None:
    """Decided before anyone listened: the stream still delivers it; and again on a
    reconnection, and on the result page, from the registry's stored outcome."""
    async with setup(kind, sim) as s, aiohttp.ClientSession() as http:
        ann = await connect(http, s, "ann")
        sim.complete(ann["session_id"], "ann@acme.io")
        await s.settled()
        want = {"ok": True, "email": "ann@acme.io", "reason": "success"}
        for _ in range(2):  # late, then back again
            with anyio.fail_after(10):
                async with http.get(f"{s.base}{ann['events_url']}",
                                    headers=as_user(s.base, "ann")) as stream:
                    body = (await stream.read()).decode()
            assert body.startswith("retry: 1000\n\n") and result_of(body) == want
        async with http.get(f"{s.base}{ann['result_url']}", headers=as_user(s.base, "ann")) as p:
            assert p.status == 200 and "Connected ann@acme.io" in await p.text()
        status_reads = [r for r in sim.requests if r.kind == "status"]
        assert all(r.status != 404 for r in status_reads)  # the one-time answer, read once


async def test_a_link_works_for_its_user_only_and_not_once_expired_or_tampered(
    kind: str, sim: Simulator
) -> None:
    async with setup(kind, sim, link_lifetime=600) as s, aiohttp.ClientSession() as http:
        ann = await connect(http, s, "ann")
        sid = ann["session_id"]
        async with http.get(f"{s.base}{ann['result_url']}", headers=as_user(s.base, "ann")) as p:
            assert p.status == 200 and "Waiting for you to allow access..." in await p.text()
        tag = ann["result_url"].split("tag=", 1)[1]
        expires, signature = tag.split(".")
        forged = [f"{int(expires) + 3600}.{signature}",  # a longer life, same signature
                  f"{expires}.{'0' * len(signature)}", "", "garbage", f"{expires}."]
        for path in [ann["result_url"], ann["events_url"]]:  # bob with ann's own links
            async with http.get(f"{s.base}{path}", headers=as_user(s.base, "bob")) as page:
                assert page.status == 404
                text = await page.text()
                assert "No such session" in text and sid not in text
        for bad in forged:
            async with http.get(f"{s.base}/result/{sid}?tag={bad}",
                                headers=as_user(s.base, "ann")) as page:
                assert page.status == 404, bad
        async with http.get(f"{s.base}/result/other-session?tag={tag}",
                            headers=as_user(s.base, "ann")) as page:
            assert page.status == 404  # signed for another session
        s.wall.now += 600  # the link's life is over
        for path in [ann["result_url"], ann["events_url"]]:
            async with http.get(f"{s.base}{path}", headers=as_user(s.base, "ann")) as page:
                assert page.status == 410 and "Link expired" in await page.text()
        fresh = await connect(http, s, "ann")  # the same session, with a fresh link
        assert fresh["session_id"] == sid
        async with http.get(f"{s.base}{fresh['result_url']}",
                            headers=as_user(s.base, "ann")) as page:
            assert page.status == 200


async def test_asking_again_gives_the_same_links_while_they_have_half_their_life(
    kind: str, sim: Simulator
) -> None:
    async with setup(kind, sim, link_lifetime=600) as s, aiohttp.ClientSession() as http:
        s.wall.now = 1_800_000_000.9
        first = await connect(http, s, "ann")
        s.wall.now += 1.0  # a second boundary between two asks (two tabs, a reload)
        assert await connect(http, s, "ann") == first
        s.wall.now += 298.0  # 301 s of 600 left: still given again
        assert await connect(http, s, "ann") == first
        s.wall.now += 2.0  # under half its life left: fresh links, the old ones still valid
        fresh = await connect(http, s, "ann")
        assert fresh["session_id"] == first["session_id"]
        assert fresh["result_url"] != first["result_url"]
        for answer in (first, fresh):
            async with http.get(f"{s.base}{answer['result_url']}",
                                headers=as_user(s.base, "ann")) as page:
                assert page.status == 200
        assert await connect(http, s, "ann") == fresh
        bob = await connect(http, s, "bob")  # another user: their own session and links
        assert bob["session_id"] != fresh["session_id"]
        assert len(s.flow._links._ends) == 2  # ann's first end left once past its half
        s.wall.now += 301.0
        await connect(http, s, "carl")
        assert [user for user, _ in s.flow._links._ends] == ["carl"]  # none kept past use


async def test_a_cross_site_post_is_refused_and_spends_nothing(kind: str, sim: Simulator
                                                               ) -> None:
    async with setup(kind, sim, trusted_origins=["https://app.example"]) as s, \
            aiohttp.ClientSession() as http:
        for headers in ({"X-User": "ann", "Origin": "https://evil.example"},
                        {"X-User": "ann", "Origin": "null"},
                        {"X-User": "ann"},  # neither Origin nor Sec-Fetch-Site
                        {"X-User": "ann", "Sec-Fetch-Site": "cross-site"}):
            async with http.post(f"{s.base}/connect", headers=headers) as answer:
                assert answer.status == 403, headers
        assert s.inits() == 0 and await s.pending() == 0
        for headers in ({"X-User": "ann", "Origin": "https://app.example"},
                        {"X-User": "bob", "Sec-Fetch-Site": "same-origin"}):
            async with http.post(f"{s.base}/connect", headers=headers) as answer:
                assert answer.status == 200, headers
        assert s.inits() == 2


async def test_mounted_under_a_prefix_its_links_carry_the_prefix(kind: str, sim: Simulator
                                                                 ) -> None:
    async with setup(kind, sim, prefix="/mailbox") as s, aiohttp.ClientSession() as http:
        ann = await connect(http, s, "ann", prefix="/mailbox")
        assert ann["events_url"].startswith(f"/mailbox/events/{ann['session_id']}?tag=")
        assert ann["result_url"].startswith(f"/mailbox/result/{ann['session_id']}?tag=")
        with anyio.fail_after(10):
            async with http.get(f"{s.base}{ann['events_url']}",
                                headers=as_user(s.base, "ann")) as stream:
                sim.complete(ann["session_id"], "ann@acme.io")
                body = (await stream.read()).decode()
        assert result_of(body)["email"] == "ann@acme.io"


async def test_nothing_secret_in_reprs_and_bad_settings_are_refused(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    async with OAuthManager(workspace.api_key, base_url=sim.url, store=MemoryStore()) as m:
        flow = ConnectFlow(m, secret="s3cret-for-links")
        assert "s3cret" not in repr(flow) and workspace.api_key not in repr(flow)
        for bad in ({"secret": ""}, {"secret": "x", "max_pending": 0},
                    {"secret": "x", "link_lifetime": 0}, {"secret": "x", "namespace": "a{b}"}):
            with pytest.raises(ConfigurationError):
                ConnectFlow(m, **bad)
