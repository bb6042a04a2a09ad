"""Examples run as their own processes, the way their docstrings tell people to run them.

:func:`running` starts one with its stdout and stderr as pipes (as when piped to another
program), reads both line by line while it runs, and stops it by its PID at the end.
:func:`as_installed` gives the argv that runs a script or module as it runs after a normal
``pip install``: this checkout's editable install puts the repository root on ``sys.path`` (so
``import examples`` works anywhere); there only the library itself is importable.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from tests._redis import _die_with_parent
from tests._tree import LIBRARY, ROOT

# Drops the repository root (and the cwd entry of ``-c``) from sys.path, puts a folder holding
# only the library first, then runs the target as ``python FILE`` or ``python -m MODULE`` would.
_AS_INSTALLED = textwrap.dedent("""
    import os, runpy, sys
    root, lib, mode, target, *args = sys.argv[1:]
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != root]
    sys.path.insert(0, lib)
    sys.argv = [target, *args]
    if mode == "file":
        sys.path.insert(0, os.path.dirname(os.path.realpath(target)))
        runpy.run_path(target, run_name="__main__")
    else:
        sys.path.insert(0, os.getcwd())
        runpy.run_module(target, run_name="__main__", alter_sys=True)
""")


def as_installed(lib_dir: Path, mode: str, target: str, *args: str) -> list[str]:
    """argv for ``python FILE args`` (mode "file") or ``python -m MODULE args`` (mode "module")
    with only the library importable: ``lib_dir`` gets a link to the package and nothing else."""
    link = lib_dir / "instantly_oauth_async"
    if not link.exists():
        link.symlink_to(LIBRARY, target_is_directory=True)
    return [sys.executable, "-c", _AS_INSTALLED, str(ROOT), str(lib_dir), mode, target, *args]


def child_env(**extra: str) -> dict[str, str]:
    """This environment without what would hide a buffering bug or leak the checkout in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONUNBUFFERED", "PYTHONPATH", "INSTANTLY_API_KEY", "APP_PASSWORD")}
    env.update(extra)
    return env


class Output:
    """The lines a child wrote on one stream so far; :meth:`wait_for` waits for one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._changed = anyio.Event()

    async def pump(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():  # ends at EOF: when the child exits
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()
            self._changed = anyio.Event()
        self.closed = True
        self._changed.set()

    async def wait_for(self, pattern: str, nth: int = 1) -> str:
        """The ``nth`` line (counted from the start) matching ``pattern``; bound it with
        ``anyio.fail_after``."""
        seen = 0
        while True:  # each pass reads lines the child wrote; bounded by the caller's deadline
            matching = [line for line in self.lines if re.search(pattern, line)]
            if len(matching) >= nth:
                return matching[nth - 1]
            if self.closed:
                last = "\n".join(self.lines[-20:])
                raise AssertionError(f"output closed before {nth} x {pattern!r}; it ended:\n{last}")
            seen = len(self.lines)
            while len(self.lines) == seen and not self.closed:
                await self._changed.wait()

    def text(self) -> str:
        return "\n".join(self.lines)


class Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout = Output()
        self.stderr = Output()

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def wait(self) -> int:
        return await self.process.wait()


@asynccontextmanager
async def running(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stop_grace: float = 10
) -> AsyncIterator[Child]:
    """Run ``argv``; on leaving, SIGTERM it by PID, then SIGKILL if it lingers."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,  # one prctl call, no locks taken
    )
    assert process.stdout is not None and process.stderr is not None
    child = Child(process)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(child.stdout.pump, process.stdout)
            group.start_soon(child.stderr.pump, process.stderr)
            try:
                yield child
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(process, stop_grace)
    finally:
        if process.returncode is None:  # the readers failed first: still ours to stop
            with anyio.CancelScope(shield=True):
                await _stop(process, stop_grace)


async def _stop(process: asyncio.subprocess.Process, grace: float) -> None:
    _signal(process, signal.SIGTERM)
    with anyio.move_on_after(grace):
        await process.wait()
    if process.returncode is None:
        _signal(process, signal.SIGKILL)
        await process.wait()


def _signal(process: asyncio.subprocess.Process, number: int) -> None:
    """Signal the child by its PID unless it has exited already.

    Not ``process.terminate()``: that polls the child first, and a poll that reaps it before
    asyncio's child watcher does makes the watcher report "Unknown child process".
    """
    if process.returncode is not None:
        return
    try:  # WNOWAIT: look without reaping; a child that exited stays for asyncio to reap
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            os.kill(process.pid, number)
    except (ChildProcessError, ProcessLookupError):
        pass  # reaped already: asyncio has its exit code
