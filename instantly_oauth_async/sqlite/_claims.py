"""The connect guard in ``SQLiteStore``'s file (:class:`SQLiteClaims`, ``store.claims``): every
step one ``BEGIN IMMEDIATE`` transaction on the store's thread, timed by the store's clock, so
every process of the host sees one set of claims. See ``_claims`` for the contract."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from .._stores.claims import Claim, check, new_ticket, pick
from .._stores.registry import RegistryUnavailableError
from ._db import Busy, Database

__all__ = ["SQLiteClaims"]

T = TypeVar("T")


def _forget_due(conn: sqlite3.Connection, ns: str, now: float) -> None:
    conn.execute("DELETE FROM claims WHERE ns = ? AND until <= ?", (ns, now))


class SQLiteClaims:
    """The claims of every process on one SQLite file (``SQLiteStore(path).claims``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def __repr__(self) -> str:
        return f"<SQLiteClaims {self._db.path}>"

    async def _run(self, job: Callable[[sqlite3.Connection, float], T], *, write: bool = True
                   ) -> T:
        try:
            return await self._db.run(job, write=write)
        except Busy as exc:
            raise RegistryUnavailableError(
                f"the SQLite store {self._db.path} stayed locked past lock_timeout: nothing "
                "was claimed or dropped; ask again later") from exc

    async def claim(self, ns: str, user: str, *, hold: float, per_user: int, limit: int
                    ) -> Claim:
        check(ns, user, hold, per_user, limit)

        def job(conn: sqlite3.Connection, now: float) -> Claim:
            _forget_due(conn, ns, now)
            mine = conn.execute("SELECT ticket, sid, until FROM claims WHERE ns = ? AND user = ?",
                                (ns, user)).fetchall()
            if len(mine) >= per_user:
                ticket, sid = pick([(str(t), str(s), float(u)) for t, s, u in mine])
                return Claim("held", ticket, sid or None)
            (held,) = conn.execute("SELECT count(*) FROM claims WHERE ns = ?", (ns,)).fetchone()
            if held >= limit:
                return Claim("full")
            ticket = new_ticket()
            conn.execute("INSERT INTO claims (ns, user, ticket, sid, until) "
                         "VALUES (?, ?, ?, '', ?)", (ns, user, ticket, now + hold))
            return Claim("taken", ticket)

        return await self._run(job)

    async def bind(self, ns: str, user: str, ticket: str, session_id: str, *, hold: float
                   ) -> bool:
        check(ns, user, hold)

        def job(conn: sqlite3.Connection, now: float) -> bool:
            _forget_due(conn, ns, now)
            cursor = conn.execute("UPDATE claims SET sid = ?, until = ? WHERE ns = ? AND user = ? "
                                  "AND ticket = ?", (session_id, now + hold, ns, user, ticket))
            return cursor.rowcount > 0

        return await self._run(job)

    async def drop(self, ns: str, user: str, *, ticket: str | None = None,
                   session_id: str | None = None) -> None:
        def job(conn: sqlite3.Connection, now: float) -> None:
            _forget_due(conn, ns, now)
            conn.execute("DELETE FROM claims WHERE ns = ? AND user = ? AND (ticket = ? OR "
                         "(? IS NOT NULL AND sid = ?))",
                         (ns, user, ticket or "", session_id, session_id or ""))

        await self._run(job)

    async def count(self, ns: str, user: str | None = None) -> int:
        def job(conn: sqlite3.Connection, now: float) -> int:
            row = conn.execute("SELECT count(*) FROM claims WHERE ns = ? AND until > ? AND "
                               "(? IS NULL OR user = ?)", (ns, now, user, user)).fetchone()
            return int(row[0])

        return await self._run(job, write=False)
