"""The nemesis: faults at random moments until the run's end; then it stops, and every fault
still under way heals (each one is bounded in time).

The plan (when, what, on whom, how long) is drawn from the run's seed before the run, so a seed
always plays the same plan. At most two faults at once, never two on one target (a worker, the
store, the API's network): a planned fault that would break that is skipped. Every fault is
recorded in the nemesis' history when it has healed: its kind, target, ``t0`` (when it began),
``t1`` (when it healed) and its own details.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio

from ._config import STORES, Config
from ._fleets import MemoryFleet, ProcessFleet
from ._history import History
from ._proxy import LatencyProxy
from ._redisproc import RedisProcess
from ._server import SimProcess

WORKER_FAULTS = {  # kind: weight
    "process": {"kill9": 3.0, "term": 2.0, "pause-long": 2.0, "pause-short": 1.0, "cancel": 1.0},
    "memory": {"close": 3.0, "cancel": 2.0},
}
STORE_WEIGHTS = {"redis-kill-always": 1.0, "redis-kill-everysec": 0.8, "redis-kill-empty": 0.6,
                 "redis-stop-short": 1.2, "redis-stop-long": 1.0, "redis-latency": 1.2}
API_WEIGHTS = {"api-latency": 1.0}
MAX_AT_ONCE = 2


class Nemesis:
    def __init__(self, config: Config, fleet: ProcessFleet | MemoryFleet, sim: SimProcess, *,
                 log: History, redis: RedisProcess | None = None,
                 proxy: LatencyProxy | None = None) -> None:
        self.config = config
        self.fleet = fleet
        self.sim = sim
        self.log = log
        self.redis = redis
        self.proxy = proxy
        self._rng = random.Random(f"{config.seed}:nemesis")  # noqa: S311 - seeded
        kinds = WORKER_FAULTS["process" if isinstance(fleet, ProcessFleet) else "memory"]
        self.weights = {**kinds, **API_WEIGHTS}
        if redis is not None:
            self.weights |= {kind: STORE_WEIGHTS[kind] for kind in STORES[config.store].faults}
        self._busy: set[str] = set()

    def _target(self, kind: str) -> str:
        if kind.startswith("redis-"):
            return "store"
        if kind.startswith("api-"):
            return "api"
        return "worker"

    def schedule(self, seconds: float) -> list[tuple[float, str, str, float]]:
        """The whole plan, drawn from the seed before the run: ``(offset, kind, target,
        draw)``; the same seed gives the same plan, whatever the run's timing."""
        rng, offset = self._rng, 0.0
        plan: list[tuple[float, str, str, float]] = []
        while True:
            offset += rng.uniform(1.0, 4.0)
            if offset >= seconds:
                return plan
            kind = rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
            target = self._target(kind)
            if target == "worker":
                target = rng.choice(self.fleet.names)
            plan.append((offset, kind, target, rng.random()))

    async def run(self, t0: float, until: float) -> None:
        """The plan from ``t0``; a fault whose target is still under one, or that would make a
        third at once, is skipped (and recorded so)."""
        async with anyio.create_task_group() as group:
            for offset, kind, target, draw in self.schedule(until - t0):
                await anyio.sleep(max(0.0, t0 + offset - time.monotonic()))
                if target in self._busy or len(self._busy) >= MAX_AT_ONCE:
                    self.log.record("skipped", kind=kind, target=target)
                    continue
                self._busy.add(target)
                group.start_soon(self._inject, kind, target, draw)
            # the plan is done: the faults under way heal, the group waits for them

    async def _inject(self, kind: str, target: str, draw: float) -> None:
        """One fault, start to heal; ``draw`` (0-1, from the seeded schedule) sizes it."""
        t0 = time.monotonic()
        try:
            details = await self._action(kind, target, draw)
        finally:
            self._busy.discard(target)
        self.log.record("fault", kind=kind, target=target, t0=t0, t1=time.monotonic(),
                        **details)

    async def _action(self, kind: str, target: str, draw: float) -> dict[str, Any]:
        lease = self.config.lease
        fleet = self.fleet
        if kind in ("kill9", "term", "close"):
            if isinstance(fleet, ProcessFleet):
                details = await (fleet.kill9(target) if kind == "kill9" else fleet.term(target))
            else:
                details = await fleet.close(target)
            await anyio.sleep(draw)  # down a moment, then its next incarnation
            details["next"] = await fleet.spawn(target)
            return details
        if kind == "pause-long":  # past its lease: others adopt its sessions
            assert isinstance(fleet, ProcessFleet)
            return await fleet.pause(target, lease + 0.5 + 2.5 * draw)
        if kind == "pause-short":
            assert isinstance(fleet, ProcessFleet)
            return await fleet.pause(target, 0.3 + 1.2 * draw)
        if kind == "cancel":
            return await fleet.cancel(target)
        if kind == "api-latency":
            latency = 0.05 + 0.2 * draw  # round trips stay under status_timeout (docs/FLEET.md)
            await self.sim.post("/chaos/network", {"latency": latency, "jitter": 0.05})
            try:
                await anyio.sleep(2.0 + 3.0 * draw)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.sim.post("/chaos/network", {"latency": 0.0, "jitter": 0.0})
            return {"latency": latency}
        return await self._store_fault(kind, draw)

    async def _store_fault(self, kind: str, draw: float) -> dict[str, Any]:
        redis, proxy = self.redis, self.proxy
        assert redis is not None and proxy is not None
        if kind.startswith("redis-kill-"):
            mode = kind.removeprefix("redis-kill-")
            details: dict[str, Any] = {"mode": mode}
            if mode == "everysec":
                await redis.fsync("everysec")
                details["t_everysec"] = time.monotonic()
                await anyio.sleep(1.0 + draw)  # writes that may still be only in its buffer
            details["t_kill"] = time.monotonic()
            await redis.kill()
            if mode == "empty":
                redis.wipe()
            await anyio.sleep(0.2 + 1.5 * draw)
            await redis.start()  # appendfsync always again
            details["t_back"] = time.monotonic()
            return details
        if kind.startswith("redis-stop-"):
            # the store's timeout is 0.5 s: shorter pauses are absorbed, longer ones are outages
            seconds = 0.1 + 0.3 * draw if kind == "redis-stop-short" else 1.0 + 3.0 * draw
            redis.pause()
            try:
                await anyio.sleep(seconds)
            finally:
                redis.resume()
            return {"seconds": seconds}
        delay = 0.02 + 0.13 * draw  # redis-latency, each way
        proxy.delay = delay
        try:
            await anyio.sleep(2.0 + 4.0 * draw)
        finally:
            proxy.delay = 0.0
        return {"delay": delay}
