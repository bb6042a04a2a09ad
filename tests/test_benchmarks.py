"""The benchmarks' smoke run (``python -m benchmarks --quick``), so they never rot.

Tiny sizes: the figures mean nothing here, only that every row still runs and prints.
"""

from __future__ import annotations

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
