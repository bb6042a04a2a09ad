"""The examples run as their readers would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from examples.bulk_worker import bulk_connect
from instantly_oauth_async import OAuthManager, OAuthSession, RateLimit
from instantly_oauth_async.testing import Simulator, SimulatorLimits

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_connects_one_mailbox() -> None:
    done = subprocess.run(
        [sys.executable, "examples/quickstart.py"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "3. status: success (ann@acme.io)" in done.stdout
    assert "4. account ann@acme.io" in done.stdout


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
            results = await bulk_connect(manager, "google", wanted, person)
    by_expected = {r.expected_email: r for r in results}
    assert set(by_expected) == set(wanted)
    assert all(r.ok for r in results)
    assert [r.expected_email for r in results if r.email_mismatch] == [wanted[7]]
    assert by_expected[wanted[7]].email == "other@acme.io"
