"""One host, many processes, no server: a store in one SQLite file (standard library only).

::

    from instantly_oauth_async.sqlite import SQLiteStore

    async with SQLiteStore("/var/lib/myapp/instantly.db") as store, \\
            OAuthManager(api_key, store=store) as manager: ...

Every process of the host that opens the same file (``uvicorn --workers 4``, gunicorn, several
scripts) shares what ``RedisStore`` shares across a fleet: the init budgets (workspace and IP,
per provider) and the standard budget, with leases and holds and timestamped releases; the fair
line of askers across processes; blocks learned from 429s (kept in the file, so also honoured by
a process started, or restarted, after the 429); the breakers, with one half-open probe for the
whole host; and the session registry (:class:`SQLiteRegistry`, ``store.registry``): leases,
fences, adoption, hand-over on close, write-ahead outcomes, retention.

**Transactions.** Each decision is one short ``BEGIN IMMEDIATE`` transaction in WAL mode (reads
need no lock; writers queue for the file's write lock, held for well under a millisecond). A
process killed at any moment, inside a transaction too, leaves the file as it was before that
transaction or after it: SQLite rolls an unfinished one back. ``synchronous=NORMAL`` (the
default) makes a commit durable against a crash of the process, not of the host (a power cut
may lose the last transactions, like Redis's ``appendfsync everysec``); pass
``synchronous="FULL"`` to sync every commit.

**Threading.** The standard library's ``sqlite3`` on one worker thread per store object, which
holds the connection; the event loop only hands it jobs and awaits their answers, so it never
blocks on the disk or on a lock. Why not ``aiosqlite``: it does the same (a thread per
connection and a queue) with one more dependency, and costs one hop to its thread and back per
statement, where a decision here is one job (eight to twelve statements, one hop). Measured on
a take-sized transaction (ten statements): ``aiosqlite`` 0.61-0.76 ms p50 and 730-790 us of CPU
a transaction, one job 0.50 ms and 500 us. And with a statement per hop, the file's write lock
stays held while the event loop runs other tasks between the statements, so every process on
the file waits on the busiest event loop of the host; one job holds it for the statements only.

**Locks.** A writer waiting for the lock retries with short random sleeps (a fraction of a
millisecond, up to 4 ms; SQLite's own busy handler sleeps up to 100 ms) for at most
``lock_timeout`` seconds (5). Past that (another process holds the lock: stopped with SIGSTOP
inside a transaction, or another program's long transaction), a budget answers "wait and ask
again" (nothing is spent, nothing is granted), a breaker's admission says wait, a block is kept
in this process and written with the next transaction that gets through, a release or a
verdict is dropped (the slot comes back after its hold; a probe after ``probe_timeout``), and
the registry raises ``RegistryUnavailableError`` (retry), as for a Redis outage.

**Time.** Every decision is timed by CLOCK_MONOTONIC (``time.monotonic``), which every process
of a host reads alike (seconds since boot on Linux) and which never jumps, where the wall clock
does (NTP, an operator). It restarts at a reboot, while the file lives on: a store opening the
file after one (Linux: another ``/proc/sys/kernel/random/boot_id``; elsewhere: a clock reading
lower than the last one stored) moves every stored time to the new boot by the wall clock's
difference between the boots (a 24 h IP block stays 24 h; a dead owner's lease is over). An
injected ``clock=`` (tests: ``FakeClock``) must be one every store on the file shares.

**Watchers.** There is no pub/sub: ``claim``, ``release`` and ``decide`` append a notice to a
table in their transaction. While a task of this process waits on the registry, the store's
thread reads ``PRAGMA data_version`` every ``poll_interval`` (50 ms) and, only when another
connection committed since, the new notices (one indexed query); it wakes the event loop only
for the waiters they name. A change made through this store object wakes its waiters at once;
one made by another process is seen at most ``poll_interval`` plus a transaction after its
commit (measured across processes: 28 ms p50, 53 ms p99, under the 250 ms goal). The cost: 20
``stat()`` calls and pragmas a second on the store's thread while anything waits, about 0.3% of
one core (measured); nothing when nothing waits.

**Errors.** A full disk, or a database at its ``max_page_count``, raises :class:`StoreError`
(code ``SQLITE_FULL``) from the step that needed room, and nothing is decided (a take grants
nothing, an outcome is not stored); the store works again once there is room. A read-only file,
directory or file system raises ``StoreError`` (``SQLITE_READONLY``), a missing directory
(``PermissionError``, ``SQLITE_CANTOPEN``) or a file that is not a database
(``SQLITE_NOTADB``) likewise, all as the store opens (``async with``, or its first step: it
writes its tables as it opens). Any of these reach the caller of ``start()``, ``budget.slot()``
or a poll, as a Redis error reply does.

**A file deleted or replaced** while the store is open (checked by the file's device and inode
at every transaction and poll) raises ``StoreError`` (code ``replaced``) from then on, for good:
a new file knows nothing of what the old one spent, so carrying on could overfill a window.
The old connection is never closed (closing it would delete the WAL by its name, by then the
new file's). Recovery: restart every process of the host on the file, a window plus the longest
hold after it happened (95 s with the defaults). To start afresh, stop every process and delete
the file with its ``-wal`` and ``-shm`` files; a file deleted without its WAL while another
process still has it open may come back corrupt.

**Not supported: one file shared by several hosts** (NFS, SMB, any network file system).
SQLite's locks are unreliable there, WAL's shared memory does not span hosts, and each host has
its own CLOCK_MONOTONIC, so their times mean nothing to each other. A file on a network file
system logs a WARNING when opened. For several hosts, use ``RedisStore``.

**Fork.** A store used before a fork (gunicorn ``--preload``) opens its own connection and
thread in the child at its first step there; the parent's are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import sqlite3
from collections.abc import Sequence
from types import TracebackType
from typing import Literal

import attrs

from .._limits import breaker as _breaker
from .._limits.breaker import Admission, BreakerPolicy, BreakerTransition, CircuitState
from .._limits.clock import Clock, SystemClock
from .._stores.registry import RegistryUnavailableError as RegistryUnavailableError
from .._stores.store import MemoryStore
from .._stores.store import StoreError as StoreError
from .._wire.exceptions import ConfigurationError
from .._wire.models import RateLimit
from . import _budgets
from ._claims import SQLiteClaims
from ._db import Busy, Database
from ._registry import SQLiteRegistry as SQLiteRegistry

__all__ = ["SQLiteStore"]

logger = logging.getLogger("instantly_oauth_async")

#: After the lock was held past ``lock_timeout``: ask again this much later (seconds).
_RETRY = 0.05

Specs = Sequence[tuple[str, RateLimit]]


class SQLiteStore:
    """A :class:`~instantly_oauth_async.Store` in one SQLite file, for the processes of one
    host (see the module). ``path`` is made (mode 0600) when missing; its directory must
    exist. ``lock_timeout``: the longest a step waits for another process's write lock;
    ``poll_interval``: how often watchers look for other processes' changes (seconds)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        lock_timeout: float = 5.0,
        poll_interval: float = 0.05,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        if not 0 < lock_timeout < math.inf:
            raise ConfigurationError("lock_timeout must be a positive number of seconds")
        if not 0 < poll_interval <= 0.25:
            raise ConfigurationError("poll_interval must be from 0 to 0.25 seconds")
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError('synchronous must be "NORMAL" or "FULL"')
        self.clock: Clock = clock or SystemClock()
        self._db = Database(path, clock=self.clock, system_clock=clock is None,
                            lock_timeout=float(lock_timeout), synchronous=synchronous,
                            poll_interval=float(poll_interval))
        self._registry = SQLiteRegistry(self._db)
        self._claims = SQLiteClaims(self._db)
        self._local = MemoryStore(self.clock)  # blocks not written yet (the lock was held)
        self._unwritten: dict[str, float] = {}  # those blocks: key -> until
        self._members = f"{secrets.token_hex(6)}:"
        self._serial = 0

    @property
    def path(self) -> str:
        """The database file, as given."""
        return self._db.path

    @property
    def registry(self) -> SQLiteRegistry:
        """The session registry of every process on the file (closed with the store)."""
        return self._registry

    @property
    def claims(self) -> SQLiteClaims:
        """The connect guard of the host's web flows (``instantly_oauth_async.web``)."""
        return self._claims

    def __repr__(self) -> str:
        return f"<SQLiteStore {self._db.path}>"

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def open(self) -> None:
        """Open the file now (made when missing, its tables too), rather than at the first
        step: ``async with`` does this, so a path that cannot serve raises ``StoreError``
        there. A lock held past ``lock_timeout`` raises ``StoreError`` here too."""
        try:
            await self._db.run(lambda conn, now: None, write=False)
        except Busy as exc:
            raise StoreError(f"the SQLite store {self._db.path} stayed locked by another "
                             "process for longer than lock_timeout", code="locked") from exc

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the registry's watcher (its waiters wake), then close the connection; later
        steps raise ``ClientStateError``."""
        await self._registry.aclose()
        await self._db.aclose()

    # -- budgets ---------------------------------------------------------------------------------

    def _unwritten_blocks(self) -> dict[str, float]:
        """The blocks this process kept while the lock was held elsewhere (a copy, for a job
        to write: the job runs on the worker thread)."""
        return dict(self._unwritten)

    def _wrote(self, blocks: dict[str, float]) -> None:
        for key, until in blocks.items():
            if self._unwritten.get(key) == until:
                del self._unwritten[key]

    async def take(self, specs: Specs, block_keys: Sequence[str], *, lease: str | None = None,
                   hold: float = 0.0, asker: str | None = None) -> tuple[float, bool]:
        """Implements [`Store.take`][instantly_oauth_async.Store.take]."""
        if await self._local.blocked_for(block_keys) > 0:
            return await self.blocked_for(block_keys), True
        member, unwritten = self._member(), self._unwritten_blocks()

        def job(conn: sqlite3.Connection, now: float) -> tuple[float, bool]:
            _budgets.write_blocks(conn, unwritten, now)
            return _budgets.take(conn, now, specs, block_keys, lease, hold, asker, member)

        try:
            result = await self._db.run(job)
        except Busy:
            return _RETRY, False
        self._wrote(unwritten)
        return result

    async def take_gated(self, specs: Specs, block_keys: Sequence[str],
                         breaker: tuple[str, BreakerPolicy], *, lease: str | None = None,
                         hold: float = 0.0, asker: str | None = None
                         ) -> tuple[float, bool, Admission]:
        """Implements [`Store.take_gated`][instantly_oauth_async.Store.take_gated]."""
        if await self._local.blocked_for(block_keys) > 0:
            return await self.blocked_for(block_keys), True, Admission(True)
        key, policy = breaker
        member, unwritten = self._member(), self._unwritten_blocks()

        def job(conn: sqlite3.Connection, now: float) -> tuple[float, bool, Admission]:
            _budgets.write_blocks(conn, unwritten, now)
            state = _budgets.load_breaker(conn, key)
            admission, _ = _breaker.admit(state, policy, now)
            if not admission.allowed:
                return admission.wait, False, admission
            wait, blocked = _budgets.take(conn, now, specs, block_keys, lease, hold, asker,
                                          member)
            if wait > 0 and admission.probe:  # not sent: the circuit stays half open, no probe
                _breaker.release(state, probe=True)
                admission = Admission(True)
            _budgets.save_breaker(conn, key, state)
            return wait, blocked, admission

        try:
            result = await self._db.run(job)
        except Busy:
            return _RETRY, False, Admission(True)
        self._wrote(unwritten)
        return result

    def _member(self) -> str:
        self._serial += 1
        return f"{self._members}m{self._serial}"

    async def leave(self, specs: Specs, asker: str) -> None:
        """Implements [`Store.leave`][instantly_oauth_async.Store.leave]."""
        def job(conn: sqlite3.Connection, now: float) -> None:
            conn.execute("DELETE FROM line WHERE budget = ? AND asker = ?", (specs[0][0], asker))

        with contextlib.suppress(Busy):  # else its place lapses at its due time plus the grace
            await self._db.run(job)

    async def release(self, specs: Specs, lease: str) -> None:
        """Implements [`Store.release`][instantly_oauth_async.Store.release]."""
        def job(conn: sqlite3.Connection, now: float) -> None:
            for key, limit in specs:
                conn.execute("INSERT OR REPLACE INTO slots (budget, member, held, until) "
                             "VALUES (?, ?, 0, ?)", (key, lease, now + limit.window))

        try:
            await self._db.run(job)
        except Busy:
            logger.debug("a release was dropped (the lock was held): its slot comes back "
                         "when its hold runs out")

    # -- blocks ----------------------------------------------------------------------------------

    async def block(self, keys: Sequence[str], seconds: float) -> None:
        """Implements [`Store.block`][instantly_oauth_async.Store.block]."""
        seconds = max(0.0, float(seconds))
        await self._local.block(keys, seconds)
        until = self.clock.monotonic() + seconds
        for key in keys:
            self._unwritten[key] = max(self._unwritten.get(key, -math.inf), until)
        unwritten = self._unwritten_blocks()

        def job(conn: sqlite3.Connection, now: float) -> None:
            _budgets.write_blocks(conn, unwritten, now)

        try:
            await self._db.run(job)
        except Busy:
            logger.warning("a block of %.0f s is kept in this process until the SQLite store's "
                           "lock is free again", seconds)
            return
        self._wrote(unwritten)

    async def blocked_for(self, keys: Sequence[str]) -> float:
        """Implements [`Store.blocked_for`][instantly_oauth_async.Store.blocked_for]."""
        local = await self._local.blocked_for(keys)

        def job(conn: sqlite3.Connection, now: float) -> float:
            return _budgets.blocked(conn, keys, now)

        try:
            shared = await self._db.run(job, write=False)
        except Busy:
            shared = 0.0
        return max(local, shared)

    # -- breakers --------------------------------------------------------------------------------

    async def breaker_admit(self, key: str, policy: BreakerPolicy) -> Admission:
        """Implements [`Store.breaker_admit`][instantly_oauth_async.Store.breaker_admit]."""
        def job(conn: sqlite3.Connection, now: float) -> Admission:
            state = _budgets.load_breaker(conn, key)
            admission, _ = _breaker.admit(state, policy, now)
            if admission.allowed and state.state is not CircuitState.CLOSED:
                _budgets.save_breaker(conn, key, state)
            return admission

        try:
            return await self._db.run(job)
        except Busy:
            return Admission(False, wait=_RETRY)

    async def breaker_record(self, key: str, policy: BreakerPolicy, *, success: bool,
                             probe: bool, retry_after: float | None = None, quiet: bool = False
                             ) -> BreakerTransition | None:
        """Implements [`Store.breaker_record`][instantly_oauth_async.Store.breaker_record]."""
        def job(conn: sqlite3.Connection, now: float) -> BreakerTransition | None:
            state = _budgets.load_breaker(conn, key)
            old = state.state
            reason = _breaker.record(state, policy, now, success=success, probe=probe,
                                     retry_after=retry_after)
            _budgets.save_breaker(conn, key, state)
            if reason is None or state.state is old:
                return None
            return BreakerTransition(key, old, state.state, now, reason)

        def changes(conn: sqlite3.Connection, now: float) -> bool:
            state = _budgets.load_breaker(conn, key)
            before = attrs.evolve(state)
            _breaker.record(state, policy, now, success=success, probe=probe,
                            retry_after=retry_after)
            return state != before

        try:
            # Most verdicts are a success on a closed breaker with no failures counted, which
            # changes nothing: a read (no write lock) tells, and only a change is written.
            if success and not await self._db.run(changes, write=False):
                return None
            return await self._db.run(job)
        except Busy:
            logger.warning("a breaker's verdict was dropped: the SQLite store's lock was held "
                           "longer than lock_timeout")
            return None

    async def breaker_release(self, key: str, *, probe: bool) -> None:
        """Implements [`Store.breaker_release`][instantly_oauth_async.Store.breaker_release]."""
        def job(conn: sqlite3.Connection, now: float) -> None:
            state = _budgets.load_breaker(conn, key)
            _breaker.release(state, probe=probe)
            _budgets.save_breaker(conn, key, state)

        with contextlib.suppress(Busy):  # else the probe is replaced after probe_timeout
            await self._db.run(job)

    async def breaker_state(self, key: str) -> CircuitState:
        """Implements [`Store.breaker_state`][instantly_oauth_async.Store.breaker_state]."""
        try:
            return await self._db.run(
                lambda conn, now: _budgets.load_breaker(conn, key).state, write=False)
        except Busy:
            return await self._local.breaker_state(key)
