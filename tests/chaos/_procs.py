"""Child processes of the run: started so that Linux ends them when the run's process dies
(``PR_SET_PDEATHSIG``), signalled and stopped only by their own PID."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import anyio

from tests._processes import _signal
from tests._redis import _die_with_parent


async def spawn(argv: Sequence[str], *, stdin: int | IO[Any] | None = asyncio.subprocess.DEVNULL,
                stdout: int | IO[Any] | None = asyncio.subprocess.DEVNULL,
                stderr: int | IO[Any] | None = None, cwd: Path | None = None,
                ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
        preexec_fn=_die_with_parent)  # one prctl call, no locks taken


def send(process: asyncio.subprocess.Process, number: int) -> None:
    """Signal the child by its PID, unless it has exited already."""
    _signal(process, number)


async def stop(process: asyncio.subprocess.Process, *, grace: float,
               first: int | None = None) -> int:
    """Wait ``grace`` seconds for it to exit (after ``first``, a signal, if given), then
    SIGKILL it; its exit status."""
    if first is not None:
        send(process, first)
    with anyio.move_on_after(grace):
        await process.wait()
    if process.returncode is None:
        send(process, signal.SIGKILL)
        await process.wait()
    assert process.returncode is not None
    return process.returncode
