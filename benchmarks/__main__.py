"""``python -m benchmarks [--quick] [--only 1,2,...]``: run the benchmarks, print one table.

``--quick`` is the smoke run the test suite does (tiny sizes; figures not meaningful).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Awaitable, Callable

import anyio

from . import _cpu, _fleet, _hooks, _init_rate, _latency, _overhead, _scale, _standard, _stores
from ._common import Row

BENCHES: dict[str, Callable[..., Awaitable[list[Row]]]] = {
    "1": _init_rate.run, "2": _overhead.run, "3": _scale.run, "4": _latency.run, "5": _fleet.run,
    "6": _standard.run, "7": _hooks.run, "8": _cpu.run, "9": _stores.run,
}


def render(rows: list[Row]) -> str:
    header = ("bench", "what", "figure", "target", "met")
    cells = [header] + [
        (r.bench, r.what, r.figure, r.target,
         {True: "yes", False: "NO", None: ""}[r.ok]) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


async def main(quick: bool, only: list[str]) -> list[Row]:
    rows: list[Row] = []
    for key in only:
        started = time.monotonic()
        rows += await BENCHES[key](quick=quick)
        print(f"bench {key} done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return rows


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--only", default=",".join(BENCHES), help="e.g. 1,2")
    args = parser.parse_args(argv)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in only if k not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    rows = anyio.run(main, args.quick, only)
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{platform.system()} {platform.release()}")
    print(render(rows))
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(cli())
