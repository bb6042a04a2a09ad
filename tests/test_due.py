"""The due queue: pending sessions come out earliest first, equal times in the order queued,
wherever in the calendar they were queued; ended sessions are left out."""

from __future__ import annotations

import math

from instantly_oauth_async._manager.due import DueQueue
from instantly_oauth_async._manager.pending import PendingConnection
from instantly_oauth_async.testing import FakeClock
from tests._sessions import session_named

_CLOCK = FakeClock(0.0)


def _at(name: str, at: float) -> PendingConnection:
    pending = PendingConnection(session_named(name), None, clock=_CLOCK)
    pending._next_at = at
    return pending


def _drain(due: DueQueue) -> list[str]:
    out = []
    while (pending := due.pop()) is not None:
        out.append(pending.session.session_id)
    return out


def test_sessions_come_out_by_time_and_equal_times_in_the_order_queued() -> None:
    due = DueQueue()
    times = {"a": 12.5, "b": 10.75, "c": 12.5, "d": 10.25, "e": 11.0, "f": 12.5, "g": 10.25}
    for name, at in times.items():
        due.push(_at(name, at))
    assert len(due) == 7
    assert _drain(due) == ["d", "g", "b", "e", "a", "c", "f"]
    assert len(due) == 0 and due.first() is None


def test_a_session_queued_into_the_second_being_taken_goes_to_its_place() -> None:
    due = DueQueue()
    for name, at in [("a", 10.2), ("b", 10.6), ("c", 10.9)]:
        due.push(_at(name, at))
    assert due.pop() is not None  # a: the second 10 is being taken from now
    assert due.push(_at("x", 10.7)) is False  # after b: not the first
    assert due.push(_at("y", 10.5)) is True  # before b: the first now
    assert due.push(_at("z", 10.6)) is False  # equal to b: after it
    assert _drain(due) == ["y", "b", "z", "x", "c"]


def test_a_session_earlier_than_the_second_being_taken_comes_first() -> None:
    due = DueQueue()
    for name, at in [("a", 20.1), ("b", 20.5), ("c", 21.0)]:
        due.push(_at(name, at))
    head = due.first()
    assert head is not None and head.session.session_id == "a"  # the second 20 is taken from
    assert due.push(_at("now", -math.inf)) is True  # due at once: before the whole second
    assert due.push(_at("early", 19.9)) is False  # after "now", before a
    assert due.push(_at("never", math.inf)) is False
    assert _drain(due) == ["now", "early", "a", "b", "c", "never"]


def test_an_ended_session_is_left_out_wherever_it_waits() -> None:
    due = DueQueue()
    queued = {name: _at(name, at) for name, at in
              [("a", 1.0), ("b", 1.5), ("c", 2.0), ("d", 3.0)]}
    for pending in queued.values():
        due.push(pending)
    queued["a"]._finish(error=RuntimeError("cancelled"))
    queued["c"]._finish(error=RuntimeError("cancelled"))
    first = due.first()
    assert first is queued["b"]
    assert due.first() is first  # looked at, not taken
    assert _drain(due) == ["b", "d"]


def test_a_first_push_into_an_empty_queue_is_the_first() -> None:
    due = DueQueue()
    assert due.push(_at("a", 5.0)) is True
    assert due.push(_at("b", 6.0)) is False  # (no second taken from yet: by the second)
    assert due.push(_at("c", 4.0)) is True
    assert _drain(due) == ["c", "a", "b"]
