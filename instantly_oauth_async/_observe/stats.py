"""What a manager counts for ``stats()`` (answers by endpoint, breaker states, outcomes, waits),
and where each of those moments is told to the hooks and to the ``instantly_oauth_async`` logger
(except a request's record, which the client writes: one per request, see ``_client``).

Every stage reports to one :class:`Tally`; the Tally builds an event only when a hook listens,
and a log record only when the logger is enabled for its level, so an uninstrumented manager pays
a counter and two checks per moment."""

from __future__ import annotations

import itertools
import logging
from collections import Counter, deque

import attrs

from .._limits.breaker import BreakerTransition, CircuitState
from .._wire.exceptions import APIError, MalformedResponseError, session_key
from .._wire.models import Provider
from .events import (
    BreakerChanged,
    BudgetName,
    BudgetWaited,
    DenyReason,
    Hooks,
    InitDenied,
    Operation,
    Outcome,
    RequestFinished,
    SessionResolved,
    SessionStarted,
)

__all__ = ["ManagerStats", "Tally"]

# Session keys are unique in the process, so one hook shared by several managers pairs each
# SessionStarted with its own SessionResolved.
_KEYS = itertools.count(1)

logger = logging.getLogger("instantly_oauth_async")


@attrs.frozen
class ManagerStats:
    """A snapshot for dashboards: ``requests[endpoint][status]`` counts HTTP answers (status 0: no
    answer), ``breakers[provider]`` the last state this manager saw."""

    requests: dict[str, dict[int, int]]
    rate_limited: int
    breakers: dict[str, CircuitState]
    transitions: tuple[BreakerTransition, ...]
    pending: int
    results: dict[str, int]
    token_wait_seconds: float
    sessions_created: int


class Tally:
    """The counters behind :class:`ManagerStats`, fed by every stage of a request's life."""

    def __init__(self, hooks: Hooks | None = None, *, server: tuple[str, int] = ("", 0)
                 ) -> None:
        self.hooks = hooks or Hooks()
        self._server = server
        self._keys = _KEYS
        self.requests: dict[str, Counter[int]] = {}
        self.rate_limited = 0
        self.breakers = dict.fromkeys((p.value for p in Provider), CircuitState.CLOSED)
        self.transitions: deque[BreakerTransition] = deque(maxlen=100)
        self.results: Counter[str] = Counter()
        self.token_wait = 0.0
        self.created = 0

    def answer(
        self, endpoint: Operation, exc: BaseException | None = None, *,
        provider: str | None = None, duration: float = 0.0, attempt: int = 1,
    ) -> None:
        """One request to ``endpoint`` ended: with its answer, or with ``exc``. (Its log
        record is the client's, one per request: see ``_client._log_request``.)"""
        status = 200
        if isinstance(exc, APIError):
            status = exc.status
        elif isinstance(exc, MalformedResponseError):
            status = exc.status or 200
        elif exc is not None:
            status = 0
        if status == 429:
            self.rate_limited += 1
        counts = self.requests.get(endpoint)
        if counts is None:  # (setdefault would make a Counter a request)
            counts = self.requests[endpoint] = Counter()
        counts[status] += 1
        if not self.hooks:
            return
        error_type = None if exc is None else type(exc).__name__
        retry_after = getattr(exc, "retry_after", None)
        self.hooks.emit(RequestFinished(
            endpoint, provider, status or None, error_type, duration, attempt,
            retry_after if isinstance(retry_after, (int, float)) else None, *self._server))

    def waited(self, budget: BudgetName, provider: str | None, seconds: float, *,
               granted: bool = True) -> None:
        """A request waited ``seconds`` for its slots (``granted``: and got them)."""
        if granted:
            self.token_wait += seconds
        if self.hooks:
            self.hooks.emit(BudgetWaited(budget, provider, seconds, granted))
        if seconds >= 1.0 and logger.isEnabledFor(logging.DEBUG):
            logger.debug("waited %.3f s for the %s budget", seconds, budget,
                         extra={"iox_event": "budget_waited", "budget": budget,
                                "provider": provider, "seconds": seconds, "granted": granted})

    def denied(self, provider: Provider, reason: DenyReason) -> None:
        """``start()`` gave up before sending an init."""
        if self.hooks:
            self.hooks.emit(InitDenied(provider.value, reason))
        logger.warning("%s init denied: %s", provider.value, reason,
                       extra={"iox_event": "init_denied", "provider": provider.value,
                              "reason": reason})

    def started(self, provider: Provider, session_id: str, *, resumed: bool = False) -> int:
        """A session began to be polled; returns its key for :meth:`resolved`."""
        key = next(self._keys)
        if self.hooks:
            self.hooks.emit(SessionStarted(provider.value, key, resumed))
        if logger.isEnabledFor(logging.DEBUG):
            name = session_key(session_id)
            logger.debug("%s session %s", provider.value, "resumed" if resumed else "started",
                         extra={"iox_event": "session_started", "session_key": name,
                                "provider": provider.value, "resumed": resumed})
        return key

    def resolved(self, provider: Provider, session_id: str, outcome: Outcome,
                 label: str | None, *, latency: float, polls: int, reconciled: bool,
                 key: int = 0) -> None:
        """A session ended; ``label`` is what ``stats().results`` counts it as (None: not)."""
        if label is not None:
            self.results[label] += 1
        if self.hooks:
            self.hooks.emit(SessionResolved(provider.value, outcome, latency, polls, reconciled,
                                            key))
        level = logging.WARNING if outcome in ("lost", "failed") else logging.INFO
        if logger.isEnabledFor(level):
            name = session_key(session_id)
            logger.log(level, "%s session ended: %s after %.1f s, %d polls", provider.value,
                       outcome, latency, polls,
                       extra={"iox_event": "session_resolved", "session_key": name,
                              "provider": provider.value, "outcome": outcome,
                              "latency": latency, "polls": polls, "reconciled": reconciled})

    def transition(self, provider: Provider, transition: BreakerTransition | None) -> None:
        if transition is None:
            return
        self.breakers[provider.value] = transition.new
        self.transitions.append(transition)
        if self.hooks:
            self.hooks.emit(BreakerChanged(provider.value, transition.old.value,
                                           transition.new.value))
        logger.warning("%s init breaker %s -> %s (%s)", provider.value, transition.old.value,
                       transition.new.value, transition.reason,
                       extra={"iox_event": "breaker_changed", "provider": provider.value,
                              "old": transition.old.value, "new": transition.new.value})

    def snapshot(self, pending: int) -> ManagerStats:
        return ManagerStats(
            requests={k: dict(v) for k, v in self.requests.items()},
            rate_limited=self.rate_limited,
            breakers=dict(self.breakers),
            transitions=tuple(self.transitions),
            pending=pending,
            results=dict(self.results),
            token_wait_seconds=self.token_wait,
            sessions_created=self.created,
        )
