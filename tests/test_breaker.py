"""The init breaker: opens on failures, one probe at a time, closes on the probe's success."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from instantly_oauth_async import BreakerPolicy, CircuitState
from instantly_oauth_async._limits.breaker import BreakerState, admit, record, release

POLICY = BreakerPolicy(failure_threshold=3, cooldown=10, max_cooldown=100, probe_timeout=30)


def state_of(state: BreakerState) -> CircuitState:
    return state.state  # read through a call, so mypy does not narrow across the transitions


def fail(state: BreakerState, now: float, *, probe: bool = False,
         retry_after: float | None = None) -> str | None:
    return record(state, POLICY, now, success=False, probe=probe, retry_after=retry_after)


def test_opens_after_threshold_consecutive_failures() -> None:
    state = BreakerState()
    fail(state, 0)
    fail(state, 0)
    assert state_of(state) is CircuitState.CLOSED
    assert fail(state, 0) == "3 consecutive failures"
    assert state_of(state) is CircuitState.OPEN
    admission, _ = admit(state, POLICY, 5)
    assert not admission.allowed and admission.wait == 5


def test_a_success_resets_the_failure_count() -> None:
    state = BreakerState()
    fail(state, 0)
    fail(state, 0)
    record(state, POLICY, 0, success=True, probe=False)
    fail(state, 0)
    assert state_of(state) is CircuitState.CLOSED


def test_retry_after_lengthens_the_open_time() -> None:
    state = BreakerState()
    for _ in range(3):
        fail(state, 0, retry_after=42)
    assert state.open_until == 42


def test_exactly_one_probe_after_cooldown_then_close_on_success() -> None:
    state = BreakerState()
    for _ in range(3):
        fail(state, 0)
    admissions = [admit(state, POLICY, 10)[0] for _ in range(50)]
    assert sum(a.allowed for a in admissions) == 1
    assert admissions[0].probe
    assert state_of(state) is CircuitState.HALF_OPEN
    assert record(state, POLICY, 11, success=True, probe=True) == "probe succeeded"
    assert state_of(state) is CircuitState.CLOSED
    assert admit(state, POLICY, 11)[0].allowed


def test_failed_probe_reopens_for_longer() -> None:
    state = BreakerState()
    for _ in range(3):
        fail(state, 0)
    admit(state, POLICY, 10)
    assert fail(state, 10, probe=True) == "probe failed"
    assert state_of(state) is CircuitState.OPEN
    assert state.open_until == 10 + 20  # cooldown doubled


def test_released_probe_lets_another_caller_probe() -> None:
    state = BreakerState()
    for _ in range(3):
        fail(state, 0)
    assert admit(state, POLICY, 10)[0].probe
    assert not admit(state, POLICY, 10)[0].allowed
    release(state, probe=True)
    assert admit(state, POLICY, 10)[0].probe


def test_a_vanished_probe_is_replaced_after_probe_timeout() -> None:
    state = BreakerState()
    for _ in range(3):
        fail(state, 0)
    assert admit(state, POLICY, 10)[0].probe
    assert not admit(state, POLICY, 39)[0].allowed
    assert admit(state, POLICY, 40)[0].probe


events = st.lists(
    st.tuples(st.sampled_from(["admit", "ok", "fail", "release"]), st.floats(0, 5)),
    max_size=200,
)


@settings(max_examples=300)
@given(events)
def test_never_two_probes_at_once(script: list[tuple[str, float]]) -> None:
    """For any interleaving, a second probe is admitted only after the first reported back."""
    state, now = BreakerState(), 0.0
    outstanding = 0  # probes admitted and not yet reported
    probe_at = 0.0
    for action, step in script:
        now += step
        if action == "admit":
            admission, _ = admit(state, POLICY, now)
            if admission.probe:
                if outstanding:  # only when the previous probe went silent for probe_timeout
                    assert now - probe_at >= POLICY.probe_timeout
                outstanding, probe_at = 1, now
        elif action in ("ok", "fail") and outstanding:
            record(state, POLICY, now, success=action == "ok", probe=True)
            outstanding = 0
        elif action == "release" and outstanding:
            release(state, probe=True)
            outstanding = 0
        elif action == "fail":
            fail(state, now)
