"""A real redis-server on a free loopback port, started and stopped by PID."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to end it when the test process dies, however."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """``redis-server`` on a port and a directory of its own; :meth:`stop` and :meth:`start`
    keep both, so :meth:`restart` is the same server coming back.

    Without ``persistent`` it keeps nothing on disk: a restart comes back empty. With it, an
    append-only file fsynced before every reply (``appendonly yes``, ``appendfsync always``):
    a restart, even after SIGKILL, comes back with every write it acknowledged. ``args`` go to
    the server's command line as they are (``("--rename-command", "EVALSHA", "")`` makes a
    server without that command).
    """

    def __init__(self, args: Sequence[str] = (), *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            msg = "redis-server not found: run ./scripts/check, which installs it"
            raise RuntimeError(msg)
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = tuple(args)
        self.persistent = persistent
        self._dir = tempfile.TemporaryDirectory(prefix="iox-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own argv
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(("--appendonly", "yes", "--appendfsync", "always") if self.persistent
               else ("--appendonly", "no")),
             "--dir", self._dir.name, "--loglevel", "warning", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks taken
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: wait for the port to answer PING
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        msg = f"redis-server did not answer on port {self.port} within 10 s"
        raise RuntimeError(msg)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self) -> None:
        """SIGKILL by its PID: no shutdown save, only what is on disk survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Stop it and start it again on the same port and directory.

        Call it (and :meth:`start`) from the main thread, not ``anyio.to_thread``: the server
        is killed when the *thread* that started it ends (``PR_SET_PDEATHSIG``), and a worker
        thread ends when it has idled a while. It blocks until the server answers PING (tens
        of milliseconds).
        """
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()
