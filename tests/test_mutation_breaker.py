"""The breaker, line by line (issue 27): what each transition returns and leaves behind, at the
exact boundaries, so that a change to any of them fails a test (tests/test_breaker.py holds the
behaviour as a user meets it; scripts/mutation measures both against _breaker.py)."""

from __future__ import annotations

import math

import pytest

from instantly_oauth_async import BreakerPolicy, CircuitState
from instantly_oauth_async._limits.breaker import (
    Admission,
    BreakerState,
    admit,
    record,
    release,
)

POLICY = BreakerPolicy(failure_threshold=3, cooldown=10, max_cooldown=100, probe_timeout=30)


def now_of(state: BreakerState) -> tuple[CircuitState, float | None]:
    """State and probe start, read through a call, so mypy does not narrow across steps."""
    return state.state, state.probe_since


def opened(now: float = 0.0, policy: BreakerPolicy = POLICY) -> BreakerState:
    state = BreakerState()
    for _ in range(policy.failure_threshold):
        record(state, policy, now, success=False, probe=False)
    assert state.state is CircuitState.OPEN
    return state


def probing(now: float, policy: BreakerPolicy = POLICY) -> BreakerState:
    """Opened at 0, and its probe admitted at ``now`` (at least the cooldown)."""
    state = opened(0.0, policy)
    admission, reason = admit(state, policy, now)
    assert admission == Admission(True, probe=True)
    assert reason == "cooldown over: one probe"
    return state


def test_defaults_are_the_documented_ones() -> None:
    assert BreakerPolicy() == BreakerPolicy(failure_threshold=3, cooldown=5.0,
                                            max_cooldown=300.0, probe_timeout=60.0)
    assert BreakerState() == BreakerState(CircuitState.CLOSED, 0, -math.inf, 0, None)
    assert Admission(True) == Admission(True, probe=False, wait=0.0)


def test_open_for_doubles_per_reopening_up_to_the_cap() -> None:
    assert [POLICY.open_for(n, None) for n in range(6)] == [10, 20, 40, 80, 100, 100]


def test_open_for_stops_doubling_after_thirty_reopenings() -> None:
    policy = BreakerPolicy(cooldown=1.0, max_cooldown=1e300)
    assert policy.open_for(30, None) == 2.0**30
    assert policy.open_for(31, None) == 2.0**30
    assert policy.open_for(10_000, None) == 2.0**30  # no overflow however many


def test_open_for_takes_a_longer_retry_after_capped() -> None:
    assert POLICY.open_for(0, 42) == 42
    assert POLICY.open_for(0, 3) == 10  # the backoff, when longer
    assert POLICY.open_for(1, 15) == 20
    assert POLICY.open_for(0, 1e9) == 100  # capped
    assert POLICY.open_for(0, 0.0) == 10
    short = BreakerPolicy(cooldown=0.25, max_cooldown=100)
    assert short.open_for(0, None) == 0.25  # no Retry-After adds nothing
    assert short.open_for(0, 0.5) == 0.5


def test_closed_admits_everyone_with_no_transition() -> None:
    state = BreakerState()
    assert admit(state, POLICY, 0) == (Admission(True, probe=False, wait=0.0), None)
    assert state == BreakerState()


def test_threshold_failures_open_with_the_reason_and_a_reset_count() -> None:
    state = BreakerState()
    assert record(state, POLICY, 1, success=False, probe=False) is None
    assert state.failures == 1
    assert record(state, POLICY, 2, success=False, probe=False) is None
    assert (state.state, state.failures) == (CircuitState.CLOSED, 2)
    assert record(state, POLICY, 3, success=False, probe=False) == "3 consecutive failures"
    assert (state.state, state.failures, state.open_until) == (CircuitState.OPEN, 0, 13)
    assert state.reopenings == 0 and state.probe_since is None
    five = BreakerPolicy(failure_threshold=5)
    state = BreakerState()
    reasons = [record(state, five, 0, success=False, probe=False) for _ in range(5)]
    assert reasons == [None] * 4 + ["5 consecutive failures"]


def test_a_success_sets_the_count_back_to_zero() -> None:
    state = BreakerState()
    record(state, POLICY, 0, success=False, probe=False)
    record(state, POLICY, 0, success=False, probe=False)
    assert record(state, POLICY, 0, success=True, probe=False) is None
    assert state.failures == 0
    record(state, POLICY, 0, success=False, probe=False)
    record(state, POLICY, 0, success=False, probe=False)
    assert state.state is CircuitState.CLOSED  # two after the success: below three


def test_open_refuses_until_the_exact_end_and_says_how_long() -> None:
    state = opened(0)
    assert admit(state, POLICY, 4) == (Admission(False, wait=6), None)
    assert admit(state, POLICY, 9.5) == (Admission(False, wait=0.5), None)
    assert now_of(state) == (CircuitState.OPEN, None)
    admission, reason = admit(state, POLICY, 10)  # at open_until exactly: the probe
    assert (admission, reason) == (Admission(True, probe=True), "cooldown over: one probe")
    assert now_of(state) == (CircuitState.HALF_OPEN, 10)


def test_half_open_refusal_waits_a_tenth_of_the_cooldown_or_what_is_left() -> None:
    state = probing(10)
    assert admit(state, POLICY, 12) == (Admission(False, wait=1.0), None)  # cooldown / 10
    assert admit(state, POLICY, 39.5) == (Admission(False, wait=0.5), None)  # probe_timeout left
    assert state.probe_since == 10
    tiny = BreakerPolicy(cooldown=0.05, probe_timeout=30)
    state = probing(1, tiny)
    assert admit(state, tiny, 1) == (Admission(False, wait=0.01), None)  # never below 10 ms


def test_a_silent_probe_is_replaced_at_probe_timeout_and_the_new_one_blocks() -> None:
    state = probing(10)
    assert not admit(state, POLICY, 39.99)[0].allowed
    assert admit(state, POLICY, 40) == (Admission(True, probe=True), None)  # 30 s exactly
    assert (state.state, state.probe_since) == (CircuitState.HALF_OPEN, 40)
    assert admit(state, POLICY, 40) == (Admission(False, wait=1.0), None)  # one probe at a time
    assert admit(state, POLICY, 69.99)[0].allowed is False
    assert admit(state, POLICY, 70)[0].probe


def test_a_released_probe_is_replaced_by_one_that_blocks_the_others() -> None:
    state = probing(10)
    release(state, probe=True)
    assert now_of(state) == (CircuitState.HALF_OPEN, None)
    assert admit(state, POLICY, 11) == (Admission(True, probe=True), None)
    assert now_of(state) == (CircuitState.HALF_OPEN, 11)
    assert admit(state, POLICY, 11) == (Admission(False, wait=1.0), None)


def test_release_of_a_non_probe_or_outside_half_open_changes_nothing() -> None:
    state = probing(10)
    release(state, probe=False)
    assert state.probe_since == 10
    state = opened(0)
    release(state, probe=True)
    assert state == opened(0)


def test_the_probe_succeeding_closes_and_forgets_the_backoff() -> None:
    state = probing(10)
    record(state, POLICY, 10, success=False, probe=True)  # reopenings 1
    admit(state, POLICY, 30)
    assert record(state, POLICY, 31, success=True, probe=True) == "probe succeeded"
    assert (state.state, state.reopenings, state.probe_since, state.failures) == (
        CircuitState.CLOSED, 0, None, 0)
    for _ in range(3):
        record(state, POLICY, 40, success=False, probe=False)
    assert state.open_until == 50  # the first cooldown again


def test_a_straggler_succeeding_while_open_closes_too() -> None:
    state = opened(0)
    assert record(state, POLICY, 1, success=True, probe=False) == "a request succeeded"
    assert state.state is CircuitState.CLOSED


def test_each_failed_probe_opens_for_twice_as_long() -> None:
    state = probing(10)
    assert record(state, POLICY, 10, success=False, probe=True) == "probe failed"
    assert (state.state, state.reopenings, state.probe_since, state.open_until) == (
        CircuitState.OPEN, 1, None, 30)
    admit(state, POLICY, 30)
    assert record(state, POLICY, 30, success=False, probe=True) == "probe failed"
    assert (state.reopenings, state.open_until) == (2, 70)
    admit(state, POLICY, 70)
    record(state, POLICY, 70, success=False, probe=True)
    assert (state.reopenings, state.open_until) == (3, 150)
    admit(state, POLICY, 150)
    record(state, POLICY, 150, success=False, probe=True, retry_after=1e9)
    assert (state.reopenings, state.open_until) == (4, 250)  # capped at max_cooldown


def test_a_failed_probe_honours_a_longer_retry_after() -> None:
    state = probing(10)
    record(state, POLICY, 10, success=False, probe=True, retry_after=55)
    assert state.open_until == 65


def test_opening_after_reopenings_uses_their_backoff() -> None:
    state = BreakerState(reopenings=2)
    for _ in range(3):
        record(state, POLICY, 0, success=False, probe=False, retry_after=None)
    assert state.open_until == 40


def test_a_late_retry_after_lengthens_the_open_state_never_shortens_it() -> None:
    state = opened(0)  # open until 10
    assert record(state, POLICY, 2, success=False, probe=False, retry_after=30) is None
    assert state.open_until == 32
    record(state, POLICY, 3, success=False, probe=False, retry_after=1)
    assert state.open_until == 32
    record(state, POLICY, 4, success=False, probe=False, retry_after=1e6)
    assert state.open_until == 104  # capped at max_cooldown from now
    record(state, POLICY, 5, success=False, probe=False, retry_after=None)
    assert state.open_until == 104
    assert (state.state, state.failures) == (CircuitState.OPEN, 0)


def test_a_non_probe_failure_while_half_open_changes_nothing() -> None:
    state = probing(10)
    before = (state.state, state.probe_since, state.open_until, state.reopenings, state.failures)
    assert record(state, POLICY, 11, success=False, probe=False, retry_after=50) is None
    assert (state.state, state.probe_since, state.open_until, state.reopenings,
            state.failures) == before


def test_a_probe_flag_while_closed_counts_as_an_ordinary_failure() -> None:
    state = BreakerState()
    assert record(state, POLICY, 0, success=False, probe=True) is None
    assert (state.state, state.failures, state.reopenings) == (CircuitState.CLOSED, 1, 0)


@pytest.mark.parametrize("probe", [True, False])
def test_a_success_while_closed_reports_no_transition(probe: bool) -> None:
    state = BreakerState(failures=2)
    assert record(state, POLICY, 0, success=True, probe=probe) is None
    assert state == BreakerState()
