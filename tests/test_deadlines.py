"""The reaper: each session ends at its own deadline, however the deadlines of one second were
set; a deadline moved earlier by more than a second is watched anew, the old item stale."""

from __future__ import annotations

import anyio
import pytest

from instantly_oauth_async._manager.deadlines import Deadlines
from instantly_oauth_async._manager.outcome import ConnectResult
from instantly_oauth_async._manager.pending import PendingConnection
from instantly_oauth_async.testing import FakeClock
from tests._sessions import session_named

pytestmark = pytest.mark.anyio


def _pending(name: str, clock: FakeClock) -> PendingConnection:
    return PendingConnection(session_named(name), None, clock=clock)


async def test_each_session_ends_at_its_own_deadline_in_whatever_order_they_were_set() -> None:
    clock = FakeClock(1000.0)
    deadlines = Deadlines(clock, None, poll_interval=5.0, expiry_grace=0.0)
    ended: list[tuple[str, float]] = []

    async def conclude(pending: PendingConnection, result: ConnectResult | None,
                       error: BaseException | None) -> None:
        ended.append((pending.session.session_id, clock.monotonic()))
        pending._finish(result=result, error=error)

    sessions = {name: _pending(name, clock) for name in "abcdef"}
    # a, b, c within one second, d in the next, set in an order that is not theirs
    for name, at in [("a", 1010.7), ("c", 1010.5), ("d", 1011.1), ("b", 1010.2)]:
        deadlines.set_deadline(sessions[name], at)
    deadlines.set_deadline(sessions["c"], 1010.9)  # later by under a second: no new item
    deadlines.set_deadline(sessions["e"], 1012.5)
    deadlines.set_deadline(sessions["e"], 1010.4)  # earlier by more than a second: watched anew
    deadlines.set_deadline(sessions["f"], 1010.6)
    sessions["f"]._finish(error=RuntimeError("ended otherwise"))  # its item is stale now
    assert deadlines.watched() == 7
    async with anyio.create_task_group() as group:
        group.start_soon(deadlines.reap, conclude)
        await clock.run_for(15.0)
        group.cancel_scope.cancel()
    assert ended == [("b", 1010.2), ("e", 1010.4), ("a", 1010.7), ("c", 1010.9), ("d", 1011.1)]
    assert deadlines.watched() == 0  # e's stale item in 1012 went with its second


async def test_a_session_in_a_step_at_its_deadline_is_looked_at_again_a_poll_interval_on() -> None:
    clock = FakeClock(0.0)
    deadlines = Deadlines(clock, None, poll_interval=0.3, expiry_grace=0.0)
    ended: list[float] = []

    async def conclude(pending: PendingConnection, result: ConnectResult | None,
                       error: BaseException | None) -> None:
        ended.append(clock.monotonic())
        pending._finish(result=result, error=error)

    pending = _pending("a", clock)
    pending._in_step = True  # its read decides
    deadlines.set_deadline(pending, 2.25)
    async with anyio.create_task_group() as group:
        group.start_soon(deadlines.reap, conclude)
        await clock.run_for(2.5)
        assert ended == []  # looked at 2.25: in a step, so again 0.3 s on
        pending._in_step = False
        await clock.run_for(1.0)
        group.cancel_scope.cancel()
    assert ended == [2.55]  # within the same second as its deadline, after it: not one early
