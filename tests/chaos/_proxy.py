"""A TCP proxy on loopback between the workers and Redis, whose added latency the nemesis
switches on and off: every chunk is held ``delay`` seconds each way, order kept.

When Redis goes away (killed), each connection's upstream closes and the proxy closes its
client's side too, as a dead server would; new connections are refused while it is down.
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio


class LatencyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            async with anyio.create_task_group() as group:
                async def one_way(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                    await self._pipe(src, dst)
                    group.cancel_scope.cancel()  # either side gone: close both
                group.start_soon(one_way, reader, up_writer)
                group.start_soon(one_way, up_reader, writer)
        finally:
            for side in (writer, up_writer):
                side.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy until EOF, each chunk held ``delay`` seconds (as it was when the chunk came)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                dst.write(data)
                await dst.drain()

        delivering = loop.create_task(deliver())
        try:
            while data := await src.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
                if delivering.done():
                    break
            queue.put_nowait((loop.time() + self.delay, b""))
            await delivering
        except OSError:
            pass  # a side reset: the connection ends
        finally:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await delivering
