"""A worker: one OAuthManager and the user code around it, as a web app's worker would run it.

It starts sessions (some with ``expected_email``), tells the simulator's people which mailbox
it asked for, publishes each id, attaches to other workers' sessions (and, when restarted, to
all its predecessors'), awaits every handle and records all of it in its history. On stop
(SIGTERM for a process) it closes the manager gracefully, gives its handles ``close_wait``
seconds to resolve, and records the ones that did not.

``python -m tests.chaos._worker CONFIG NAME INDEX INCARNATION RUN_DIR BASE_URL STORE_URL UNTIL``
runs one as its own process (SIGUSR1: cancel a few of its pending handles). The harness runs
the same class in-process for a memory store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import anyio
import anyio.abc

from instantly_oauth_async import (
    ClientStateError,
    ConnectResult,
    OAuthManager,
    OutcomeLostError,
    PendingConnection,
    SessionCancelledError,
    Store,
    UnknownSessionError,
)
from instantly_oauth_async.redis import RedisStore
from tests._owner_worker import http_session

from ._config import API_KEY, Config, ip_for
from ._history import History, describe

Hint = Callable[[str, str], Awaitable[None]]


class Directory:
    """Session ids shared by the workers: one file per worker name, appended to by each of its
    incarnations in turn."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self.name = name
        self._seen: dict[str, int] = {}

    def publish(self, sid: str) -> None:
        with (self._folder / f"{self.name}.ids").open("a", encoding="ascii") as file:
            file.write(sid + "\n")

    def read(self, name: str) -> list[str]:
        path = self._folder / f"{name}.ids"
        if not path.exists():
            return []
        text = path.read_text(encoding="ascii")
        return text[: text.rfind("\n") + 1].split()

    def new_of_others(self) -> list[tuple[str, str]]:
        """``(name, sid)`` of the other workers' ids published since the last call."""
        found = []
        for path in sorted(self._folder.glob("*.ids")):
            name = path.stem
            if name == self.name:
                continue
            ids = self.read(name)
            found += [(name, sid) for sid in ids[self._seen.get(name, 0):]]
            self._seen[name] = len(ids)
        return found


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def outcome_fields(result: ConnectResult) -> dict[str, object]:
    return {"kind": result.status.value, "email": result.email, "reconciled": result.reconciled,
            "account": result.account is not None, "error": result.error,
            "account_error": result.account_error}


def exception_kind(exc: BaseException) -> str:
    for kind, types in (("lost", OutcomeLostError), ("closed", ClientStateError),
                        ("cancelled", SessionCancelledError), ("unknown", UnknownSessionError)):
        if isinstance(exc, types):
            return kind
    return "failed"


class Worker:
    def __init__(self, *, manager: OAuthManager, history: History, directory: Directory,
                 config: Config, index: int, names: list[str], hint: Hint | None,
                 rng: random.Random) -> None:
        self.manager = manager
        self.history = history
        self.directory = directory
        self.config = config
        self.index = index
        self.names = names
        self._hint = hint
        self._rng = rng
        self._closing = False
        self._open: dict[tuple[str, str], PendingConnection | None] = {}
        self._changed = anyio.Event()
        self._group: anyio.abc.TaskGroup | None = None

    async def run(self, stop: anyio.Event, until: float) -> None:
        """Start and attach until ``until`` (monotonic), then only await, until ``stop``."""
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._starter, until)
            group.start_soon(self._attacher, until)
            group.start_soon(self._sampler)
            for sid in self.directory.read(self.directory.name):  # my predecessors' sessions
                group.start_soon(self._attach, sid, 0.0)
            await stop.wait()
            await self._close()
            group.cancel_scope.cancel()

    async def _close(self) -> None:
        self._closing = True
        history = self.history
        history.record("closing", open=len(self._open), pending=self.manager.stats().pending)
        began = time.monotonic()
        # docs: aclose() waits at most the read margin + 2 s for reads on the wire
        with anyio.CancelScope(shield=True), anyio.move_on_after(10) as scope:
            await self.manager.aclose()
        history.record("closed", took=time.monotonic() - began, hung=scope.cancelled_caught)
        with anyio.move_on_after(self.config.close_wait):
            while self._open:  # woken by each handle that resolves
                await self._changed.wait()
        for sid, via in list(self._open):
            history.record("unresolved", sid=sid, via=via)

    def cancel_some(self) -> None:
        """Cancel one to three of the sessions this worker started and still awaits."""
        mine = [(sid, p) for (sid, via), p in self._open.items() if via == "start" and p]
        for sid, pending in self._rng.sample(mine, min(len(mine), self._rng.randint(1, 3))):
            self.history.record("cancel", sid=sid)
            pending.cancel()

    async def _starter(self, until: float) -> None:
        config, rng = self.config, self._rng
        n = 0
        while True:
            await anyio.sleep(rng.expovariate(1 / config.start_every))
            if self._closing or time.monotonic() >= until:
                return
            n += 1
            email = None
            if rng.random() < config.expected_p:
                email = f"{self.history.worker}-{self.history.incarnation}-{n}@chaos.io"
            provider = "microsoft" if rng.random() < config.microsoft_p else "google"
            self.history.record("start_call", n=n, expected_email=email, provider=provider)
            try:
                pending = await self.manager.start(provider, expected_email=email)
            except Exception as exc:  # noqa: BLE001 - recorded; the checker judges it
                self.history.record("start_err", n=n, **describe(exc))
                continue
            sid = pending.session.session_id
            self.history.record("start", n=n, sid=sid, expected_email=email,
                                closing=self._closing)
            if email is not None and self._hint is not None:
                try:
                    await self._hint(sid, email)
                except (OSError, aiohttp.ClientError) as exc:
                    self.history.record("hint_err", sid=sid, **describe(exc))
            self.directory.publish(sid)
            self._track(sid, "start", pending)

    async def _attacher(self, until: float) -> None:
        """Attach to other workers' sessions: the one worker each session names, and the others
        with ``attach_p``, each after a moment."""
        count = len(self.names)
        while not self._closing and time.monotonic() < until:
            for name, sid in self.directory.new_of_others():
                owner = self.names.index(name) if name in self.names else 0
                chosen = (owner + 1 + int(sid[:8], 16) % max(1, count - 1)) % count
                if chosen == self.index or self._rng.random() < self.config.attach_p:
                    assert self._group is not None
                    self._group.start_soon(self._attach, sid, self._rng.uniform(0.0, 1.5))
            await anyio.sleep(0.5)

    async def _attach(self, sid: str, delay: float) -> None:
        await anyio.sleep(delay)
        if self._closing:
            return
        self.history.record("attach_call", sid=sid)
        try:
            pending = await self.manager.attach(sid)
        except Exception as exc:  # noqa: BLE001 - recorded; the checker judges it
            self.history.record("attach_err", sid=sid, kind=exception_kind(exc),
                                **describe(exc))
            return
        self.history.record("attach", sid=sid)
        self._track(sid, "attach", pending)

    def _track(self, sid: str, via: str, pending: PendingConnection) -> None:
        assert self._group is not None
        self._open[(sid, via)] = pending
        self._group.start_soon(self._await, sid, via, pending)

    async def _await(self, sid: str, via: str, pending: PendingConnection) -> None:
        try:
            result = await pending
        except Exception as exc:  # noqa: BLE001 - recorded; the checker judges it
            self.history.record("result", sid=sid, via=via, kind=exception_kind(exc),
                                **describe(exc))
        else:
            self.history.record("result", sid=sid, via=via, **outcome_fields(result))
        self._open.pop((sid, via), None)
        self._changed.set()
        self._changed = anyio.Event()

    async def _sampler(self) -> None:
        while True:
            self.history.record("rss", kib=rss_kib(), pid=os.getpid(),
                                pending=self.manager.stats().pending, open=len(self._open),
                                tasks=len(asyncio.all_tasks()))
            await anyio.sleep(5.0)


def open_store(kind: str, url: str) -> Store:
    """A store a worker process can share with the others, by the name ``--store`` gives."""
    if kind == "redis":
        return RedisStore.from_url(url, timeout=0.5, retry_interval=0.2)
    if kind == "sqlite":  # a file in the run's folder; imported here: a newer module
        from instantly_oauth_async.sqlite import SQLiteStore  # noqa: PLC0415

        return SQLiteStore(url)
    raise ValueError(f"no shareable store {kind!r}")


async def hint_to(control: aiohttp.ClientSession, base_url: str, sid: str, email: str) -> None:
    async with control.post(f"{base_url}/chaos/hint", json={"sid": sid, "email": email},
                            timeout=aiohttp.ClientTimeout(total=2)) as response:
        response.raise_for_status()


async def main(argv: list[str]) -> None:
    config_json, name, index_s, inc_s, run_dir_s, base_url, store_url, until_s = argv
    logging.basicConfig(level=logging.WARNING,  # the library's warnings: the run's logs/ folder
                        format="%(created).3f %(levelname)s %(name)s: %(message)s")
    config, index, inc, run_dir = (Config.from_json(config_json), int(index_s), int(inc_s),
                                   Path(run_dir_s))
    history = History(run_dir / "history" / f"{name}.{inc}.jsonl", name, inc)
    stop = anyio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ip = ip_for(index, inc)
    until = float(until_s)  # monotonic: the same clock in every process of the host
    store = open_store(config.store, store_url)
    async with http_session(ip) as http, aiohttp.ClientSession() as control:
        manager = OAuthManager(API_KEY, base_url=base_url, store=store, session=http,
                               seed=hash((config.seed, index, inc)), **config.manager_kwargs())
        await manager.__aenter__()
        history.record("open", pid=os.getpid(), ip=ip)
        worker = Worker(manager=manager, history=history, directory=Directory(
            run_dir / "ids", name), config=config, index=index,
            names=[f"w{i}" for i in range(config.workers)],
            hint=lambda sid, email: hint_to(control, base_url, sid, email),
            rng=random.Random(f"{config.seed}:{name}:{inc}"))  # noqa: S311 - seeded
        loop.add_signal_handler(signal.SIGUSR1, worker.cancel_some)
        try:
            await worker.run(stop, until)
        except Exception as exc:
            history.record("crash", **describe(exc))
            raise
    with anyio.move_on_after(5):
        await store.aclose()
    history.record("exit")
    history.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
