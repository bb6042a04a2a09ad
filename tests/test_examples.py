"""The examples run as their readers would run them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples import fleet_worker
from examples.bulk_worker import bulk_connect
from instantly_oauth_async import OAuthManager, OAuthSession, RateLimit
from instantly_oauth_async.testing import CannedResponse, Simulator, SimulatorLimits
from tests._people import allow_everyone
from tests._processes import as_installed, child_env, running
from tests._redis import RedisServer
from tests._tree import ROOT


def test_quickstart_connects_one_mailbox() -> None:
    done = subprocess.run(
        [sys.executable, "examples/quickstart.py"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "3. status: success (ann@acme.io)" in done.stdout
    assert "4. account ann@acme.io" in done.stdout


@pytest.mark.anyio
async def test_quickstart_reads_the_environment_and_connects_through_instantly_oauth_simulate(
    tmp_path: Path,
) -> None:
    """As its docstring says: ``instantly-oauth simulate`` in one process, the quickstart in
    another pointed at it by INSTANTLY_BASE_URL and INSTANTLY_API_KEY; the person opens the
    printed link (plain HTTP here), enters a mailbox and clicks Allow."""
    key = "local-key"
    simulate = [sys.executable, "-m", "instantly_oauth_async", "simulate", "--api-key", key]
    async with running(simulate, cwd=tmp_path, env=child_env()) as simulator, \
            aiohttp.ClientSession() as person:
        with anyio.fail_after(30):
            url = (await simulator.stdout.wait_for("^INSTANTLY_BASE_URL=")).split("=", 1)[1]
        env = child_env(INSTANTLY_API_KEY=key, INSTANTLY_BASE_URL=url)
        argv = [sys.executable, str(ROOT / "examples" / "quickstart.py")]
        async with running(argv, cwd=tmp_path, env=env) as quickstart:
            with anyio.fail_after(30):
                line = await quickstart.stdout.wait_for("^2. send the person to: ")
            auth_url = line.rsplit(" ", 1)[1]
            assert auth_url.startswith(f"{url}/")
            async with person.post(auth_url, data={"action": "allow", "email": "bob@acme.io"}
                                   ) as answer:
                assert answer.status == 200
            with anyio.fail_after(30):  # polled every 5 s, the default
                assert await quickstart.wait() == 0, quickstart.stderr.text()
    assert "3. status: success (bob@acme.io)" in quickstart.stdout.lines
    assert any(line.startswith("4. account bob@acme.io") for line in quickstart.stdout.lines)


@pytest.mark.parametrize("example", ["quickstart.py", "bulk_worker.py", "fleet_worker.py"])
def test_an_example_with_a_malformed_variable_says_which_without_a_traceback(
    example: str, tmp_path: Path
) -> None:
    mailboxes = tmp_path / "mailboxes.txt"
    mailboxes.write_text("ann@acme.io\n", encoding="utf-8")
    args = {"quickstart.py": [], "bulk_worker.py": ["google", str(mailboxes)],
            "fleet_worker.py": ["google", "1"]}[example]
    env = child_env(INSTANTLY_API_KEY="k" * 20, INSTANTLY_STORE="memroy",
                    INSTANTLY_BASE_URL="http://127.0.0.1:1")
    if example == "bulk_worker.py":  # and without a key at all
        del env["INSTANTLY_API_KEY"]
    done = subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, str(ROOT / "examples" / example), *args], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    variable = "INSTANTLY_API_KEY is not set" if example == "bulk_worker.py" else (
        "INSTANTLY_STORE must be")
    assert done.stderr.startswith(f"{example.removesuffix('.py')}: {variable}"), done.stderr
    assert "Traceback" not in done.stderr


def test_fleet_worker_refuses_a_store_of_its_own(tmp_path: Path) -> None:
    env = child_env(INSTANTLY_API_KEY="k" * 20)
    env.pop("INSTANTLY_STORE", None)
    done = subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, str(ROOT / "examples" / "fleet_worker.py"), "google", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr == ("fleet_worker: INSTANTLY_STORE must name the store the fleet shares "
                           "(redis://HOST:6379/0): on a store of its own, each worker spends "
                           "the whole budget\n")


@pytest.mark.anyio
async def test_bulk_worker_prints_each_result_as_it_comes(tmp_path: Path) -> None:
    """``python examples/bulk_worker.py google mailboxes.txt``, configured by the environment:
    the first person's result is on stdout while the second person has not come yet."""
    mailboxes = tmp_path / "mailboxes.txt"
    mailboxes.write_text("ann@acme.io\nbob@acme.io\n", encoding="utf-8")
    async with Simulator() as sim:
        workspace = sim.add_workspace("acme")
        env = child_env(INSTANTLY_API_KEY=workspace.api_key, INSTANTLY_BASE_URL=sim.url)
        argv = [sys.executable, str(ROOT / "examples" / "bulk_worker.py"), "google",
                str(mailboxes)]
        async with running(argv, cwd=tmp_path, env=env) as worker:
            with anyio.fail_after(30):
                handed = [json.loads(await worker.stdout.wait_for('"auth_url"', nth=n))
                          for n in (1, 2)]
            assert [h["email"] for h in handed] == ["ann@acme.io", "bob@acme.io"]
            sim.complete(sim.session_for(handed[0]["auth_url"]).session_id, "ann@acme.io")
            with anyio.fail_after(30):  # polled every 5 s, the default
                first = json.loads(await worker.stdout.wait_for('"status"'))
            assert first == {"expected": "ann@acme.io", "status": "success",
                             "connected": "ann@acme.io", "mismatch": False}
            assert worker.running  # printed as it came, not at the end
            assert sim.session_for(handed[1]["auth_url"]).state == "pending"
            sim.complete(sim.session_for(handed[1]["auth_url"]).session_id, "other@acme.io")
            with anyio.fail_after(30):
                assert await worker.wait() == 1  # bob's person connected another mailbox
    last = json.loads(worker.stdout.lines[-1])
    assert (last["expected"], last["connected"], last["mismatch"]) == (
        "bob@acme.io", "other@acme.io", True)
    assert workspace.api_key not in worker.stdout.text() + worker.stderr.text()


@pytest.mark.anyio
async def test_bulk_worker_connects_each_mailbox_and_reports_a_wrong_one() -> None:
    async with Simulator(limits=SimulatorLimits().compressed(60)) as sim:
        workspace = sim.add_workspace("acme")
        wanted = [f"user{i}@acme.io" for i in range(20)]

        def person(email: str, session: OAuthSession) -> None:
            # the person for user7 signs in with another mailbox
            sim.complete(session.session_id, "other@acme.io" if email == wanted[7] else email)

        async with OAuthManager(workspace.api_key, base_url=sim.url, poll_interval=0.05,
                                init_limit=RateLimit(75, per=1),
                                ip_init_limit=RateLimit(150, per=1)) as manager:
            results = [r async for r in bulk_connect(manager, "google", wanted, person)]
    by_expected = {r.expected_email: r for r in results}
    assert set(by_expected) == set(wanted)
    assert all(r.ok for r in results)
    assert [r.expected_email for r in results if r.email_mismatch] == [wanted[7]]
    assert by_expected[wanted[7]].email == "other@acme.io"


@pytest.mark.anyio
async def test_fleet_worker_connects_through_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = RedisServer()
    server.start()
    try:
        async with Simulator(limits=SimulatorLimits().compressed(60)) as sim:
            workspace = sim.add_workspace("fleet")
            monkeypatch.setenv("INSTANTLY_STORE", server.url)
            monkeypatch.setenv("INSTANTLY_API_KEY", workspace.api_key)

            async with anyio.create_task_group() as group:
                group.start_soon(allow_everyone, sim, "fleet.io")
                with anyio.fail_after(30):
                    await fleet_worker.main("google", 5, base_url=sim.url, poll_interval=0.05)
                group.cancel_scope.cancel()
    finally:
        server.close()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(1 for line in lines if "url" in line) == 5
    assert [line["status"] for line in lines if "status" in line] == ["success"] * 5


@pytest.mark.anyio
async def test_fleet_worker_piped_hands_out_each_auth_url_while_it_runs() -> None:
    """Piped to another program (stdout a pipe, so block-buffered unless flushed), each auth URL
    must arrive while the worker runs: the person needs it before the session expires."""
    server = RedisServer()
    server.start()
    try:
        async with Simulator() as sim:
            workspace = sim.add_workspace("fleet")
            env = child_env(INSTANTLY_STORE=server.url, INSTANTLY_API_KEY=workspace.api_key,
                            INSTANTLY_BASE_URL=sim.url)
            argv = [sys.executable, "examples/fleet_worker.py", "google", "2"]
            async with running(argv, cwd=ROOT, env=env) as worker:
                with anyio.fail_after(20):
                    first = json.loads(await worker.stdout.wait_for('"url"'))
                assert worker.running  # read while it runs, not flushed at its exit
                assert sim.sessions[first["session"]].state == "pending"
                for n in (1, 2):  # each person acts on the link they were handed
                    with anyio.fail_after(20):
                        handed = json.loads(await worker.stdout.wait_for('"url"', nth=n))
                    sim.complete(sim.session_for(handed["url"]).session_id, f"p{n}@fleet.io")
                with anyio.fail_after(30):
                    assert await worker.wait() == 0, worker.stderr.text()
    finally:
        server.close()
    lines = [json.loads(line) for line in worker.stdout.lines]
    assert [line["status"] for line in lines if "status" in line] == ["success"] * 2
    assert workspace.api_key not in worker.stdout.text() + worker.stderr.text()


def scraped(text: str) -> dict[str, Counter[tuple[str, ...]]]:
    """The fleet worker's figures from one Prometheus scrape: each sample's value by its label
    values, in the order of the labels' names (operation, status; outcome, provider)."""
    figures: dict[str, Counter[tuple[str, ...]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(value for _, value in sorted(sample.labels.items()))
            figures.setdefault(sample.name, Counter())[labels] += int(sample.value)
    return figures


@pytest.mark.anyio
async def test_fleet_worker_metrics_agree_with_the_simulator_while_it_runs() -> None:
    """``fleet_worker.py --metrics-port 0``: scraped while it runs, its requests by operation and
    status are the simulator's own log, its sessions by outcome what the people did."""
    server = RedisServer()
    server.start()
    try:
        async with Simulator() as sim:
            workspace = sim.add_workspace("fleet")
            sim.enqueue("status", CannedResponse(429, "{}", (("Retry-After", "0"),)))
            env = child_env(INSTANTLY_STORE=server.url, INSTANTLY_API_KEY=workspace.api_key,
                            INSTANTLY_BASE_URL=sim.url)
            argv = [sys.executable, "examples/fleet_worker.py", "google", "4",
                    "--metrics-port", "0"]
            async with running(argv, cwd=ROOT, env=env) as worker, \
                    aiohttp.ClientSession() as http:
                with anyio.fail_after(20):
                    line = await worker.stderr.wait_for(r"^metrics: ")
                    handed = [json.loads(await worker.stdout.wait_for('"url"', nth=n))
                              for n in range(1, 5)]
                url = line.removeprefix("metrics: ")
                assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
                ids = [sim.session_for(h["url"]).session_id for h in handed]
                sim.complete(ids[0], "p0@fleet.io")
                sim.complete(ids[1], "p1@fleet.io")
                sim.deny(ids[2])  # and the fourth person has not come yet
                with anyio.fail_after(30):
                    await worker.stdout.wait_for('"status"', nth=3)
                # The fourth session is polled every 5 s; a scrape taken while one of its reads
                # is on the wire lags the simulator by that read: scrape again (bounded).
                api: Counter[tuple[str, ...]] = Counter()
                with anyio.fail_after(10):
                    for _ in range(100):
                        async with http.get(url) as response:
                            assert response.status == 200
                            text = await response.text()
                        figures = scraped(text)
                        api = Counter((r.kind, str(r.status)) for r in sim.requests
                                      if r.kind in ("init", "status", "account"))
                        requests = figures["instantly_request_duration_seconds_count"]
                        if requests == api:
                            break
                        await anyio.sleep(0.05)
                assert requests == api, (requests, api)
                assert api[("init", "200")] == 4 and api[("status", "429")] == 1
                assert api[("account", "200")] == 2
                assert +figures["instantly_sessions_resolved_total"] == {
                    ("success", "google"): 2, ("error", "google"): 1}
                assert figures["instantly_sessions_active"] == {
                    ("google",): 1, ("microsoft",): 0}
                assert "# TYPE instantly_init_denials_total counter" in text  # and no sample:
                assert "instantly_init_denials_total" not in figures
                secrets = [workspace.api_key, *ids, *(h["url"] for h in handed), "fleet.io"]
                assert not [s for s in secrets if s in text]
                sim.complete(ids[3], "p3@fleet.io")
                with anyio.fail_after(30):
                    assert await worker.wait() == 0, worker.stderr.text()
    finally:
        server.close()
    statuses = [json.loads(line)["status"] for line in worker.stdout.lines if '"status"' in line]
    assert sorted(statuses) == ["error", "success", "success", "success"]


@pytest.mark.anyio
async def test_aiohttp_app_runs_from_any_directory_and_wants_a_signed_in_user(
    tmp_path: Path,
) -> None:
    """``APP_PASSWORD=... python path/to/aiohttp_app.py [PORT]`` from a directory of its own,
    with only the installed library importable; without APP_PASSWORD it says what it needs."""
    cwd, lib = tmp_path / "cwd", tmp_path / "lib"
    cwd.mkdir()
    lib.mkdir()
    argv = as_installed(lib, "file", str(ROOT / "examples" / "aiohttp_app.py"), "0")
    async with running(argv, cwd=cwd, env=child_env()) as refused:
        with anyio.fail_after(30):
            assert await refused.wait() != 0
    assert "set APP_PASSWORD" in refused.stderr.text()
    password = "a shared secret for the tests"
    async with running(argv, cwd=cwd, env=child_env(APP_PASSWORD=password)) as app:
        with anyio.fail_after(30):
            line = await app.stdout.wait_for(r"^http://127\.0\.0\.1:\d+ ")
        base = line.split()[0]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base) and not base.endswith(":0")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            same_site = {"Origin": base}  # as the page's own fetch sends it (checked: CSRF)
            async with http.post(f"{base}/connect", headers=same_site) as answer:
                assert answer.status == 401
            form = {"user": "ann", "password": password}
            async with http.post(f"{base}/login", data=form) as page:
                assert 'id="connect"' in await page.text()
            async with http.post(f"{base}/connect", headers=same_site) as answer:
                assert answer.status == 200
                assert (await answer.json())["auth_url"].startswith("http://127.0.0.1:")
    assert password not in app.stdout.text() + app.stderr.text()
