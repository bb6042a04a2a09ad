"""The init circuit breaker as a pure state machine: no clock reads, no I/O.

``admit`` and ``record`` take ``now`` (monotonic seconds) and return what to do; a store keeps the
:class:`BreakerState` (in memory, or in Redis for a fleet) and applies them atomically.

States: CLOSED lets every request through. ``failure_threshold`` consecutive failures (503 or no
answer) open it for ``max(cooldown * 2**reopenings, Retry-After)``, capped at ``max_cooldown``.
When that ends, exactly one caller is admitted as the probe (HALF_OPEN); everyone else waits. The
probe's success closes the breaker; its failure opens it again, for longer. A probe that never
reports back (its caller was cancelled) is replaced after ``probe_timeout``.
"""

from __future__ import annotations

import enum
import math

import attrs

__all__ = [
    "Admission",
    "BreakerPolicy",
    "BreakerState",
    "BreakerTransition",
    "CircuitState",
    "admit",
    "record",
    "release",
]


class CircuitState(str, enum.Enum):
    """A provider's init breaker: ``CLOSED`` (inits go), ``OPEN`` (none go until the cooldown
    ends) or ``HALF_OPEN`` (one probe goes; its verdict closes or reopens the breaker).
    """
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class BreakerPolicy:
    """How each provider's init circuit breaker opens and closes:
    ``OAuthManager(breaker=BreakerPolicy(...))``. Only inits pass through it; a Microsoft
    outage never slows Google. With a Redis or SQLite store its state is shared by the fleet.

    Attributes:
        failure_threshold: inits in a row that got a 503 or no answer (default 3) before the
            breaker opens; a success resets the count, other errors leave it as it is.
        cooldown: seconds (default 5.0) the breaker stays open the first time; each reopening
            after a failed probe doubles it. A 503's ``Retry-After`` lengthens it.
        max_cooldown: seconds (default 300.0): no opening lasts longer, ``Retry-After``
            included.
        probe_timeout: seconds (default 60.0) after which a half-open probe that never
            reported back (its caller was cancelled) is replaced by another.

    While it is open, ``start()`` waits until it may probe, up to its deadline (``timeout``),
    then raises :class:`~instantly_oauth_async.CircuitOpenError`. Values are not checked here:
    give positive numbers.
    """

    failure_threshold: int = 3
    cooldown: float = 5.0
    max_cooldown: float = 300.0
    probe_timeout: float = 60.0

    def open_for(self, reopenings: int, retry_after: float | None) -> float:
        """Seconds the breaker stays open after ``reopenings`` failed probes: ``cooldown`` doubled
        that many times, at least ``retry_after``, at most ``max_cooldown`` either way.
        """
        backoff = min(self.max_cooldown, self.cooldown * (2.0 ** min(reopenings, 30)))
        return max(backoff, min(retry_after or 0.0, self.max_cooldown))


@attrs.define
class BreakerState:
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    open_until: float = -math.inf  # never: a clock's readings may be negative
    reopenings: int = 0
    probe_since: float | None = None


@attrs.frozen
class Admission:
    """``allowed``: go ahead (``probe``: as the one half-open probe); else retry in ``wait`` s."""

    allowed: bool
    probe: bool = False
    wait: float = 0.0


@attrs.frozen
class BreakerTransition:
    """A change of state, for stats and hooks; ``at`` is monotonic seconds."""

    key: str
    old: CircuitState
    new: CircuitState
    at: float
    reason: str


def admit(state: BreakerState, policy: BreakerPolicy, now: float) -> tuple[Admission, str | None]:
    """Whether a request may go now; the second item names a transition, if one happened."""
    if state.state is CircuitState.CLOSED:
        return Admission(True), None
    if state.state is CircuitState.OPEN:
        if now < state.open_until:
            return Admission(False, wait=state.open_until - now), None
        state.state, state.probe_since = CircuitState.HALF_OPEN, now
        return Admission(True, probe=True), "cooldown over: one probe"
    # HALF_OPEN: one probe at a time.
    if state.probe_since is not None and now - state.probe_since < policy.probe_timeout:
        remaining = policy.probe_timeout - (now - state.probe_since)
        return Admission(False, wait=min(remaining, max(0.01, policy.cooldown / 10))), None
    state.probe_since = now
    return Admission(True, probe=True), None


def record(
    state: BreakerState,
    policy: BreakerPolicy,
    now: float,
    *,
    success: bool,
    probe: bool,
    retry_after: float | None = None,
) -> str | None:
    """Apply an outcome; returns the reason when the state changed."""
    if success:
        state.failures = 0
        if state.state is CircuitState.CLOSED:
            return None
        state.state, state.reopenings, state.probe_since = CircuitState.CLOSED, 0, None
        return "probe succeeded" if probe else "a request succeeded"
    if state.state is CircuitState.HALF_OPEN and probe:
        state.reopenings += 1
        state.state, state.probe_since = CircuitState.OPEN, None
        state.open_until = now + policy.open_for(state.reopenings, retry_after)
        return "probe failed"
    if state.state is CircuitState.CLOSED:
        state.failures += 1
        if state.failures >= policy.failure_threshold:
            state.state, state.failures = CircuitState.OPEN, 0
            state.open_until = now + policy.open_for(state.reopenings, retry_after)
            return f"{policy.failure_threshold} consecutive failures"
        return None
    if state.state is CircuitState.OPEN and retry_after:
        # A straggler admitted before opening: its Retry-After may lengthen the pause.
        state.open_until = max(state.open_until, now + min(retry_after, policy.max_cooldown))
    return None


def release(state: BreakerState, *, probe: bool) -> None:
    """The probe ended without a verdict (a 429, a 4xx, cancellation): let another caller probe."""
    if probe and state.state is CircuitState.HALF_OPEN:
        state.probe_since = None
