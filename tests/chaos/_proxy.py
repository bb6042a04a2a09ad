"""A TCP proxy on loopback between the workers and Redis, whose added latency the nemesis
switches on and off: every chunk is held ``delay`` seconds each way, order kept, and Redis's
answers ``answer_delay`` seconds more (a step that ran, whose reply comes late), from the
moment a request holding ``late_from`` passes, when that is set.

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
        self.answer_delay = 0.0
        #: ``(marker, seconds)``: once a request holding ``marker`` passes (its answer included),
        #: ``answer_delay`` becomes ``seconds``; one-shot.
        self.late_from: tuple[bytes, float] | None = None
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
                async def one_way(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                                  answers: bool) -> None:
                    await self._pipe(src, dst, answers)
                    group.cancel_scope.cancel()  # either side gone: close both
                group.start_soon(one_way, reader, up_writer, False)
                group.start_soon(one_way, up_reader, writer, True)
        finally:
            for side in (writer, up_writer):
                side.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    answers: bool) -> None:
        """Copy until EOF, each chunk held ``delay`` seconds (as it was when the chunk came),
        plus ``answer_delay`` on Redis's side (``answers``)."""
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
                if not answers and self.late_from is not None and self.late_from[0] in data:
                    self.answer_delay, self.late_from = self.late_from[1], None
                held = self.delay + (self.answer_delay if answers else 0.0)
                queue.put_nowait((loop.time() + held, data))
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
