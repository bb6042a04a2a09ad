"""The command line, run as a user would: its own process, against the simulator on loopback."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import anyio
import pytest

from instantly_oauth_async import InstantlyClient, _cli
from instantly_oauth_async.testing import Simulator
from tests._people import allow_everyone
from tests._processes import _signal, child_env, running

pytestmark = pytest.mark.anyio


FAST = ("--poll-interval", "0.2")


async def cli(*args: str, key: str | None = None, sim: Simulator | None = None,
              person: bool = False, base_url_variable: bool = True) -> tuple[int, str, str]:
    """Run ``python -m instantly_oauth_async ARGS``; with ``person``, allow every session.
    ``sim``'s URL goes in INSTANTLY_BASE_URL unless ``base_url_variable`` is false."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANTLY_")}
    if key is not None:
        env["INSTANTLY_API_KEY"] = key
    if sim is not None and base_url_variable:
        env["INSTANTLY_BASE_URL"] = sim.url
    if "connect" in args:  # a read every 0.2 s, not every 5: a test of seconds, not minutes
        at = args.index("connect") + 1
        args = (*args[:at], *FAST, *args[at:])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "instantly_oauth_async", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            if person and sim is not None:
                group.start_soon(allow_everyone, sim, "acme.io")
            out, err = await process.communicate()
            group.cancel_scope.cancel()
    return process.returncode or 0, out.decode(), err.decode()


async def test_demo_connects_with_zero_429() -> None:
    code, _, err = await cli("demo", "--mailboxes", "12")
    assert code == 0, err
    assert "429s: 0" in err
    assert "connected" in err
    # the summary says which figures are simulated time and which are real
    assert re.search(r"time to connect p50 \d+\.\d s, p95 \d+\.\d s of real time \(\d+\.\d and "
                     r"\d+\.\d simulated minutes\); the demo took \d+ s of real time", err), err


async def test_connect_json_prints_sessions_then_results(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    code, out, err = await cli("connect", "--provider", "google", "--count", "2", "--json",
                               key=workspace.api_key, sim=sim, person=True)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events].count("session") == 2
    results = [e for e in events if e["event"] == "result"]
    assert [r["status"] for r in results] == ["success", "success"]
    assert workspace.api_key not in out + err


async def test_status_and_account_one_shots(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    code, out, err = await cli("connect", "--provider", "microsoft", "--json",
                               key=workspace.api_key, sim=sim, person=True)
    assert code == 0, err
    email = json.loads(out.splitlines()[-1])["email"]
    code, out, _ = await cli("account", email, key=workspace.api_key, sim=sim)
    assert code == 0
    assert json.loads(out)["email"] == email
    code, _, err = await cli("account", "nobody@acme.io", key=workspace.api_key, sim=sim)
    assert code == 7
    assert err == ("instantly-oauth: no account nobody@acme.io in this workspace: it was never "
                   "connected, or has been removed\n")


async def test_status_of_a_finished_session_says_it_was_deleted_on_its_first_read(
    sim: Simulator,
) -> None:
    workspace = sim.add_workspace("acme")
    code, out, err = await cli("connect", "--provider", "google", "--json",
                               key=workspace.api_key, sim=sim, person=True)
    assert code == 0, err
    session_id = json.loads(out.splitlines()[0])["session_id"]  # connect read its outcome
    code, _, err = await cli("status", session_id, key=workspace.api_key, sim=sim)
    assert code == 7
    assert err == (
        "instantly-oauth: no such session: a finished session (success or error) is deleted on "
        "its first read, which alone got its outcome (connect reads it as it polls); another "
        "workspace's session, or a mistyped id, is not found either\n")
    assert session_id not in err


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("case", ["closed-port", "https-to-plain-http"])
async def test_an_unreachable_url_is_named_with_what_failed(sim: Simulator, case: str) -> None:
    workspace = sim.add_workspace("acme")
    if case == "closed-port":
        url, why = f"http://127.0.0.1:{closed_port()}", "connection refused"
    else:  # TLS spoken to the simulator, which serves plain http
        url, why = sim.url.replace("http:", "https:"), "the TLS handshake failed (a plain-http"
    code, _, err = await cli("status", "some-session", "--base-url", url, key=workspace.api_key)
    assert code == 5, err
    assert err.startswith(f"instantly-oauth: cannot reach the API: GET /api/v2/oauth/session/"
                          f"status/some-session: cannot connect to {url}: {why}"), err
    assert "ssl:default" not in err and "Connect call failed" not in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(("args", "key", "code", "says"), [
    (["connect", "--provider", "google"], None, 3,
     "INSTANTLY_API_KEY is not set: set it to the workspace's API key, or pass --api-key-file"),
    (["status", "x"], None, 3, "INSTANTLY_API_KEY is not set"),
    (["connect", "--provider", "google", "--api-key-file", "/nonexistent/key"], None, 3,
     "cannot read --api-key-file"),
    (["demo", "--base-url", "http://127.0.0.1:1"], None, 2, "demo serves its own simulator"),
    # not an abbreviation of --api-key-file: a key is never an argument
    (["connect", "--provider", "google", "--api-key", "x"], None, 2, "unrecognized arguments"),
    (["connect", "--provider", "yahoo"], "k", 2, "invalid choice"),
    (["connect", "--provider", "google", "--expected-email", "not-an-email"], "sim", 2, "email"),
    (["connect", "--provider", "google", "--base-url", "http://127.0.0.1:1"], "k" * 20, 5,
     "cannot reach"),
    (["connect", "--provider", "google"], "wrong-key-of-some-length", 4, "refused"),
])
async def test_bad_input_is_one_line_and_its_own_exit_code(
    sim: Simulator, args: list[str], key: str | None, code: int, says: str
) -> None:
    if key == "sim":
        key = sim.add_workspace("acme").api_key
    got, _, err = await cli(*args, key=key, sim=sim)
    assert got == code, err
    assert says in err
    assert "Traceback" not in err
    if "invalid choice" not in says and "unrecognized" not in says:  # argparse: usage first
        assert len(err.strip().splitlines()) == 1, err


async def test_open_hands_each_auth_url_to_the_browser(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n', encoding="utf-8")
    browser.chmod(0o755)
    monkeypatch.setenv("BROWSER", str(browser))  # webbrowser runs $BROWSER with the URL
    workspace = sim.add_workspace("acme")
    code, out, err = await cli("connect", "--provider", "google", "--count", "2", "--open",
                               "--json", key=workspace.api_key, sim=sim, person=True)
    assert code == 0, err
    urls = [json.loads(line)["auth_url"] for line in out.splitlines()
            if json.loads(line)["event"] == "session"]
    assert sorted(opened.read_text(encoding="utf-8").split()) == sorted(urls)


# Loaded by the CLI below (PYTHONPATH): SIGUSR1 writes every asyncio task's stack and every
# thread's to stderr, so a CLI that does not stop on Ctrl-C says where it is stuck.
_DUMP_TASKS = """
import asyncio, faulthandler, signal, sys
def _dump(*_):
    loop = asyncio.events._get_running_loop()
    for task in asyncio.all_tasks(loop) if loop is not None else ():
        print("-- task", task.get_name(), file=sys.stderr)
        coro = task.get_coro()
        while coro is not None:  # down the chain of awaits
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                print("   ", frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name,
                      file=sys.stderr)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    faulthandler.dump_traceback(file=sys.stderr)
    print("SIGINT handler:", signal.getsignal(signal.SIGINT), file=sys.stderr)
    with open("/proc/self/status") as status:  # blocked, ignored, caught: was SIGINT seen?
        print(*(line for line in status if line.startswith(("SigPnd", "ShdPnd", "SigBlk",
                                                            "SigIgn", "SigCgt"))),
              sep="", file=sys.stderr)
    sys.stderr.flush()
signal.signal(signal.SIGUSR1, _dump)
# Ctrl-C as a terminal delivers it: a suite run in the background (`cmd &`, nohup) starts with
# SIGINT ignored, the CLI inherits that and rightly keeps it (Python and asyncio honour SIG_IGN),
# and no Ctrl-C could stop it: that, and nothing in the CLI, was this test's hang.
signal.signal(signal.SIGINT, signal.default_int_handler)
"""


async def test_ctrl_c_stops_cleanly_and_says_what_was_pending(
    sim: Simulator, tmp_path: Path
) -> None:
    workspace = sim.add_workspace("acme")
    (tmp_path / "sitecustomize.py").write_text(_DUMP_TASKS, encoding="utf-8")
    env = {**os.environ, "INSTANTLY_API_KEY": workspace.api_key, "INSTANTLY_BASE_URL": sim.url,
           "PYTHONPATH": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "instantly_oauth_async", "connect", *FAST, "--provider", "google",
        "--count", "3", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    with anyio.fail_after(30):
        for _ in range(3):  # the three sessions exist and were handed out
            assert json.loads(await process.stdout.readline())["event"] == "session"
        process.send_signal(signal.SIGINT)
    try:
        with anyio.fail_after(15):
            _, err = await process.communicate()
    except TimeoutError:
        process.send_signal(signal.SIGUSR1)  # where is it stuck?
        with anyio.move_on_after(3):
            await process.wait()
        if process.returncode is None:
            process.kill()
        stuck = (await process.stderr.read()).decode(errors="replace")
        raise AssertionError(f"the CLI did not stop within 15 s of Ctrl-C:\n{stuck}") from None
    assert process.returncode == 130
    assert "interrupted; 3 sessions were pending" in err.decode()
    assert "Traceback" not in err.decode()


async def test_vv_json_logs_one_object_per_line_with_the_structured_fields(
    sim: Simulator,
) -> None:
    """``-vv --log-format json`` (before the command): every record of the library at DEBUG
    and up, one JSON object per line on stderr; neither the key nor an auth URL in any of it."""
    workspace = sim.add_workspace("acme")
    code, out, err = await cli("-vv", "--log-format", "json", "connect", "--provider", "google",
                               "--count", "2", "--json", key=workspace.api_key, sim=sim,
                               person=True)
    assert code == 0, err
    records = [json.loads(line) for line in err.splitlines()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert all(datetime.fromisoformat(r["time"]).utcoffset() == timedelta(0) for r in records)
    assert {r["level"] for r in records} == {"DEBUG", "INFO"}
    assert {r["logger"] for r in records} == {"instantly_oauth_async"}
    finished = Counter((r["operation"], r["status"]) for r in records
                       if r.get("iox_event") == "request_finished")
    api = Counter((r.kind, r.status) for r in sim.requests if r.kind != "consent")
    assert finished == api and finished[("init", 200)] == 2
    resolved = [r for r in records if r.get("iox_event") == "session_resolved"]
    assert [(r["level"], r["outcome"], r["provider"]) for r in resolved] == [
        ("INFO", "success", "google")] * 2
    assert all(isinstance(r["latency"], float) and r["polls"] >= 1 for r in resolved)
    urls = [json.loads(line)["auth_url"] for line in out.splitlines()
            if json.loads(line)["event"] == "session"]
    assert len(urls) == 2
    secrets = [workspace.api_key, *urls, *(url.rsplit("/", 1)[1] for url in urls)]
    assert not [s for s in secrets if s in err]
    assert workspace.api_key not in out


async def test_one_v_after_the_command_logs_text_at_info(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    code, out, err = await cli("connect", "--provider", "microsoft", "--json", "-v",
                               key=workspace.api_key, sim=sim, person=True)
    assert code == 0, err
    # at INFO, the one session's end and nothing else (its requests are DEBUG)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO instantly_oauth_async: "
                        r"microsoft session ended: success after \d+\.\d s, \d+ polls\n", err), err
    assert workspace.api_key not in out + err


# -- global options, before or after the command ---------------------------------------------

@pytest.mark.parametrize("where", ["before", "after"])
async def test_base_url_and_api_key_file_go_before_or_after_the_command(
    sim: Simulator, tmp_path: Path, where: str
) -> None:
    workspace = sim.add_workspace("acme")
    key_file = tmp_path / "key"
    key_file.write_text(workspace.api_key + "\n", encoding="utf-8")
    options = ["--base-url", sim.url, "--api-key-file", str(key_file)]
    command = ["connect", "--provider", "google", "--json"]
    args = [*options, *command] if where == "before" else [*command, *options]
    code, out, err = await cli(*args, sim=sim, person=True, base_url_variable=False)
    assert code == 0, err
    assert [json.loads(line)["status"] for line in out.splitlines()[1:]] == ["success"]


async def test_an_option_after_the_command_wins_over_the_same_before_it(sim: Simulator) -> None:
    workspace = sim.add_workspace("acme")
    code, _, err = await cli("--base-url", f"http://127.0.0.1:{closed_port()}", "account",
                             "nobody@acme.io", "--base-url", sim.url, key=workspace.api_key,
                             sim=sim, base_url_variable=False)
    assert code == 7, err  # the simulator's answer (no such account), not a refused connection
    assert "no account nobody@acme.io" in err


# -- help --------------------------------------------------------------------------------------

def _parsers() -> dict[str, argparse.ArgumentParser]:
    parser = _cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"instantly-oauth": parser, **commands.choices}


@pytest.mark.parametrize("name", ["instantly-oauth", "connect", "status", "account", "demo",
                                  "simulate"])
def test_every_option_has_help_and_no_help_shows_rest_markup(name: str) -> None:
    parser = _parsers()[name]
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []
    text = parser.format_help()
    assert "``" not in text and ":class:" not in text
    assert "INSTANTLY_API_KEY" in text or name in ("demo", "simulate")


def test_help_as_printed_has_no_double_backticks() -> None:
    done = subprocess.run([sys.executable, "-m", "instantly_oauth_async", "--help"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert "``" not in done.stdout
    assert "go before or after the command" in done.stdout
    assert "exit codes: 0 all connected" in done.stdout


# -- simulate ----------------------------------------------------------------------------------

async def test_simulate_serves_a_simulator_the_cli_connects_through_its_consent_form(
    tmp_path: Path,
) -> None:
    """``simulate --port P --api-key K`` in its own process; ``connect`` in another, pointed at
    it by the environment; the person is plain HTTP: GET the auth URL's consent form, POST
    action=allow and a mailbox. Then SIGTERM (by PID) stops the simulator, exit code 0."""
    port, key = closed_port(), "local-key-for-tests"
    argv = [sys.executable, "-m", "instantly_oauth_async", "simulate", "--port", str(port),
            "--api-key", key]
    async with running(argv, cwd=tmp_path, env=child_env()) as simulator, \
            aiohttp.ClientSession() as person:
        with anyio.fail_after(30):
            line = await simulator.stdout.wait_for(r"^INSTANTLY_BASE_URL=")
        url = line.removeprefix("INSTANTLY_BASE_URL=")
        assert url == f"http://127.0.0.1:{port}"
        connect = [sys.executable, "-m", "instantly_oauth_async", "connect", *FAST,
                   "--provider", "microsoft", "--json"]
        env = child_env(INSTANTLY_API_KEY=key, INSTANTLY_BASE_URL=url)
        async with running(connect, cwd=tmp_path, env=env) as cli_process:
            with anyio.fail_after(30):
                session = json.loads(await cli_process.stdout.wait_for('"session"'))
            auth_url = session["auth_url"]
            assert auth_url.startswith(f"{url}/")
            async with person.get(auth_url) as page:
                form = await page.text()
            assert page.status == 200
            for field in ('<form method="post">', 'name="email"', 'name="name"',
                          'name="action" value="allow"', 'name="action" value="deny"'):
                assert field in form
            data = {"action": "allow", "email": "ann@acme.io", "name": "Ann Lee"}
            async with person.post(auth_url, data=data) as answer:
                assert answer.status == 200
                assert "Connected ann@acme.io" in await answer.text()
            async with person.get(auth_url) as page:  # a decided session's page is gone
                assert page.status == 410
            with anyio.fail_after(30):
                assert await cli_process.wait() == 0, cli_process.stderr.text()
        result = json.loads(cli_process.stdout.lines[-1])
        assert (result["status"], result["email"]) == ("success", "ann@acme.io")
        assert simulator.stdout.lines == [line]  # the key it was given is not printed
        _signal(simulator.process, signal.SIGTERM)
        with anyio.fail_after(15):
            assert await simulator.wait() == 0, simulator.stderr.text()
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))  # nothing listens there any more
    assert "Traceback" not in simulator.stderr.text()


async def test_simulate_without_a_key_prints_the_one_it_made_and_compresses_time(
    tmp_path: Path,
) -> None:
    """No ``--api-key``: a random one, printed; ``--compress 60``: a session lives 10 s, not
    10 min; Ctrl-C (SIGINT) stops it with exit code 0."""
    argv = [sys.executable, "-m", "instantly_oauth_async", "simulate", "--compress", "60"]
    async with running(argv, cwd=tmp_path, env=child_env()) as simulator:
        with anyio.fail_after(30):
            key_line = await simulator.stdout.wait_for(r"^INSTANTLY_API_KEY=sim_")
        url = simulator.stdout.lines[0].removeprefix("INSTANTLY_BASE_URL=")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
        key = key_line.removeprefix("INSTANTLY_API_KEY=")
        async with InstantlyClient(key, base_url=url) as client:
            session = await client.init_oauth("google")
        assert session.server_date is not None  # the simulator's Date header (whole seconds)
        lifetime = (session.expires_at - session.server_date).total_seconds()
        assert 8 <= lifetime <= 11, lifetime
        _signal(simulator.process, signal.SIGINT)
        with anyio.fail_after(15):
            assert await simulator.wait() == 0, simulator.stderr.text()


async def test_connect_uses_the_store_instantly_store_names(
    sim: Simulator, tmp_path: Path
) -> None:
    workspace = sim.add_workspace("acme")
    path = tmp_path / "shared.db"
    env = child_env(INSTANTLY_API_KEY=workspace.api_key, INSTANTLY_BASE_URL=sim.url,
                    INSTANTLY_STORE=str(path))
    argv = [sys.executable, "-m", "instantly_oauth_async", "connect", *FAST, "--provider",
            "google", "--json"]
    async with running(argv, cwd=tmp_path, env=env) as connect, anyio.create_task_group() as g:
        g.start_soon(allow_everyone, sim, "acme.io")
        with anyio.fail_after(30):
            assert await connect.wait() == 0, connect.stderr.text()
        g.cancel_scope.cancel()
    session_id = json.loads(connect.stdout.lines[0])["session_id"]
    with sqlite3.connect(path) as db:  # the session was registered in the file, with its outcome
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master")]
        dump = "\n".join(db.iterdump())
    db.close()  # the with block commits, it does not close (3.13 warns of an unclosed one)
    assert tables and session_id in dump


async def test_simulate_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await cli("simulate", "--port", str(port))
    assert code == 2
    assert err.startswith(f"instantly-oauth: cannot listen on 127.0.0.1:{port}: "), err
    assert out == ""
