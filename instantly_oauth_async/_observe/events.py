"""Events: what the manager tells hooks, as frozen records of a closed set, and the dispatcher
that calls the hooks.

A hook is any synchronous callable of one event (``OAuthManager(hooks=[...])``). Hooks run inline,
where the event happens, so they must be quick; a coroutine function is refused when the manager
is made, and a hook that raises is logged (at most once a minute per hook) and never breaks a
request. No event carries an ``auth_url``, an API key, an email or a session id: every field is
from a closed set or a number, so any field may become a metric attribute.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Literal, TypeAlias

import attrs

from .._wire.exceptions import ConfigurationError

__all__ = [
    "BreakerChanged",
    "BudgetWaited",
    "Event",
    "Hook",
    "Hooks",
    "InitDenied",
    "RequestFinished",
    "SessionResolved",
    "SessionStarted",
    "Throttle",
]

logger = logging.getLogger("instantly_oauth_async")

Operation: TypeAlias = Literal["init", "status", "account"]
BudgetName: TypeAlias = Literal["init", "read", "caller"]
DenyReason: TypeAlias = Literal["breaker_open", "budget", "deadline", "blocked"]
Outcome: TypeAlias = Literal["success", "error", "expired", "cancelled", "lost", "closed", "failed"]


@attrs.frozen(slots=True)
class BudgetWaited:
    """A request waited for its slots: ``budget`` is which limiter (``init``: a provider's init
    limits with the standard budget; ``read``: the status share with the standard budget;
    ``caller``: ``manager.budget.slot()``). ``granted`` is False when the wait ended without a
    slot (deadline, cancellation)."""

    budget: BudgetName
    provider: str | None
    seconds: float
    granted: bool


@attrs.frozen(slots=True)
class InitDenied:
    """``start()`` gave up before sending an init: the circuit was open, the budget or a block
    outlasted the caller's deadline or ``max_block_wait``."""

    provider: str
    reason: DenyReason


@attrs.frozen(slots=True)
class RequestFinished:
    """One HTTP request ended: ``status`` is the answer's status code (None: no answer), and
    ``error_type`` the library's exception name when it failed. ``attempt`` counts from 1 for the
    retries of one init; ``retry_after`` is what a 429 or 503 asked for."""

    operation: Operation
    provider: str | None
    status: int | None
    error_type: str | None
    duration: float
    attempt: int = 1
    retry_after: float | None = None
    server_address: str = ""  #: the API's host and port, as OpenTelemetry's HTTP metrics want
    server_port: int = 0


@attrs.frozen(slots=True)
class BreakerChanged:
    """A provider's circuit changed state; emitted once fleet-wide, by the process that changed
    it."""

    provider: str
    old: str
    new: str


@attrs.frozen(slots=True)
class SessionStarted:
    """A session began to be polled: created by ``start()``, or given to ``resume()``
    (``resumed``). ``key`` pairs it with its :class:`SessionResolved`: a number unique within
    the process, not the session's id; never make it a metric attribute."""

    provider: str
    key: int
    resumed: bool = False


@attrs.frozen(slots=True)
class SessionResolved:
    """A session ended: ``latency`` from when it began to be polled to its end, ``polls`` status
    reads sent. Every :class:`SessionStarted` is followed by exactly one of these."""

    provider: str
    outcome: Outcome
    latency: float
    polls: int
    reconciled: bool
    key: int = 0


Event: TypeAlias = (
    BudgetWaited | InitDenied | RequestFinished | BreakerChanged | SessionStarted
    | SessionResolved
)
Hook: TypeAlias = Callable[[Event], object]

_REPORT_EVERY = 60.0  # seconds between two log lines about one failing hook


class Throttle:
    """Yes at most once every ``every`` seconds per key: how often a failing hook is logged."""

    __slots__ = ("_every", "_last")

    def __init__(self, every: float = _REPORT_EVERY) -> None:
        self._every = every
        self._last: dict[object, float] = {}

    def allow(self, key: object = None) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            return False
        self._last[key] = now
        return True


class Hooks:
    """The hooks of one manager. ``bool(hooks)`` is False without any, so a call site builds an
    event only when someone listens: ``if hooks: hooks.emit(RequestFinished(...))``."""

    __slots__ = ("_hooks", "_reported")

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        checked: list[Hook] = []
        for hook in hooks:
            if not callable(hook):
                raise ConfigurationError(f"a hook must be callable, not {type(hook).__name__}")
            call = getattr(hook, "__call__", None)  # noqa: B004 - an object's async __call__ too
            if inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(call):
                raise ConfigurationError(
                    f"hook {_name(hook)} is a coroutine function; hooks run inline and must be "
                    "synchronous (start a task from it if it must await)")
            checked.append(hook)
        self._hooks = tuple(checked)
        self._reported = Throttle()

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def emit(self, event: Event) -> None:
        """Call every hook with ``event``; a hook that raises is logged and skipped."""
        for hook in self._hooks:
            try:
                hook(event)
            except Exception as exc:  # noqa: BLE001, PERF203 - a hook never breaks a request
                self._report(hook, event, exc)

    def _report(self, hook: Hook, event: Event, exc: Exception) -> None:
        if not self._reported.allow(id(hook)):
            return
        logger.error("hook %s raised on %s (reported at most once a minute)",
                     _name(hook), type(event).__name__, exc_info=exc)


def _name(hook: object) -> str:
    return getattr(hook, "__qualname__", None) or type(hook).__qualname__
