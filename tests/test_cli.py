"""The command line, run as a user would: its own process, against the simulator on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import pytest

from instantly_oauth_async.testing import Simulator
from tests._people import allow_everyone

pytestmark = pytest.mark.anyio


async def cli(*args: str, key: str | None = None, sim: Simulator | None = None,
              person: bool = False) -> tuple[int, str, str]:
    """Run ``python -m instantly_oauth_async ARGS``; with ``person``, allow every session."""
    env = {k: v for k, v in os.environ.items() if k != "INSTANTLY_API_KEY"}
    if key is not None:
        env["INSTANTLY_API_KEY"] = key
    if sim is not None:
        env["INSTANTLY_BASE_URL"] = sim.url
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
    code, _, err = await cli("status", "no-such-session", key=workspace.api_key, sim=sim)
    assert code == 7
    assert "NotFoundError" in err


@pytest.mark.parametrize(("args", "key", "code", "says"), [
    (["connect", "--provider", "google"], None, 3, "no API key"),
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
    if "invalid choice" not in says:  # argparse prints its usage line first
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
    sys.stderr.flush()
signal.signal(signal.SIGUSR1, _dump)
"""


async def test_ctrl_c_stops_cleanly_and_says_what_was_pending(
    sim: Simulator, tmp_path: Path
) -> None:
    workspace = sim.add_workspace("acme")
    (tmp_path / "sitecustomize.py").write_text(_DUMP_TASKS, encoding="utf-8")
    env = {**os.environ, "INSTANTLY_API_KEY": workspace.api_key, "INSTANTLY_BASE_URL": sim.url,
           "PYTHONPATH": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "instantly_oauth_async", "connect", "--provider", "google",
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
