"""Sliding-window arithmetic shared by the limiter properties and the acceptance run."""

from __future__ import annotations


def max_in_window(times: list[float], width: float) -> int:
    """The most of ``times`` that fall in any half-open window ``(t - width, t]``."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
