"""The run's redis-server: AOF with ``appendfsync always``, killed and started again in the
modes the nemesis asks for, paused and resumed, on one port and directory for the whole run."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path

from tests._redis import free_port

from ._procs import send, spawn, stop


class RedisProcess:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install -y redis-server")
        self.binary = binary
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start it (from what its directory holds) and wait until it answers PING."""
        self.process = await spawn(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder),
             "--loglevel", "warning"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: until it answers
            if await self.command(b"PING") == b"+PONG":
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    async def command(self, line: bytes) -> bytes | None:
        """One inline command; its first reply line, or None when it does not answer."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 0.5)
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            writer.write(line + b"\r\n")
            return (await asyncio.wait_for(reader.readline(), 0.5)).rstrip()
        except (OSError, asyncio.TimeoutError):
            return None
        finally:
            writer.close()

    async def fsync(self, mode: str) -> None:
        """``appendfsync`` from now on (``always`` or ``everysec``)."""
        reply = await self.command(b"CONFIG SET appendfsync " + mode.encode())
        if reply != b"+OK":
            raise RuntimeError(f"CONFIG SET appendfsync {mode}: {reply!r}")

    async def kill(self) -> None:
        """SIGKILL by its PID: only what is on disk survives."""
        process, self.process = self.process, None
        if process is not None:
            await stop(process, grace=0, first=signal.SIGKILL)

    def wipe(self) -> None:
        """Forget everything on disk (while it is down): the next start comes back empty."""
        for path in self.folder.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def pause(self) -> None:
        if self.process is not None:
            send(self.process, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            send(self.process, signal.SIGCONT)

    async def close(self) -> None:
        self.resume()
        await self.kill()
