"""One run, start to end: the simulator's process, the store (and its proxy), the workers, the
nemesis until ``seconds`` have passed; then the drain (faults healed, every session given time to
end), the audit (a fresh manager attaches to every session and reads what the fleet stored),
the workers' graceful stop, and the simulator's log and ground truth fetched for the checker."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import attrs

from instantly_oauth_async import OAuthManager, Store
from tests._owner_worker import http_session

from ._config import API_KEY, AUDIT_INDEX, STORES, Config, ip_for
from ._fleets import MemoryFleet, ProcessFleet
from ._history import Event, History, Tail, describe
from ._nemesis import Nemesis
from ._proxy import LatencyProxy
from ._redisproc import RedisProcess
from ._server import SimProcess
from ._worker import exception_kind, open_store, outcome_fields

#: result kinds that end a session for the drain: an outcome, or "no such session"
ENDS = frozenset({"success", "error", "expired", "lost", "unknown"})


@attrs.frozen
class RunData:
    config: Config
    t0: float
    events: list[Event]
    log: list[dict[str, Any]]
    truth: list[dict[str, Any]]
    run_dir: Path
    wall: float

    def save(self) -> None:
        """The simulator's side of the run beside the histories, for ``--check DIR``."""
        (self.run_dir / "server.json").write_text(json.dumps({
            "config": attrs.asdict(self.config), "t0": self.t0, "wall": self.wall,
            "log": self.log, "truth": self.truth}), encoding="utf-8")

    @classmethod
    def load(cls, run_dir: Path) -> RunData:
        saved = json.loads((run_dir / "server.json").read_text(encoding="utf-8"))
        return cls(Config(**saved["config"]), saved["t0"], Tail(run_dir / "history").poll(),
                   saved["log"], saved["truth"], run_dir, saved["wall"])


async def run(config: Config, run_dir: Path) -> RunData:
    began = time.monotonic()
    folder = run_dir / "history"
    async with SimProcess(config) as sim, contextlib.AsyncExitStack() as stack:
        nemesis_log = History(folder / "nemesis.0.jsonl", "nemesis", 0)
        t0 = time.monotonic()
        until = t0 + config.seconds
        nemesis_log.record("begin", t0=t0, until=until)
        redis = proxy = None
        fleet: ProcessFleet | MemoryFleet
        store_url = direct_url = str(run_dir / "store.db")  # a file-backed store's place
        if not STORES[config.store].shared_across_processes:
            fleet = MemoryFleet(config, run_dir, sim.url, until)
        else:
            if config.store == "redis":  # its server, and the proxy the workers reach it by
                redis = RedisProcess(run_dir / "redis")
                await redis.start()
                stack.push_async_callback(redis.close)
                proxy = LatencyProxy(redis.port)
                await proxy.start()
                stack.push_async_callback(proxy.aclose)
                store_url, direct_url = f"redis://127.0.0.1:{proxy.port}/0", redis.url
            fleet = ProcessFleet(config, run_dir, sim.url, store_url, until)
        await stack.enter_async_context(fleet)
        await Nemesis(config, fleet, sim, log=nemesis_log, redis=redis, proxy=proxy).run(t0, until)
        nemesis_log.record("healed")
        tail = Tail(folder)
        await drain(tail, until + config.drain)
        nemesis_log.record("drained")
        sids = sorted({e["sid"] for e in tail.events if e["ev"] == "start"})
        if isinstance(fleet, MemoryFleet):
            await audit(config, run_dir, sim.url, fleet.store, sids)
        else:
            store = open_store(config.store, direct_url)
            try:
                await audit(config, run_dir, sim.url, store, sids)
            finally:
                await store.aclose()
        nemesis_log.record("audited")
        await fleet.stop_all()
        log, truth = await sim.log(), await sim.truth()
        nemesis_log.close()
    data = RunData(config, t0, Tail(folder).poll(), log, truth, run_dir, time.monotonic() - began)
    data.save()
    return data


async def drain(tail: Tail, deadline: float) -> None:
    """Until every session a worker started has ended for some awaiter, or ``deadline``."""
    started: set[str] = set()
    ended: set[str] = set()
    while time.monotonic() < deadline:  # a look at the histories twice a second, bounded
        for event in tail.poll():
            if event["ev"] == "start":
                started.add(event["sid"])
            elif event["ev"] in ("result", "attach_err") and event.get("kind") in ENDS:
                ended.add(event["sid"])
        if started <= ended:
            return
        await anyio.sleep(0.5)


async def audit(config: Config, run_dir: Path, base_url: str, store: Store,
                sids: list[str]) -> None:
    """A manager opened at the end attaches to every session: what the fleet stored."""
    history = History(run_dir / "history" / "audit.1.jsonl", "audit", 1)
    ip = ip_for(AUDIT_INDEX, 1)
    limiter = anyio.CapacityLimiter(20)
    async with http_session(ip) as http, OAuthManager(
            API_KEY, base_url=base_url, store=store, session=http,
            **config.manager_kwargs()) as manager:
        history.record("open", pid=os.getpid(), ip=ip)

        async def one(sid: str) -> None:
            async with limiter:
                try:
                    pending = await manager.attach(sid)
                except Exception as exc:  # noqa: BLE001 - recorded; the checker judges it
                    history.record("attach_err", sid=sid, kind=exception_kind(exc),
                                   **describe(exc))
                    return
            try:
                result = await pending.result(timeout=config.lease + 1.0)
            except Exception as exc:  # noqa: BLE001 - recorded; the checker judges it
                kind = exception_kind(exc) if pending.done() else "timeout"
                history.record("result", sid=sid, via="audit", kind=kind, **describe(exc))
            else:
                history.record("result", sid=sid, via="audit", **outcome_fields(result))

        async with anyio.create_task_group() as group:
            for sid in sids:
                group.start_soon(one, sid)
    history.close()
