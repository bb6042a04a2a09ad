"""A real 3-master Redis Cluster on loopback, started and stopped by PID (issue 14).

Three ``redis-server --cluster-enabled yes`` masters, each on free ports (client and cluster
bus) in a temp dir of its own, joined by ``redis-cli --cluster create ... --cluster-replicas 0
--cluster-yes``; :meth:`RedisCluster.start` returns once every node's ``CLUSTER INFO`` says
``cluster_state:ok`` (bounded), :meth:`RedisCluster.close` kills each server by its PID and
removes the dirs. :meth:`RedisCluster.pause` and :meth:`RedisCluster.resume` send ``SIGSTOP`` and
``SIGCONT`` to every server by its PID: an outage in which connections open (the kernel accepts
them) but nothing answers, so each call runs into its timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial

from tests._redis import _die_with_parent, free_port

#: Bounds, seconds: each step fails loudly past its own, instead of hanging the test run.
_START_WITHIN = 10.0
_CREATE_WITHIN = 30.0
_OK_WITHIN = 20.0


class RedisCluster:
    """``masters`` cluster-enabled redis-servers without persistence, joined as one cluster."""

    def __init__(self, masters: int = 3, *, node_timeout_ms: int = 2000) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            msg = "redis-server or redis-cli not found: run ./scripts/check, which installs them"
            raise RuntimeError(msg)
        self.server_binary, self.cli_binary = server, cli
        self.ports = [free_port() for _ in range(masters)]
        self.bus_ports = [free_port() for _ in range(masters)]
        self._dirs = [tempfile.TemporaryDirectory(prefix="iox-cluster-") for _ in self.ports]
        self.processes: list[subprocess.Popen[bytes]] = []
        #: ``cluster-node-timeout``: a node silent longer than this is suspected to have failed
        #: (and a master with slots marked failed stays so for twice as long once it answers).
        self.node_timeout_ms = node_timeout_ms

    @property
    def url(self) -> str:
        """A startup node's URL for ``RedisCluster.from_url`` (the client finds the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def start(self) -> None:
        try:
            for port, bus, folder in zip(self.ports, self.bus_ports, self._dirs, strict=True):
                self.processes.append(subprocess.Popen(  # noqa: S603 - our own argv
                    [self.server_binary, "--port", str(port), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes", "--cluster-port", str(bus),
                     "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(self.node_timeout_ms),
                     "--save", "", "--appendonly", "no", "--dir", folder.name,
                     "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks
                ))
            for port in self.ports:
                self._until(partial(self._answers, port, "PING", "+PONG"),
                            _START_WITHIN, f"redis-server on port {port} did not answer")
            created = subprocess.run(  # noqa: S603 - our own argv
                [self.cli_binary, "--cluster", "create", *self.addresses,
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, timeout=_CREATE_WITHIN, check=False,
            )
            self._until(lambda: created.returncode == 0, 0,
                        f"redis-cli --cluster create failed: {created.stdout.decode()[-2000:]}")
            self.wait_ok()
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def pause(self) -> None:
        """``SIGSTOP`` every server, by its PID."""
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """``SIGCONT`` every server, by its PID (harmless for one not stopped)."""
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)

    def wait_ok(self, within: float = _OK_WITHIN) -> None:
        """Until every node reports ``cluster_state:ok`` (bounded by ``within`` seconds)."""
        for port in self.ports:
            self._until(partial(self._answers, port, "CLUSTER INFO", "cluster_state:ok"),
                        within, f"node {port} never reported cluster_state:ok")

    @staticmethod
    def _until(check: Callable[[], bool], within: float, failure: str) -> None:
        deadline = time.monotonic() + within
        while True:  # bounded: at least one check, then until the deadline
            if check():
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{failure} within {within:g} s")

    @classmethod
    def _answers(cls, port: int, command: str, expected: str) -> bool:
        return expected in cls._ask(port, command)

    @staticmethod
    def _ask(port: int, command: str) -> str:
        """One inline command's reply (raw RESP text), or '' when the node does not answer."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(command.encode() + b"\r\n")
                reply = b""
                while chunk := conn.recv(65536):  # a status line, or one bulk string
                    reply += chunk
                    if b"\r\n" not in reply:
                        continue
                    head = reply.index(b"\r\n")
                    if not reply.startswith(b"$") or len(reply) >= head + int(reply[1:head]) + 4:
                        break
                return reply.decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()  # SIGKILL ends a stopped process too
                process.wait(timeout=10)
        self.processes.clear()
        for folder in self._dirs:
            folder.cleanup()
