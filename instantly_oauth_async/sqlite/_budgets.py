"""``SQLiteStore``'s steps on budgets, blocks and breakers: each runs on the store's worker
thread inside the transaction of one decision, and mirrors ``RedisStore``'s Lua scripts (see
``_redis_lua``) and the pure functions of ``_limiter`` and ``_breaker``."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence

from .._limits.breaker import BreakerState, CircuitState
from .._wire.models import RateLimit

__all__ = ["GRACE", "blocked", "load_breaker", "save_breaker", "take", "write_blocks"]

#: How long past the time it was told an asker keeps its place in a budget's line (seconds).
GRACE = 1.0

Specs = Sequence[tuple[str, RateLimit]]


def blocked(conn: sqlite3.Connection, keys: Sequence[str], now: float) -> float:
    if not keys:
        return 0.0
    marks = ",".join("?" * len(keys))
    row = conn.execute(f"SELECT max(until) FROM blocks WHERE key IN ({marks})",  # noqa: S608
                       tuple(keys)).fetchone()
    return max(0.0, (row[0] if row[0] is not None else -math.inf) - now)


def write_blocks(conn: sqlite3.Connection, blocks: dict[str, float], now: float) -> None:
    """``blocks``: key -> until, by the store's clock. The longest block wins: one already
    longer is never shortened; one over by now is not written."""
    if blocks:
        conn.executemany(
            "INSERT INTO blocks (key, until) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
            "until = max(until, excluded.until)",
            [(key, until) for key, until in blocks.items() if until > now])


def take(conn: sqlite3.Connection, now: float, specs: Specs, block_keys: Sequence[str],  # noqa: PLR0917
         lease: str | None, hold: float, asker: str | None, member: str) -> tuple[float, bool]:
    """One slot of every budget, or none: ``RedisStore``'s TAKE (see ``_redis_lua``), whose
    answers with no asker are those of ``_limiter.take``.

    With an asker, the askers of every process are served in the order they first asked: a
    slot goes to one only when fewer askers are ahead of it than slots are free, and one that
    must wait is told when the slot it is in line for comes back."""
    left = blocked(conn, block_keys, now)
    if left > 0:
        return left, True
    line = specs[0][0]
    ahead = 0
    if asker:
        conn.execute("DELETE FROM line WHERE budget = ? AND due <= ?", (line, now))
        row = conn.execute("SELECT first FROM line WHERE budget = ? AND asker = ?",
                           (line, asker)).fetchone()
        if row is None:
            ahead = conn.execute("SELECT count(*) FROM line WHERE budget = ?",
                                 (line,)).fetchone()[0]
        else:
            ahead = conn.execute(
                "SELECT count(*) FROM line WHERE budget = ? AND (first < ? OR "
                "(first = ? AND asker < ?))", (line, row[0], row[0], asker)).fetchone()[0]
    wait = 0.0
    for key, limit in specs:
        window = limit.window
        conn.execute("DELETE FROM slots WHERE budget = ? AND held IN (0, 1) AND until <= ?",
                     (key, now))
        nf, nh = conn.execute(
            "SELECT count(*) FILTER (WHERE held = 0), count(*) FILTER (WHERE held = 1) "
            "FROM slots WHERE budget = ?", (key,)).fetchone()
        free = limit.count - nf - nh
        if ahead < free:
            continue
        # The k-th return from now is this asker's (k = 1 with no asker): freed slots come back
        # at their times, a held one no sooner than a window from now.
        k = ahead - max(free, 0) + 1
        before = nf
        if nh > 0 and nf > 0:
            before = conn.execute("SELECT count(*) FROM slots WHERE budget = ? AND held = 0 "
                                  "AND until <= ?", (key, now + window)).fetchone()[0]
        back = math.inf
        if before < k <= before + nh:
            back = now + window
        else:
            j = k - nh if k > before else k
            if j <= nf:
                back = conn.execute(
                    "SELECT until FROM slots WHERE budget = ? AND held = 0 "
                    "ORDER BY until, member LIMIT 1 OFFSET ?", (key, j - 1)).fetchone()[0]
        if back == math.inf:  # more askers ahead than slots: the last slot's return, again
            back = now + window
        wait = max(wait, back - now)
    if wait > 0:
        if asker:
            conn.execute("INSERT INTO line (budget, asker, first, due) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (budget, asker) DO UPDATE SET due = excluded.due",
                         (line, asker, now, now + wait + GRACE))
        return wait, False
    if asker:
        conn.execute("DELETE FROM line WHERE budget = ? AND asker = ?", (line, asker))
    for key, limit in specs:
        if lease is None:
            conn.execute("INSERT OR REPLACE INTO slots (budget, member, held, until) "
                         "VALUES (?, ?, 0, ?)", (key, member, now + limit.window))
        else:
            conn.execute("INSERT OR REPLACE INTO slots (budget, member, held, until) "
                         "VALUES (?, ?, 1, ?)", (key, lease, now + hold + limit.window))
    return 0.0, False


def load_breaker(conn: sqlite3.Connection, key: str) -> BreakerState:
    row = conn.execute("SELECT state, failures, open_until, reopenings, probe_since "
                       "FROM breakers WHERE key = ?", (key,)).fetchone()
    if row is None:
        return BreakerState()
    return BreakerState(CircuitState(row[0]), row[1], row[2], row[3], row[4])


def save_breaker(conn: sqlite3.Connection, key: str, state: BreakerState) -> None:
    if state.state is CircuitState.CLOSED and state.failures == 0 and state.reopenings == 0 \
            and state.probe_since is None:
        conn.execute("DELETE FROM breakers WHERE key = ?", (key,))  # as good as new
        return
    conn.execute("INSERT OR REPLACE INTO breakers (key, state, failures, open_until, "
                 "reopenings, probe_since) VALUES (?, ?, ?, ?, ?, ?)",
                 (key, state.state.value, state.failures, state.open_until, state.reopenings,
                  state.probe_since))
