"""Who waits for a change of which session, by namespace, in a registry whose changes come from
outside the process (Redis pub/sub, a poll of a SQLite file): each waiter's event is kept until
its wait ends, woken or not, and a change wakes the waiters of its session, or of its whole
namespace when it cannot say which changed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio

__all__ = ["Waiters", "waiting", "wake"]

#: The events of the waiters, by namespace and session.
Waiters = dict[str, dict[str, set[anyio.Event]]]


@contextlib.contextmanager
def waiting(waiters: Waiters, ns: str, session_id: str) -> Iterator[anyio.Event]:
    """An event among ``waiters`` for as long as the block runs, to wait on."""
    event = anyio.Event()
    waiters.setdefault(ns, {}).setdefault(session_id, set()).add(event)
    try:
        yield event
    finally:
        sessions = waiters.get(ns, {})
        events = sessions.get(session_id)
        if events is not None:
            events.discard(event)
            if not events:
                del sessions[session_id]
        if not sessions:
            waiters.pop(ns, None)


def wake(waiters: Waiters, ns: str, session_id: str | None) -> None:
    """Wake the waiters of one session of a namespace, or (``None``) all of the namespace."""
    sessions = waiters.get(ns)
    if not sessions:
        return
    for sid in list(sessions) if session_id is None else [session_id]:
        for event in sessions.pop(sid, ()):
            event.set()
    if not sessions:
        del waiters[ns]
