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
    rows = await main(True, list(BENCHES))
    assert {row.bench.split()[0] for row in rows} == set(BENCHES)
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


@pytest.mark.timeout(180)
async def test_the_cpu_row_runs_in_its_quick_form() -> None:
    """Row 8 alone: raw aiohttp first and last, the client, 1, 20 and 100 managers, Redis and
    SQLite, memory per session and CPU per poll at two sizes; every ratio against raw."""
    rows = await main(True, ["8"])
    assert [row.bench for row in rows] == ["8 cpu"] * 9
    assert [row.target for row in rows] == [
        "", "", "<= 1.5x raw", "", "<= 1.6x raw", "", "", "<= 1 KiB", "<= 1.2x"]
    assert all(re.fullmatch(r"\d+ us/read = \d+\.\d\dx raw", r.figure) for r in rows[1:7])
    assert "RedisStore" in rows[5].what and "SQLiteStore" in rows[6].what
    assert re.fullmatch(r"\d+\.\d\d KiB", rows[7].figure)
    assert re.fullmatch(r"\d+\.\d\dx", rows[8].figure)
