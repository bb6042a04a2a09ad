"""The session registry of the processes of one host, in ``SQLiteStore``'s file
(:class:`SQLiteRegistry`): every step one transaction, timed by the store's clock, and waiters
woken by a poll of the file instead of pub/sub. Made by ``SQLiteStore(...).registry``; see
``instantly_oauth_async.sqlite`` and docs/FLEET.md."""

from __future__ import annotations

import collections
import logging
import math
import sqlite3
from collections.abc import Mapping
from typing import Any

from .._stores.registry import RELEASED, Entry, RegistryUnavailableError
from .._stores.waiters import Waiters, waiting, wake
from .._wire.exceptions import ClientStateError, ConfigurationError
from ._db import Busy, Database

__all__ = ["SQLiteRegistry"]

logger = logging.getLogger("instantly_oauth_async")

_COLUMNS = "sid, data, created, owner, fence, lease_until, outcome, rank"


def _entry(row: Any) -> Entry | None:
    if row is None:
        return None
    sid, data, created, owner, fence, lease_until, outcome, rank = row
    return Entry(sid, data, created, owner, fence, lease_until, outcome, rank)


def _live(conn: sqlite3.Connection, ns: str, sid: str, now: float) -> Entry | None:
    """The entry, unless unknown or past its retention (then gone, whether pruned yet or not)."""
    return _entry(conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE ns = ? AND sid = ? "  # noqa: S608
                               "AND forget_at > ?", (ns, sid, now)).fetchone())


class SQLiteRegistry:
    """The session registry (the ``Registry`` contract of ``_stores.registry``) of every
    process on one SQLite file: use ``SQLiteStore(path).registry``, which closes it with the store.

    Each step is one transaction (``BEGIN IMMEDIATE`` when it writes) on the store's thread, so
    of racing claimers in any processes exactly one wins, and a fence or an outcome is never
    half written, whoever is killed when. :meth:`now` is the store's clock (CLOCK_MONOTONIC,
    which every process of the host reads alike): it never raises.

    Entries are forgotten ``retention`` seconds after they were registered or decided,
    whichever was later: every step ignores what is due, and registrations and decisions delete
    it. ``orphans`` reads undecided entries only, through an index on their lease's end.

    :meth:`wait`: ``claim``, ``release`` and ``decide`` append a notice (namespace and session;
    a release also a :data:`~.registry.RELEASED` one) to the file in the
    same transaction. A waiter of this store object is woken at once by a change made through
    it; for changes from other connections (other processes, or other stores on the file), the
    store's thread, while anything waits, reads ``PRAGMA data_version`` every
    ``poll_interval`` and, when another connection committed, the new notices, and wakes the
    waiters they name (and counts the releases: :meth:`releases`). A poll further behind than
    the notices kept (4096) wakes every waiter and counts one release, as a reconnection does
    for ``RedisRegistry``.

    Errors: a lock held past the store's ``lock_timeout`` raises
    :class:`~.registry.RegistryUnavailableError` (retry the step); an
    error of the database (full, read-only, the file replaced) raises ``StoreError``. ``wait``
    raises neither: it returns, and the waiter's next step raises.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._waiters: Waiters = {}
        self._releases: collections.Counter[str] = collections.Counter()
        self._missed = 0  # polls that fell behind the notices kept: every count moves
        self._watching = False
        self._closed = False

    def __repr__(self) -> str:
        waiting = sum(len(s) for s in self._waiters.values())
        return f"<SQLiteRegistry {self._db.path} waiting={waiting}>"

    def now(self) -> float:
        return self._db.clock.monotonic()

    def now_at_least(self) -> float:
        return self._db.clock.monotonic()

    async def _run(self, name: str, job: Any, *, write: bool = True) -> Any:
        if self._closed:
            raise ClientStateError("the registry is closed (its store was closed)")
        try:
            return await self._db.run(job, write=write)
        except Busy as exc:
            raise RegistryUnavailableError(
                f"the registry's {name} step waited longer than lock_timeout for another "
                "process's write lock on the SQLite store; it did not happen: retry it") from exc

    # -- the steps -----------------------------------------------------------------------------

    async def register(self, ns: str, session_id: str, data: str, *, owner: str, lease: float,
                       retention: float) -> Entry:
        _owner(owner)
        _seconds(lease, retention)

        def job(conn: sqlite3.Connection, now: float) -> Entry:
            conn.execute("DELETE FROM entries WHERE forget_at <= ?", (now,))
            entry = _live(conn, ns, session_id, now)
            if entry is not None:
                return entry
            conn.execute("INSERT INTO entries (ns, sid, data, created, owner, fence, "
                         "lease_until, forget_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                         (ns, session_id, data, now, owner, now + lease, now + retention))
            return Entry(session_id, data, now, owner, 1, now + lease)

        entry: Entry = await self._run("register", job)
        return entry

    async def get(self, ns: str, session_id: str) -> Entry | None:
        entry: Entry | None = await self._run(
            "get", lambda conn, now: _live(conn, ns, session_id, now), write=False)
        return entry

    async def claim(self, ns: str, session_id: str, owner: str, *, lease: float) -> Entry | None:
        _owner(owner)
        _seconds(lease)

        def job(conn: sqlite3.Connection, now: float) -> Entry | None:
            entry = _live(conn, ns, session_id, now)
            if entry is None or entry.decided:
                return None
            if entry.owner is not None and entry.owner != owner and entry.lease_until > now:
                return None
            fence = entry.fence + 1
            conn.execute("UPDATE entries SET owner = ?, fence = ?, lease_until = ? "
                         "WHERE ns = ? AND sid = ?", (owner, fence, now + lease, ns, session_id))
            self._db.changed(conn, ns, session_id)
            return Entry(session_id, entry.data, entry.created_at, owner, fence, now + lease)

        entry: Entry | None = await self._run("claim", job)
        if entry is not None:
            self._wake(ns, session_id)
        return entry

    async def renew(self, ns: str, owner: str, fences: Mapping[str, int], *, lease: float
                    ) -> list[str]:
        """Every lease of ``owner`` in ``fences`` in one transaction: a heartbeat a process."""
        if not fences:
            return []
        _owner(owner)
        _seconds(lease)
        fences = dict(fences)

        def job(conn: sqlite3.Connection, now: float) -> list[str]:
            lost = []
            for session_id, fence in fences.items():
                entry = _live(conn, ns, session_id, now)
                if entry is None or entry.decided or entry.owner != owner \
                        or entry.fence != fence or entry.lease_until <= now:
                    lost.append(session_id)
                else:
                    conn.execute("UPDATE entries SET lease_until = ? WHERE ns = ? AND sid = ?",
                                 (now + lease, ns, session_id))
            return lost

        lost: list[str] = await self._run("renew", job)
        return lost

    async def release(self, ns: str, owner: str, fences: Mapping[str, int]) -> None:
        if not fences:
            return
        fences = dict(fences)

        def job(conn: sqlite3.Connection, now: float) -> list[str]:
            released = []
            for session_id, fence in fences.items():
                entry = _live(conn, ns, session_id, now)
                if entry is not None and not entry.decided and entry.owner == owner \
                        and entry.fence == fence:
                    conn.execute("UPDATE entries SET owner = NULL, lease_until = ? "
                                 "WHERE ns = ? AND sid = ?", (-math.inf, ns, session_id))
                    self._db.changed(conn, ns, session_id)
                    released.append(session_id)
            if released:
                self._db.changed(conn, ns, RELEASED)  # orphans to adopt
            return released

        released: list[str] = await self._run("release", job)
        for session_id in released:
            self._wake(ns, session_id)
        if released:
            self._releases[ns] += 1
            self._wake(ns, RELEASED)

    async def decide(self, ns: str, session_id: str, outcome: str, rank: int, *,
                     fence: int | None, retention: float) -> Entry | None:
        _seconds(retention)

        def job(conn: sqlite3.Connection, now: float) -> tuple[Entry | None, bool]:
            conn.execute("DELETE FROM entries WHERE forget_at <= ?", (now,))
            entry = _live(conn, ns, session_id, now)
            if entry is None:
                return None, False
            if fence is not None and fence != entry.fence:
                return entry, False  # a stale owner: the fence refuses its write
            if entry.decided and rank <= entry.rank:
                return entry, False  # first writer wins; only a better-founded one replaces it
            conn.execute("UPDATE entries SET outcome = ?, rank = ?, owner = NULL, "
                         "lease_until = ?, forget_at = ? WHERE ns = ? AND sid = ?",
                         (outcome, rank, -math.inf, now + retention, ns, session_id))
            self._db.changed(conn, ns, session_id)
            return Entry(session_id, entry.data, entry.created_at, None, entry.fence,
                         -math.inf, outcome, rank), True

        entry, changed = await self._run("decide", job)
        if changed:
            self._wake(ns, session_id)
        result: Entry | None = entry
        return result

    async def orphans(self, ns: str, *, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []

        def job(conn: sqlite3.Connection, now: float) -> list[str]:
            rows = conn.execute(
                "SELECT sid FROM entries WHERE ns = ? AND outcome IS NULL AND lease_until <= ? "
                "AND forget_at > ? ORDER BY created, sid LIMIT ?", (ns, now, now, int(limit)))
            return [sid for (sid,) in rows]

        found: list[str] = await self._run("orphans", job, write=False)
        return found

    def releases(self, ns: str) -> int:
        return self._releases[ns] + self._missed

    # -- waiting ---------------------------------------------------------------------------------

    async def wait(self, ns: str, session_id: str, within: float) -> None:
        if self._closed:
            raise ClientStateError("the registry is closed (its store was closed)")
        try:
            with waiting(self._waiters, ns, session_id) as event:
                self._watch()
                with self._db.clock.deadline(within if within < math.inf else 86400.0):
                    await event.wait()
        finally:
            self._watch()

    def _watch(self) -> None:
        """The store's thread polls the file while anything waits, and only then."""
        wanted = bool(self._waiters) and not self._closed
        if wanted != self._watching:
            self._watching = wanted
            self._db.watch(self._changed if wanted else None)

    def _changed(self, found: list[tuple[str, str]], missed: bool,
                 error: BaseException | None) -> None:
        """On the event loop: what a poll found. A poll that failed (the file replaced, a
        read-only or full file) wakes every waiter, whose next step raises what is wrong; one
        that fell behind the notices kept wakes every waiter, and counts a release."""
        if error is not None and not isinstance(error, Busy):
            self._wake_all()
        if missed:
            self._missed += 1
            self._wake_all()
        for ns, session_id in found:
            if session_id == RELEASED:
                self._releases[ns] += 1
            self._wake(ns, session_id)
        self._watch()

    def _wake(self, ns: str, session_id: str) -> None:
        wake(self._waiters, ns, session_id)

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for sessions in waiters.values():
            for events in sessions.values():
                for event in events:
                    event.set()

    async def aclose(self) -> None:
        """Stop polling and wake every waiter (``SQLiteStore.aclose`` does this); later steps
        raise ``ClientStateError``."""
        self._closed = True
        self._watch()
        self._wake_all()


def _owner(owner: str) -> None:
    if not owner:
        raise ConfigurationError("a registry owner is a non-empty string")


def _seconds(*values: float) -> None:
    if not all(0 < value < math.inf for value in values):
        raise ConfigurationError("leases and retention are a positive, finite number of seconds")
