"""The connection behind ``SQLiteStore``: one worker thread per store object, which owns the
connection, runs one short transaction per job, and, while anything waits on the registry,
polls the file for other connections' changes. The event loop only hands it jobs and awaits
their answers. See ``instantly_oauth_async.sqlite`` for what the store guarantees, and
``_sqlite_schema`` for the file's tables."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeAlias, TypeVar

import anyio

from .._limits.clock import Clock
from .._stores.store import StoreError
from .._wire.exceptions import ClientStateError
from ._schema import busy, network_fs, setup, store_error

__all__ = ["CHANGES_KEPT", "Busy", "Database", "OnChanges"]

logger = logging.getLogger("instantly_oauth_async")
T = TypeVar("T")
#: Called on the event loop with the notices other connections wrote (namespace, session),
#: whether some were missed, and the error the poll met (the file replaced, ...), if any.
OnChanges: TypeAlias = Callable[[list[tuple[str, str]], bool, "BaseException | None"], None]

#: How many notices the file keeps; a watcher further behind wakes all its waiters.
CHANGES_KEPT: Final = 4096
_NUDGE: Final = "nudge"  # a job that only wakes the thread (to start polling)


class Busy(Exception):
    """Internal: another connection held the write lock for longer than ``lock_timeout``."""


class Database:
    """One SQLite file, one connection, one worker thread; a transaction per :meth:`run`.

    ``clock`` times every decision, read inside the transaction once the write lock is held,
    so successive decisions of every process on the file are timed in the order they commit.
    ``system_clock`` says it is the host's CLOCK_MONOTONIC (times are then moved after a
    reboot, see ``_sqlite_schema.setup``)."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock, system_clock: bool,
                 lock_timeout: float, synchronous: str, poll_interval: float) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.clock = clock
        self._system_clock = system_clock
        self._lock_timeout = lock_timeout
        self._synchronous = synchronous
        self._interval = poll_interval
        self._pid = os.getpid()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._watcher: tuple[asyncio.AbstractEventLoop, OnChanges] | None = None
        # The worker thread's alone:
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._broken: str | None = None  # the file was deleted or replaced: for good
        self._pending: list[int] = []  # notices this transaction wrote
        self._mine: set[int] = set()  # notices this connection wrote, not read back yet
        self._last_seq = 0  # the last notice read (or written in turn) by this connection
        self._version: int | None = None  # PRAGMA data_version at the last look
        self._writes = 0

    def __repr__(self) -> str:
        return f"<Database {self.path}>"

    # -- on the event loop ---------------------------------------------------------------------

    async def run(self, job: Callable[[sqlite3.Connection, float], T], *, write: bool = True
                  ) -> T:
        """``job(connection, now)`` in one transaction (``BEGIN IMMEDIATE`` when ``write``) on
        the worker thread. Raises :class:`Busy` past ``lock_timeout``, :class:`StoreError` for
        an error of the database, ``ClientStateError`` once closed."""
        result: T = await self._submit(self._transact, job, write)
        return result

    def watch(self, on_changes: OnChanges | None) -> None:
        """Poll every ``poll_interval`` (real time) and call ``on_changes`` on this event loop
        when another connection wrote notices (or a poll failed); None stops polling."""
        if on_changes is None:
            self._watcher = None
            return
        self._watcher = (asyncio.get_running_loop(), on_changes)
        self._start()
        self._jobs.put(_NUDGE)

    async def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closing:
            raise ClientStateError("the SQLite store is closed")
        self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        try:
            with anyio.CancelScope(shield=True):  # short by lock_timeout; its answer must come
                await asyncio.wait({future})
        except BaseException:  # cancelled by asyncio itself, past the shield: nobody awaits it
            future.add_done_callback(_retrieve)
            raise
        return future.result()

    def _start(self) -> None:
        if os.getpid() != self._pid:  # forked (gunicorn --preload): never touch the parent's
            self._pid, self._thread, self._conn = os.getpid(), None, None
            self._jobs = queue.SimpleQueue()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, daemon=True,
                                            name="instantly-oauth-async sqlite")
            self._thread.start()

    async def aclose(self) -> None:
        """Close the connection on its thread, after the jobs already handed to it, and end
        the thread; later steps raise ``ClientStateError``."""
        if self._closing:
            return
        self._watcher = None
        if self._thread is not None and os.getpid() == self._pid:
            await self._submit(self._close)
            self._jobs.put(None)
        self._closing = True

    # -- on the worker thread ------------------------------------------------------------------

    def _serve(self) -> None:
        next_poll = 0.0
        while True:
            watcher = self._watcher
            timeout = None
            if watcher is not None:
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self._interval
                    self._tick(*watcher)
                timeout = max(0.0, next_poll - time.monotonic())
            try:
                item = self._jobs.get(timeout=timeout)
            except queue.Empty:
                continue
            if item is None:
                return
            if item == _NUDGE:
                continue
            fn, args, loop, future = item
            try:
                ok, value = True, fn(*args)
            except BaseException as exc:  # noqa: BLE001 - every failure goes to the awaiter
                ok, value = False, exc
            _answer(loop, future, ok, value)

    def _tick(self, loop: asyncio.AbstractEventLoop, on_changes: OnChanges) -> None:
        try:
            found, missed, error = *self._poll(), None
        except (StoreError, Busy) as exc:
            found, missed, error = [], False, exc
        if found or missed or error is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(on_changes, found, missed, error)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        if self._broken is not None:
            raise StoreError(self._broken, code="replaced")
        if self._conn is None:
            try:
                self._conn = self._open()
            except (sqlite3.Error, OSError) as exc:
                raise store_error(self.path, exc) from exc
        self._check_identity()
        return self._conn

    def _check_identity(self) -> None:
        """The path still names the file this connection opened (a ``stat()``)."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._identity
        except FileNotFoundError:
            same = False
        if same:
            return
        # Never closed: closing the last connection to the old file would checkpoint it and
        # delete its WAL by name, which is now the new file's.
        _abandon(self._conn)
        self._conn = None
        self._broken = (
            f"the SQLite store {self.path} was deleted or replaced while this process used it: "
            "the new file knows nothing of the slots, blocks and sessions the old one held. "
            "Restart every process using it (after a window, so that what the old file "
            "counted has passed)")
        logger.error("%s", self._broken)
        raise StoreError(self._broken, code="replaced")

    def _open(self) -> sqlite3.Connection:
        # Made here with owner-only permissions (it holds sessions' links and outcomes); SQLite
        # gives its -wal and -shm files the permissions of the database.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        kind = network_fs(self.path)
        if kind is not None:
            logger.warning("the SQLite store %s is on a network file system (%s): SQLite's "
                           "locks and WAL's shared memory work only among the processes of "
                           "one host; never share the file between hosts", self.path, kind)
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                               check_same_thread=True)
        try:
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            self._retrying(lambda: _use_wal(conn, self.path))
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._retrying(lambda: self._transaction(conn, self._setup, True))
            self._version = conn.execute("PRAGMA data_version").fetchone()[0]
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection, now: float) -> None:
        setup(conn, now, self.path, system_clock=self._system_clock)
        self._last_seq = int(conn.execute("SELECT max(seq) FROM changes").fetchone()[0] or 0)
        self._mine.clear()

    def _retrying(self, fn: Callable[[], T]) -> T:
        """``fn`` again while the database is locked, up to ``lock_timeout`` (real time), with
        short random sleeps: finer than SQLite's own busy handler, which sleeps up to 100 ms."""
        deadline, delay = time.monotonic() + self._lock_timeout, 0.0002
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise Busy(f"{self.path} locked for over {self._lock_timeout:g} s") from exc
            time.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, no secret
            delay = min(delay * 2, 0.004)

    def _transaction(self, conn: sqlite3.Connection,
                     job: Callable[[sqlite3.Connection, float], T], write: bool) -> T:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        self._pending.clear()
        try:
            result = job(conn, self.clock.monotonic())
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._pending.clear()
            raise
        for seq in self._pending:  # ours: the poll skips them (our waiters woke already)
            if seq == self._last_seq + 1:
                self._last_seq = seq
            else:
                self._mine.add(seq)
        self._pending.clear()
        if len(self._mine) > CHANGES_KEPT:  # nobody polls: keep what the table still holds
            self._mine = set(sorted(self._mine)[-CHANGES_KEPT:])
        return result

    def _transact(self, job: Callable[[sqlite3.Connection, float], T], write: bool) -> T:
        conn = self._connection()
        try:
            result = self._retrying(lambda: self._transaction(conn, job, write))
            if write:
                self._writes += 1
                if self._writes % 512 == 0:
                    self._retrying(lambda: self._transaction(conn, _prune, True))
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc
        return result

    def changed(self, conn: sqlite3.Connection, ns: str, sid: str) -> None:
        """Within a job: tell the watchers of every connection that ``(ns, sid)`` changed."""
        cursor = conn.execute("INSERT INTO changes (ns, sid) VALUES (?, ?)", (ns, sid))
        seq = int(cursor.lastrowid or 0)
        self._pending.append(seq)
        if seq % 64 == 0:
            conn.execute("DELETE FROM changes WHERE seq <= ?", (seq - CHANGES_KEPT,))

    def _poll(self) -> tuple[list[tuple[str, str]], bool]:
        """The notices other connections wrote since the last poll, and whether some were
        missed (more than :data:`CHANGES_KEPT` behind); one ``PRAGMA data_version`` and a
        ``stat()`` when the file has not changed."""
        conn = self._connection()
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return [], False
            rows = conn.execute("SELECT seq, ns, sid FROM changes WHERE seq > ? ORDER BY seq",
                                (self._last_seq,)).fetchall()
        except sqlite3.Error as exc:
            if busy(exc):
                return [], False  # the next poll reads them
            raise store_error(self.path, exc) from exc
        self._version = version
        missed = bool(rows) and rows[0][0] > self._last_seq + 1
        found = []
        for seq, ns, sid in rows:
            if seq in self._mine:
                self._mine.discard(seq)
            else:
                found.append((ns, sid))
        if rows:
            self._last_seq = rows[-1][0]
            if self._mine:
                self._mine = {seq for seq in self._mine if seq > self._last_seq}
        return found, missed


def _answer(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], ok: bool,
            value: Any) -> None:
    def settle() -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody awaits it
        loop.call_soon_threadsafe(settle)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # looked at: asyncio does not report it as never retrieved


_ABANDONED: list[sqlite3.Connection] = []


def _abandon(conn: sqlite3.Connection | None) -> None:
    """Keep a connection open for the life of the process, never closed, even as the
    interpreter exits (one reference more than anything will ever drop, on CPython)."""
    if conn is not None:
        _ABANDONED.append(conn)
        with contextlib.suppress(AttributeError, OSError):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


def _use_wal(conn: sqlite3.Connection, path: str) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise StoreError(f"the SQLite store {path} cannot use WAL mode (journal_mode is "
                         f"{mode and mode[0]})", code="journal_mode")


def _prune(conn: sqlite3.Connection, now: float) -> None:
    """What no step will read again: slots back, askers gone, blocks over, entries past their
    retention (each step prunes what it touches; this catches what nobody touches any more)."""
    conn.execute("DELETE FROM slots WHERE until <= ?", (now,))
    conn.execute("DELETE FROM line WHERE due <= ?", (now,))
    conn.execute("DELETE FROM blocks WHERE until <= ?", (now,))
    conn.execute("DELETE FROM entries WHERE forget_at <= ?", (now,))
