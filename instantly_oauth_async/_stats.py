"""What a manager counts for ``stats()``: answers by endpoint, breaker states, outcomes, waits."""

from __future__ import annotations

import logging
from collections import Counter, deque

import attrs

from ._breaker import BreakerTransition, CircuitState
from ._exceptions import APIError, MalformedResponseError
from ._models import Provider

__all__ = ["ManagerStats", "Tally"]

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

    def __init__(self) -> None:
        self.requests: dict[str, Counter[int]] = {}
        self.rate_limited = 0
        self.breakers = dict.fromkeys((p.value for p in Provider), CircuitState.CLOSED)
        self.transitions: deque[BreakerTransition] = deque(maxlen=100)
        self.results: Counter[str] = Counter()
        self.token_wait = 0.0
        self.created = 0

    def answer(self, endpoint: str, exc: BaseException | None = None) -> None:
        """One request to ``endpoint`` ended: with its answer, or with ``exc``."""
        status = 200
        if isinstance(exc, APIError):
            status = exc.status
        elif isinstance(exc, MalformedResponseError):
            status = exc.status or 200
        elif exc is not None:
            status = 0
        if status == 429:
            self.rate_limited += 1
        self.requests.setdefault(endpoint, Counter())[status] += 1

    def transition(self, provider: Provider, transition: BreakerTransition | None) -> None:
        if transition is None:
            return
        self.breakers[provider.value] = transition.new
        self.transitions.append(transition)
        logger.warning("%s init breaker %s -> %s (%s)", provider.value, transition.old.value,
                       transition.new.value, transition.reason)

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
