"""The workers of a run, and what the nemesis can do to each by name.

:class:`ProcessFleet`: one process per worker (``_worker.py``) on a store processes share; a
worker killed or stopped is started again as its next incarnation. :class:`MemoryFleet`: the
workers as managers in this process, sharing one ``MemoryStore`` (processes cannot share it);
the nemesis closes one gracefully and opens the next, or cancels handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp
import anyio
import anyio.abc
import attrs

from instantly_oauth_async import MemoryStore, OAuthManager
from tests._owner_worker import http_session
from tests._tree import ROOT

from ._config import API_KEY, Config, ip_for
from ._history import History, describe
from ._procs import send, spawn, stop
from ._worker import Directory, Worker, hint_to


class ProcessFleet:
    def __init__(self, config: Config, run_dir: Path, base_url: str, store_url: str,
                 until: float) -> None:
        self.config = config
        self.names = [f"w{i}" for i in range(config.workers)]
        self._run_dir = run_dir
        self._base_url = base_url
        self._store_url = store_url
        self._until = until
        self.incarnation = dict.fromkeys(self.names, 0)
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._stderr: list[IO[bytes]] = []

    async def __aenter__(self) -> ProcessFleet:
        for name in self.names:
            await self.spawn(name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.stop_all()
            for file in self._stderr:
                file.close()

    async def spawn(self, name: str) -> int:
        """Start the worker's next incarnation; returns once it opened its manager."""
        self.incarnation[name] += 1
        inc = self.incarnation[name]
        logs = self._run_dir / "logs"
        logs.mkdir(exist_ok=True)
        err = (logs / f"{name}.{inc}.err").open("wb")
        self._stderr.append(err)
        self._procs[name] = process = await spawn(
            [sys.executable, "-m", "tests.chaos._worker", self.config.to_json(), name,
             str(self.names.index(name)), str(inc), str(self._run_dir), self._base_url,
             self._store_url, repr(self._until)], stderr=err, cwd=ROOT)
        path = self._run_dir / "history" / f"{name}.{inc}.jsonl"
        with anyio.fail_after(30):
            while not (path.exists() and '"ev": "open"' in path.read_text(encoding="utf-8")):
                if process.returncode is not None:
                    raise RuntimeError(f"worker {name}#{inc} exited with {process.returncode}; "
                                       f"see {logs / f'{name}.{inc}.err'}")
                await anyio.sleep(0.05)  # a poll of its history file, bounded above
        return inc

    async def kill9(self, name: str) -> dict[str, Any]:
        inc = self.incarnation[name]
        await stop(self._procs[name], grace=0, first=signal.SIGKILL)
        return {"incarnation": inc}

    async def term(self, name: str) -> dict[str, Any]:
        """SIGTERM: the worker closes its manager gracefully; SIGKILL if it takes over 20 s."""
        inc = self.incarnation[name]
        rc = await stop(self._procs[name], grace=20, first=signal.SIGTERM)
        return {"incarnation": inc, "rc": rc}

    async def pause(self, name: str, seconds: float) -> dict[str, Any]:
        process = self._procs[name]
        send(process, signal.SIGSTOP)
        try:
            await anyio.sleep(seconds)
        finally:
            send(process, signal.SIGCONT)
        return {"incarnation": self.incarnation[name], "seconds": seconds}

    async def cancel(self, name: str) -> dict[str, Any]:
        send(self._procs[name], signal.SIGUSR1)
        return {"incarnation": self.incarnation[name]}

    async def stop_all(self) -> None:
        async with anyio.create_task_group() as group:
            for process in self._procs.values():
                if process.returncode is None:
                    group.start_soon(lambda p: stop(p, grace=20, first=signal.SIGTERM), process)


@attrs.define
class _Slot:
    name: str
    incarnation: int
    worker: Worker
    stop: anyio.Event
    done: anyio.Event


class MemoryFleet:
    def __init__(self, config: Config, run_dir: Path, base_url: str, until: float) -> None:
        self.config = config
        self.names = [f"w{i}" for i in range(config.workers)]
        self.store = MemoryStore()
        self._run_dir = run_dir
        self._base_url = base_url
        self._until = until
        self.incarnation = dict.fromkeys(self.names, 0)
        self._slots: dict[str, _Slot] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self._stack = contextlib.AsyncExitStack()
        self._control: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> MemoryFleet:
        self._control = await self._stack.enter_async_context(aiohttp.ClientSession())
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        for name in self.names:
            await self.spawn(name)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        with anyio.CancelScope(shield=True):
            await self.stop_all()
        await self._stack.__aexit__(exc_type, exc, tb)

    async def spawn(self, name: str) -> int:
        assert self._group is not None and self._control is not None
        self.incarnation[name] += 1
        inc, index, control = self.incarnation[name], self.names.index(name), self._control
        ip = ip_for(index, inc)
        http = http_session(ip)
        manager = OAuthManager(API_KEY, base_url=self._base_url, store=self.store, session=http,
                               seed=hash((self.config.seed, index, inc)),
                               **self.config.manager_kwargs())
        await manager.__aenter__()
        history = History(self._run_dir / "history" / f"{name}.{inc}.jsonl", name, inc)
        history.record("open", pid=os.getpid(), ip=ip)
        worker = Worker(
            manager=manager, history=history, directory=Directory(self._run_dir / "ids", name),
            config=self.config, index=index, names=self.names,
            hint=lambda sid, email: hint_to(control, self._base_url, sid, email),
            rng=random.Random(f"{self.config.seed}:{name}:{inc}"))  # noqa: S311 - seeded
        slot = _Slot(name, inc, worker, anyio.Event(), anyio.Event())
        self._slots[name] = slot
        self._group.start_soon(self._run, slot, http)
        return inc

    async def _run(self, slot: _Slot, http: aiohttp.ClientSession) -> None:
        try:
            await slot.worker.run(slot.stop, self._until)
        except Exception as exc:  # noqa: BLE001 - the checker reports it
            slot.worker.history.record("crash", **describe(exc))
        finally:
            with anyio.CancelScope(shield=True):
                await http.close()
            slot.worker.history.record("exit")
            slot.worker.history.close()
            slot.done.set()

    async def close(self, name: str) -> dict[str, Any]:
        """Close the worker's manager gracefully (as on SIGTERM) and wait for it to end."""
        slot = self._slots[name]
        began = time.monotonic()
        slot.stop.set()
        await slot.done.wait()  # bounded: Worker._close bounds aclose() and the handles' wait
        return {"incarnation": slot.incarnation, "took": time.monotonic() - began}

    async def cancel(self, name: str) -> dict[str, Any]:
        slot = self._slots[name]
        slot.worker.cancel_some()
        return {"incarnation": slot.incarnation}

    async def stop_all(self) -> None:
        async with anyio.create_task_group() as group:
            for slot in self._slots.values():
                if not slot.done.is_set():
                    group.start_soon(self.close, slot.name)
