"""The connect flow of both examples across worker processes sharing one store (issues 22 and
23): the guard holds across workers (one pending connection per user, whichever worker asks),
on one SQLite file and on one Redis; and the FastAPI example under ``uvicorn --workers 4`` on a
SQLite file. Real processes, real uvicorn, the simulator and redis-server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import anyio
import pytest

from instantly_oauth_async.testing import Simulator
from tests._redis import RedisServer
from tests._webflow_workers import PASSWORD, worker

pytestmark = pytest.mark.anyio


async def signed_in(http: aiohttp.ClientSession, base: str, user: str) -> None:
    async with http.post(f"{base}/login", data={"user": user, "password": PASSWORD}) as page:
        assert page.status == 200 and 'id="connect"' in await page.text()


async def connect(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    async with http.post(f"{base}/connect", headers={"Origin": base}) as answer:
        assert answer.status == 200, await answer.text()
        body: dict[str, str] = await answer.json()
        return body


def inits(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.kind == "init")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["aiohttp", "fastapi"])
@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_one_pending_connection_per_user_across_two_workers(
    kind: str, store: str, csim: Simulator, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    where = str(tmp_path / "app.db")
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.restart()  # empty: nothing of another test's
        where = server.url
    key = csim.add_workspace("acme").api_key
    async with worker(kind, where, csim.url, key) as (_, a), \
            worker(kind, where, csim.url, key) as (_, b), \
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as ann:
        await signed_in(ann, a, "ann")  # the cookie is good on every worker (and port)
        answers: list[dict[str, str]] = []

        async def ask(base: str) -> None:
            answers.append(await connect(ann, base))

        async with anyio.create_task_group() as group:  # both workers at once, then again
            for base in (a, b, a, b):
                group.start_soon(ask, base)
        answers += [await connect(ann, b), await connect(ann, a)]
        assert len({x["session_id"] for x in answers}) == 1, answers
        assert inits(csim) == 1
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as bob:
            await signed_in(bob, b, "bob")
            theirs = await connect(bob, a)
            assert theirs["session_id"] != answers[0]["session_id"] and inits(csim) == 2
            async with bob.get(f"{b}{answers[0]['events_url']}") as stream:
                assert stream.status == 404  # ann's link, on any worker
        # decided on the server; the result streamed from the worker that did not start it
        with anyio.fail_after(20):
            async with ann.get(f"{b}{answers[0]['events_url']}") as stream:
                assert stream.status == 200
                csim.complete(answers[0]["session_id"], "ann@acme.io")
                body = (await stream.read()).decode()
        assert json.loads(body.split("data: ", 1)[1])["email"] == "ann@acme.io"
        again = await connect(ann, a)  # decided: its entry left, a new one starts
        assert again["session_id"] != answers[0]["session_id"] and inits(csim) == 3


@pytest.mark.timeout(180)
async def test_the_fastapi_example_under_uvicorn_with_four_workers_on_sqlite(
    csim: Simulator, tmp_path: Path
) -> None:
    key = csim.add_workspace("acme").api_key
    async with worker("fastapi", str(tmp_path / "app.db"), csim.url, key, workers=4) as (
            _, base):
        served_by: set[str] = set()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as ann:
            await signed_in(ann, base, "ann")
            answers = []
            for _ in range(12):  # a new connection each: any of the four workers answers
                async with ann.post(f"{base}/connect", headers={
                        "Origin": base, "Connection": "close"}) as answer:
                    assert answer.status == 200
                    served_by.add(answer.headers["X-Worker"])
                    answers.append(await answer.json())
            assert len({x["session_id"] for x in answers}) == 1 and inits(csim) == 1
            with anyio.fail_after(20):
                async with ann.get(f"{base}{answers[-1]['events_url']}") as stream:
                    csim.complete(answers[0]["session_id"], "ann@acme.io")
                    body = (await stream.read()).decode()
        assert json.loads(body.split("data: ", 1)[1]) == {
            "ok": True, "email": "ann@acme.io", "reason": "success"}
        print(f"four workers: {len(served_by)} of them answered 12 connects")
    assert "ann@acme.io" in csim.accounts
