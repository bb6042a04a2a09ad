"""``python -m tests.chaos --seed S --seconds T --store memory|redis``: see the package's
docstring."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import anyio
import attrs

from . import _harness
from ._checker import check
from ._config import STORES, Config
from ._explain import explain
from ._model import build
from ._report import report


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--store", choices=sorted(STORES), default="memory")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of tests/chaos/_config.Config (e.g. "
                             "api_per_second=1); may be repeated")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    parser.add_argument("--check", type=Path, metavar="RUN_DIR",
                        help="check a kept run's folder again, without running anything")
    parser.add_argument("--explain", metavar="SESSION_ID",
                        help="with --check: one session's story (reads, handles, faults)")
    args = parser.parse_args()
    if args.check is not None:
        data = _harness.RunData.load(args.check)
        model = build(data)
        if args.explain:
            print("\n".join(explain(model, args.explain)))
            return 0
        violations = check(model)
        print("\n".join(report(data, model, violations)), flush=True)
        return 0 if not violations else 1
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    config = Config(seed=args.seed, seconds=args.seconds, store=args.store,
                    workers=args.workers)
    for item in args.set:
        name, _, value = item.partition("=")
        kind = type(getattr(config, name))  # raises AttributeError for an unknown field
        config = attrs.evolve(config, **{name: kind(value)})
    run_dir = Path(tempfile.mkdtemp(prefix=f"iox-chaos-{args.store}-{args.seed}-"))
    try:
        data = anyio.run(_harness.run, config, run_dir)
    except Exception as exc:  # noqa: BLE001 - a run that could not complete is no pass
        traceback.print_exc()
        print(f"chaos seed={args.seed} store={args.store} run_dir={run_dir} "
              f"harness-error={type(exc).__name__}: {exc} violations=1", flush=True)
        return 1
    model = build(data)
    violations = check(model)
    for line in report(data, model, violations):
        print(line, flush=True)
    if violations or args.keep:
        print(f"(histories kept in {run_dir})", file=sys.stderr)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if not violations else 1


if __name__ == "__main__":
    sys.exit(main())
