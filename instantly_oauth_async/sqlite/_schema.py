"""``SQLiteStore``'s file: its schema, what happens to it when it is opened (tables made, times
moved after a reboot), the file systems it must not live on, and what each SQLite error means
for its user. Everything here runs on the store's worker thread."""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from typing import Final

from .._stores.store import StoreError

__all__ = ["SCHEMA", "SCHEMA_VERSION", "busy", "network_fs", "setup", "store_error"]

logger = logging.getLogger("instantly_oauth_async")

#: Times are seconds on the store's clock (CLOCK_MONOTONIC by default); ``-inf`` is "never".
#:
#: - ``meta``: the schema's version; the boot the times belong to (``boot``: Linux's boot id,
#:   ``offset``: the wall clock minus CLOCK_MONOTONIC in that boot, ``seen``: the clock when a
#:   store last opened the file).
#: - ``slots``: one row a spent slot of a budget: ``held`` (1) until released, ``until`` then
#:   being when it comes back even if never released; or freed (0), ``until`` being when it
#:   comes back. ``member``: the lease, or a name of its own for a slot timed from its grant.
#: - ``line``: the askers of a set of budgets (named by its first budget) waiting their turn:
#:   ``first`` asked, ``due`` to ask again to keep their place.
#: - ``blocks``: learned from 429s, until when. ``breakers``: ``_breaker.BreakerState``, one
#:   row a breaker that is not as new.
#: - ``entries``: the session registry (``Entry``), with ``forget_at`` (retention's end).
#: - ``claims``: the connect guard (``_claims``): a user's pending connection, its session id
#:   ('' while it starts) and the deadline past which it leaves by itself.
#: - ``changes``: the registry's notices (a claim, release or decision of ``sid``; ``sid`` ''
#:   for "a lease was released"), read by the watchers' poll instead of pub/sub.
SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS slots (budget TEXT NOT NULL, member TEXT NOT NULL,"
    " held INTEGER NOT NULL, until REAL NOT NULL, PRIMARY KEY (budget, member)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS slots_due ON slots (budget, held, until)",
    "CREATE TABLE IF NOT EXISTS line (budget TEXT NOT NULL, asker TEXT NOT NULL,"
    " first REAL NOT NULL, due REAL NOT NULL, PRIMARY KEY (budget, asker)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS blocks (key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS breakers (key TEXT PRIMARY KEY, state TEXT NOT NULL,"
    " failures INTEGER NOT NULL, open_until REAL NOT NULL, reopenings INTEGER NOT NULL,"
    " probe_since REAL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS entries (ns TEXT NOT NULL, sid TEXT NOT NULL, data TEXT NOT NULL,"
    " created REAL NOT NULL, owner TEXT, fence INTEGER NOT NULL, lease_until REAL NOT NULL,"
    " outcome TEXT, rank INTEGER NOT NULL DEFAULT 0, forget_at REAL NOT NULL,"
    " PRIMARY KEY (ns, sid)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS entries_open ON entries (ns, lease_until) WHERE outcome IS NULL",
    "CREATE INDEX IF NOT EXISTS entries_forget ON entries (forget_at)",
    "CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " ns TEXT NOT NULL, sid TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS claims (ns TEXT NOT NULL, user TEXT NOT NULL, ticket TEXT NOT NULL,"
    " sid TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (ns, user, ticket)) WITHOUT ROWID",
)
SCHEMA_VERSION: Final = "1"
#: Every column holding a time: moved when the host rebooted (CLOCK_MONOTONIC restarted).
_TIMES: Final = (("slots", "until"), ("line", "first"), ("line", "due"), ("blocks", "until"),
                 ("breakers", "open_until"), ("breakers", "probe_since"),
                 ("entries", "created"), ("entries", "lease_until"), ("entries", "forget_at"),
                 ("claims", "until"))
#: File systems on which SQLite's locks and WAL's shared memory do not span hosts.
_NETWORK_FS: Final = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph",
                                "glusterfs", "lustre", "fuse.sshfs", "afs", "gpfs"})


def setup(conn: sqlite3.Connection, now: float, path: str, *, system_clock: bool) -> None:
    """Inside the first transaction of a connection: the tables (made when missing), the
    schema's version checked, and, on the host's clock, every stored time moved to this boot's
    CLOCK_MONOTONIC when the host rebooted since the file was last opened (Linux: another boot
    id; elsewhere: a clock reading lower than the last one stored). The wall clock is the only
    clock spanning a reboot: a time moves by the difference between the boots' offsets (wall
    minus monotonic), so a 24 h block keeps its end, and a dead owner's lease is over."""
    for statement in SCHEMA:
        conn.execute(statement)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise StoreError(f"the SQLite store {path} has schema {meta['schema']}, not "
                         f"{SCHEMA_VERSION}: made by another version of the library",
                         code="schema")
    put = {"schema": SCHEMA_VERSION}
    if system_clock:
        boot, offset = _boot_id() or "", time.time() - now
        old_boot, old_offset = meta.get("boot"), float(meta.get("offset", "nan"))
        rebooted = (old_boot is not None and boot != old_boot) if boot else \
            float(meta.get("seen", "-inf")) > now
        if rebooted and math.isfinite(old_offset):
            delta = old_offset - offset
            for table, column in _TIMES:
                conn.execute(f"UPDATE {table} SET {column} = {column} + ?"  # noqa: S608
                             f" WHERE {column} IS NOT NULL", (delta,))
            logger.warning("the SQLite store %s was last used before a reboot: its times were "
                           "moved by %.0f s to this boot's clock", path, delta)
        if rebooted or old_boot is None:
            put.update(boot=boot, offset=repr(offset))
        put["seen"] = repr(now)
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", put.items())


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def network_fs(path: str) -> str | None:
    """The type of the network file system holding ``path`` (read from Linux's mount table),
    or None."""
    best, kind = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and (path == parts[1] or path.startswith(
                        parts[1].rstrip("/") + "/")) and len(parts[1]) >= len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        return None
    return kind if kind in _NETWORK_FS else None


# SQLite's message for each primary result code (sqlite3_errstr), for Python 3.10, whose
# sqlite3.Error has no sqlite_errorname (3.11+): its text is SQLite's message, so it names the
# primary code (an extended one, such as SQLITE_READONLY_DBMOVED, has its primary's message).
# "database table is locked" comes before "database is locked", which it does not contain, and
# each is matched as a part of the text (a constraint's message names its constraint first).
_MESSAGES = (
    ("database table is locked", "SQLITE_LOCKED"),
    ("database is locked", "SQLITE_BUSY"),
    ("attempt to write a readonly database", "SQLITE_READONLY"),
    ("database or disk is full", "SQLITE_FULL"),
    ("unable to open database file", "SQLITE_CANTOPEN"),
    ("file is not a database", "SQLITE_NOTADB"),
    ("database disk image is malformed", "SQLITE_CORRUPT"),
    ("disk I/O error", "SQLITE_IOERR"),
    ("access permission denied", "SQLITE_PERM"),
    ("out of memory", "SQLITE_NOMEM"),
    ("locking protocol", "SQLITE_PROTOCOL"),
    ("database schema has changed", "SQLITE_SCHEMA"),
    ("string or blob too big", "SQLITE_TOOBIG"),
    ("constraint failed", "SQLITE_CONSTRAINT"),
    ("datatype mismatch", "SQLITE_MISMATCH"),
)


def _code(exc: sqlite3.Error) -> str:
    """SQLite's name for the error (``SQLITE_BUSY``), or "" when it has none."""
    name = getattr(exc, "sqlite_errorname", None)
    if name is not None:  # Python 3.11 and later
        return str(name)
    text = str(exc)
    return next((code for message, code in _MESSAGES if message in text), "")


def busy(exc: sqlite3.Error) -> bool:
    """Whether the error is a lock held by another connection (waiting may cure it)."""
    code = _code(exc)
    if code:
        return code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return "locked" in str(exc)


def store_error(path: str, exc: BaseException) -> StoreError:
    """What an error of the database means for its user (``code``: SQLite's name for it)."""
    code = _code(exc) if isinstance(exc, sqlite3.Error) else type(exc).__name__
    text = str(exc)
    if code.startswith("SQLITE_FULL") or "full" in text:
        why = ("is full (the disk, or the database's max_page_count): nothing was decided or "
               "stored; the store goes on once there is room")
    elif code == "SQLITE_READONLY_DBMOVED":
        why = "was moved or deleted while open: restart every process using it"
    elif code.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
        why = ("cannot be written (a read-only file, directory or file system): every decision "
               "is a write; the app's user needs write access to the file, its directory, and "
               "its -wal and -shm files")
    elif code.startswith("SQLITE_CANTOPEN") or isinstance(exc, OSError):
        why = "cannot be opened (a missing directory, or no permission to create the file)"
    elif code.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        why = "is not a SQLite database of this library, or is corrupt"
    elif code.startswith("SQLITE_IOERR"):
        why = "failed a read or write on the disk (I/O error)"
    else:
        why = "answered with an error"
    return StoreError(f"the SQLite store {path} {why} ({code}: {text})", code=code or None)
