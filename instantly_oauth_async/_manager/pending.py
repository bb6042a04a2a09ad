"""The handle on a session waiting for its person: what its awaiters share (the one outcome,
and cancel()), and the poll state the poller keeps on it between reads (no task sleeps on it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any

import anyio

from .._limits.clock import Clock, SystemClock
from .._wire.exceptions import SessionCancelledError
from .._wire.models import OAuthSession
from .entries import encode_session
from .outcome import ConnectResult

__all__ = ["PendingConnection"]

_AT_ONCE = -math.inf  # one float for every session (``-math.inf`` makes a new one each time)


class PendingConnection:
    """A session waiting for its person. ``await pending`` or ``await pending.result()``.

    Any number of tasks may await it; they share its one poll loop. Cancelling an awaiter
    cancels nothing else; :meth:`cancel` stops the session's polling.
    """

    __slots__ = ("_born", "_cancel_requested", "_clock", "_deadline", "_done", "_due", "_error",
                 "_failures", "_finished", "_in_step", "_key", "_next_at", "_on_finish", "_polls",
                 "_result", "_unsure", "_watch", "expected_email", "session")

    def __init__(
        self,
        session: OAuthSession,
        expected_email: str | None,
        on_finish: Callable[[PendingConnection], None] | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.session = session
        self.expected_email = expected_email
        self._clock: Clock = clock or SystemClock()
        self._born = self._clock.monotonic()
        self._polls = 0  # status reads sent
        self._key = 0  # pairs the hooks' SessionStarted with its SessionResolved
        self._finished = False
        self._done: anyio.Event | None = None  # made when someone first waits: most never do
        self._result: ConnectResult | None = None
        self._error: BaseException | None = None
        self._on_finish = on_finish
        self._cancel_requested = False
        self._in_step = False  # a read, and what follows from its answer, is under way
        # The last read got no clear answer (lost on the wire, 5xx, garbled): the server may
        # have given its one-time answer to it, so cancel() waits for one clear answer.
        self._unsure = False
        # Poll state, kept here between steps (no task sleeps on a pending session):
        self._next_at = _AT_ONCE  # due at once, on any clock (its readings may be negative)
        # Queued for a read, or taken from the queue for a slot (see Scheduler.schedule).
        self._due = False
        self._deadline = math.inf
        self._watch: float | None = None  # the time the reaper watches it for (None: none)
        self._failures = 0

    def _as_registered(self) -> str:
        """Its records as the registry's JSON: the in-process registry keeps the handle itself
        as the entry's data (see ``Records``), no second copy of them."""
        return encode_session(self.session, self.expected_email)

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        session = self.session
        return f"<PendingConnection {session.session_id} {session.provider.value} {state}>"

    def done(self) -> bool:
        """True once the session has an outcome (a result or an exception); never blocks."""
        return self._finished

    async def result(self, timeout: float | None = None) -> ConnectResult:  # noqa: ASYNC109
        """The outcome; raises what the caller must act on (see ``OutcomeLostError``).

        With ``timeout`` (seconds, on the manager's clock), raises the builtin ``TimeoutError``
        when the session is still pending by then; the session itself goes on.
        """
        if not self._finished:
            if self._done is None:
                self._done = anyio.Event()
            if timeout is None:
                await self._done.wait()
            else:
                with self._clock.deadline(max(0.0, float(timeout))):
                    await self._done.wait()
                if not self._finished:
                    raise TimeoutError(
                        f"session {self.session.session_id} still pending after {timeout:g} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None  # noqa: S101 - set together with _done
        return self._result

    def __await__(self) -> Generator[Any, None, ConnectResult]:
        return self.result().__await__()

    def cancel(self) -> None:
        """Stop polling this session; awaiters then get :class:`SessionCancelledError`.

        A read in flight is never interrupted, and once the server has given its one-time
        answer the session ends with that answer (the account is then not fetched): a
        connected mailbox is never reported cancelled. When the last read's answer was lost,
        one more read tells which it was. Otherwise the session ends at once, or as soon as the
        read in flight answers.
        """
        self._cancel_requested = True
        if not self.done() and not self._in_step and not self._unsure:
            self._finish(error=self._cancelled())

    def _cancelled(self) -> SessionCancelledError:
        return SessionCancelledError(f"session {self.session.session_id} cancelled")

    def _finish(
        self, *, result: ConnectResult | None = None, error: BaseException | None = None
    ) -> None:
        if self.done():
            return
        self._result, self._error, self._finished = result, error, True
        if self._done is not None:
            self._done.set()
        if self._on_finish is not None:
            on_finish, self._on_finish = self._on_finish, None
            on_finish(self)
