"""The benchmarks' smoke run (``python -m benchmarks --quick``), so they never rot.

Tiny sizes: the figures mean nothing here, only that every row still runs and prints.
"""

from __future__ import annotations

import logging
import re

import pytest

from benchmarks.__main__ import BENCHES, main, render

pytestmark = pytest.mark.anyio


@pytest.mark.timing
@pytest.mark.timeout(240)
async def test_every_benchmark_runs_in_its_quick_form() -> None:
    """Every row but 7, 8 and 9, which have tests of their own below."""
    others = [key for key in BENCHES if key not in ("7", "8", "9")]
    rows = await main(True, others)
    assert {row.bench.split()[0] for row in rows} == set(others)
    table = render(rows)
    assert "OAuthManager" in table
    assert "never finished" in table  # aiolimiter's burst earns 429s and then a block


async def test_the_hooks_row_runs_in_its_quick_form_and_leaves_logging_as_it_was() -> None:
    """Row 7 alone (seconds, so not ``timing``): its four rows, and the library's logger left
    as it found it (the logging variant turns DEBUG on only for its own blocks)."""
    library = logging.getLogger("instantly_oauth_async")
    handlers, level = list(library.handlers), library.level
    rows = await main(True, ["7"])
    assert [row.bench for row in rows] == ["7 hooks"] * 4
    assert [row.target for row in rows] == ["<= 1.03", "<= 1.03", "", ""]
    assert all(re.fullmatch(r"ratio \d+\.\d{3}; CPU [+-]\d+ us/read", r.figure) for r in rows[:3])
    assert "OpenTelemetry" in rows[1].what and "null stream" in rows[2].what
    assert re.fullmatch(r"no-op \d+\.\d\d us, OpenTelemetry \d+\.\d us per read", rows[3].figure)
    assert (library.handlers, library.level) == (handlers, level)


@pytest.mark.timing
@pytest.mark.timeout(120)
async def test_the_stores_row_runs_in_its_quick_form() -> None:
    """Row 9 alone (2 and 4 processes, limits compressed 60x, 10 watched outcomes): SQLite
    beside Redis in every figure, no 429 from either store's fleet, and the SQLite watcher's
    p99 within its 250 ms goal (its 50 ms poll does not depend on the compression)."""
    rows = await main(True, ["9"])
    assert {row.bench for row in rows} == {"9 stores"}
    fleets = [row for row in rows if "inits" in row.what]
    assert [(r.what.split(",")[0], r.what.split(",")[2].split(":")[0]) for r in fleets] == [
        ("2 processes", " SQLite"), ("2 processes", " Redis"),
        ("4 processes", " SQLite"), ("4 processes", " Redis")]
    assert all(re.search(r"150 inits, 0 x 429; the first 75 sent in \d+\.\d\d s$", r.what)
               for r in fleets)
    assert all(re.fullmatch(r"\d+\.\d% of allowed", r.figure) for r in fleets)
    costs = [row for row in rows if "per API request" in row.what]
    assert [("SQLite" in r.what, "Redis" in r.what) for r in costs] == [(True, False),
                                                                        (False, True)] * 2
    for row in costs:
        assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d ms; \d+\.\d\d( \(\d+\.\d\d\))?", row.figure)
        # every request takes its slot through the store: one decision a request at least
        assert float(row.figure.split("; ")[1].split()[0]) >= 1
    watched = [row for row in rows if "attach()" in row.what]
    assert [("SQLite" in r.what, r.target, r.ok) for r in watched] == [
        (True, "p99 <= 250 ms", True), (False, "", None)]
    assert all(re.fullmatch(r"\d+\.\d\d / \d+\.\d\d ms", r.figure) for r in watched)


@pytest.mark.timing  # about 10 s; three times that under asyncio's debug mode
@pytest.mark.timeout(180)
async def test_the_cpu_row_runs_in_its_quick_form() -> None:
    """Row 8 alone: raw aiohttp first and last, the client, 1, 20 and 100 managers, Redis and
    SQLite, memory per session and CPU per poll at two sizes; every ratio against raw."""
    rows = await main(True, ["8"])
    assert [row.bench for row in rows] == ["8 cpu"] * 10
    assert [row.target for row in rows] == [
        "", "", "", "<= 1.5x raw", "", "<= 1.6x raw", "", "", "<= 1 KiB", "<= 1.2x"]
    assert all(re.fullmatch(r"\d+ us/read = \d+\.\d\dx raw", r.figure) for r in rows[1:8])
    assert "sessions in turn" in rows[2].what
    assert "RedisStore" in rows[6].what and "SQLiteStore" in rows[7].what
    assert re.fullmatch(r"\d+\.\d\d KiB", rows[8].figure)
    assert re.fullmatch(r"\d+\.\d\dx", rows[9].figure)


@pytest.mark.timing
@pytest.mark.timeout(60)
async def test_the_managers_own_cpu_figure_runs_in_a_quick_form() -> None:
    """``python -m benchmarks._own`` (benchmarks/README.md's "the manager's own CPU per read"):
    reads are made with the network taken away, and the client's real method is put back."""
    from benchmarks._own import main as own  # noqa: PLC0415
    from instantly_oauth_async._limits.limiter import FairLimiter  # noqa: PLC0415
    from instantly_oauth_async._wire.client import InstantlyClient  # noqa: PLC0415

    real, acquire = InstantlyClient.get_oauth_status, FairLimiter.acquire
    figures = await own(2, sessions=40, spans=2, seconds=0.3)
    assert len(figures) == 2 and all(figure > 0 for figure in figures)
    assert InstantlyClient.get_oauth_status is real
    # A guarantee's part taken out to price it, and put back after
    figures = await own(1, sessions=20, spans=1, seconds=0.3, without=("budget", "leases"))
    assert len(figures) == 1 and figures[0] > 0
    assert FairLimiter.acquire is acquire and InstantlyClient.get_oauth_status is real
    from instantly_oauth_async._manager.fleet import Fleet  # noqa: PLC0415

    assert "may_read" not in Fleet.__dict__  # inherited before: inherited again


@pytest.mark.timing
@pytest.mark.timeout(60)
async def test_what_a_polled_session_holds_runs_in_a_quick_form() -> None:
    """``python -m benchmarks._held``: sessions polled for a while keep one deadline entry."""
    from benchmarks._held import main as held  # noqa: PLC0415

    figures = await held(20, 1.0, 0.5)
    assert len(figures) == 2 and all(entries <= 2 for entries in figures)
