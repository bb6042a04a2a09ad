"""``python -m benchmarks._profile [one|100|redis|sqlite|scale N]``: row 8's saturation case
(or the scale case with N sessions) under cProfile, this process only; prints the top functions
by own time, and by cumulative time for the library's. Not a row: the profile behind
benchmarks/README.md's "Where a poll's CPU goes"."""

from __future__ import annotations

import cProfile
import gc
import pstats
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import anyio

from instantly_oauth_async._stores.store import MemoryStore, Store

from ._common import ServerProcess
from ._cpu import _managers, _redis_server, _span, _start_many, _status_reads


class _GCTime:
    """CPU time spent in the garbage collector, by generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.spent = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._began = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            self.spent[info["generation"]] += time.process_time() - self._began
            self.count[info["generation"]] += 1


async def main(case: str, size: int) -> None:
    collector = _GCTime()
    profile = cProfile.Profile(time.process_time)  # CPU time, not wall time
    async with ServerProcess("--open") as (url, key), aiohttp.ClientSession() as http:
        if case == "scale":
            async with _managers(url, key, http, MemoryStore(), 1, poll_interval=5.0,
                                 status_limit=__import__(
                                     "instantly_oauth_async._manager.budget",
                                     fromlist=["x"]).DEFAULT_STATUS_LIMIT) as managers:
                await _start_many(managers, size)
                profile.enable()
                span = await _span(lambda: _status_reads(managers), 0.0, 16.0)
                profile.disable()
        else:
            store: Store
            redis = None
            tmp = tempfile.TemporaryDirectory()
            if case == "redis":
                from instantly_oauth_async.redis import RedisStore  # noqa: PLC0415

                redis = _redis_server()
                store = RedisStore.from_url(redis.url)  # type: ignore[attr-defined]
            elif case == "sqlite":
                from instantly_oauth_async.sqlite import SQLiteStore  # noqa: PLC0415

                store = SQLiteStore(Path(tmp.name) / "p.db")
            else:
                store = MemoryStore()
            n = 100 if case == "100" else 1
            try:
                async with store, _managers(url, key, http, store, n,
                                            poll_interval=0.001) as managers:
                    await _start_many(managers, size)
                    await anyio.sleep(1.0)
                    profile.enable()
                    span = await _span(lambda: _status_reads(managers), 0.0, 4.0)
                    profile.disable()
            finally:
                if redis is not None:
                    redis.close()  # type: ignore[attr-defined]
                tmp.cleanup()
    print(f"{case}: {span.reads} reads, {span.rate:.0f}/s, {span.per_read_us:.0f} us/read "
          "(profiled: slower than row 8)")
    print("garbage collection, us per read by generation:",
          [round(t / max(span.reads, 1) * 1e6, 1) for t in collector.spent],
          "collections:", collector.count)
    stats = pstats.Stats(profile, stream=sys.stdout)
    by_file: dict[str, float] = {}
    for (path, _, _), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        part = path.split("site-packages/")[-1].split("/python3.11/")[-1]
        by_file[part] = by_file.get(part, 0.0) + own
    total = sum(by_file.values())
    print("own CPU by file, us per read:")
    for part, own in sorted(by_file.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {own / max(span.reads, 1) * 1e6:7.1f}  {own / total:5.1%}  {part}")
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats("instantly_oauth_async", 30)


if __name__ == "__main__":
    args = sys.argv[1:] or ["one"]
    anyio.run(main, args[0], int(args[1]) if len(args) > 1 else 2000)
