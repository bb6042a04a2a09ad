"""A guard for the default store: two processes of one host, each with its own in-process store,
spending one workspace's budgets would each spend all of them (``uvicorn --workers 4`` with
the default store sends up to four times the limits, and the server answers with 429s and IP
blocks). A manager on an in-process store says so in one WARNING naming the fix.

How: each process holds an exclusive advisory lock (``flock``) on a file of its own,
``<runtime dir>/instantly-oauth-async-<uid>/<workspace>/<pid>.lock``, while a manager of that
workspace is open in it (the runtime dir is ``$XDG_RUNTIME_DIR``, else the temporary
directory; the workspace is the hash the budgets' keys use, never the key). A manager that
opens looks at the other files there: one whose lock it cannot take belongs to a live process
(the kernel drops a lock with its process, however it ended), one it can take is a leftover,
removed. Managers of one process share its file, so one process never warns about itself. Where
``fcntl`` is missing (Windows) the guard does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

if hasattr(os, "getuid"):  # POSIX
    import fcntl

__all__ = ["Guard"]

logger = logging.getLogger("instantly_oauth_async")

#: What this process holds, by folder: its lock file's descriptor, the pid that opened it (a
#: forked child must open its own), and how many managers use it.
_held: dict[Path, tuple[int, int, int]] = {}
_warned: set[Path] = set()


def _folder(workspace: str) -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"instantly-oauth-async-{os.getuid()}" / workspace


class Guard:
    """One manager's share of its process's lock file for ``workspace`` (a hash)."""

    def __init__(self, workspace: str) -> None:
        self._folder = _folder(workspace) if hasattr(os, "getuid") else Path()
        self._holding = False

    def enter(self) -> None:
        """Hold this process's file; warn once if another live process holds one."""
        if self._holding or not hasattr(os, "getuid"):  # no flock on Windows
            return
        try:
            self._hold()
        except OSError as exc:  # an unwritable runtime dir: no guard, no failure
            logger.debug("default-store guard unavailable: %s", exc)
            return
        self._holding = True
        others = self._live_others()
        if others and self._folder not in _warned:
            _warned.add(self._folder)
            logger.warning(
                "another process of this host (pid %s) uses this workspace with its own "
                "in-process store: each process keeps its own budgets, so together they can "
                "send more than the limits allow (429s, then IP blocks). Share one store: "
                "SQLiteStore('/path/to/file.db') from instantly_oauth_async.sqlite on one "
                "host, RedisStore from instantly_oauth_async.redis on several",
                ", ".join(str(pid) for pid in others))

    def exit(self) -> None:
        """This manager is done; the last of its process lets go of the file."""
        if not self._holding:
            return
        self._holding = False
        fd, pid, users = _held[self._folder]
        if users > 1:
            _held[self._folder] = (fd, pid, users - 1)
            return
        del _held[self._folder]
        with contextlib.suppress(OSError):
            (self._folder / f"{pid}.lock").unlink()
        with contextlib.suppress(OSError):
            os.close(fd)

    def _hold(self) -> None:
        held = _held.get(self._folder)
        if held is not None and held[1] == os.getpid():
            _held[self._folder] = (held[0], held[1], held[2] + 1)
            return
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        pid = os.getpid()
        fd = os.open(self._folder / f"{pid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        _held[self._folder] = (fd, pid, 1)

    def _live_others(self) -> list[int]:
        live = []
        for path in self._folder.glob("*.lock"):
            if path.stem == str(os.getpid()):
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue  # gone meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                live.append(int(path.stem) if path.stem.isdigit() else -1)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()  # left by a process that ended
            finally:
                os.close(fd)
        return sorted(live)
