"""The server's rate rules: the standard limit, the init limits, escalating IP blocks, outages.

Every limit is a sliding window of accepted requests. Reading how a 429 is decided starts here.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, NamedTuple

import attrs

from .._limits.breaker import BreakerPolicy
from .._wire.models import RateLimit, RetryPolicy

__all__ = ["RateRules", "Rejection", "SimulatorLimits", "retry_after_header"]


@attrs.define
class SimulatorLimits:
    """The server's rules, in seconds; :meth:`compressed` scales every duration down."""

    init_per_workspace: int = 75
    init_per_ip: int = 150
    init_window: float = 60.0
    api_per_second: int = 100
    api_per_minute: int = 6000
    api_second_window: float = 1.0
    api_minute_window: float = 60.0
    session_ttl: float = 600.0
    abuse_threshold: int = 10
    block_durations: tuple[float, ...] = (1800.0, 7200.0, 86400.0)
    purge_after: float = 600.0  #: how long an expired session still answers ``expired``
    #: how many times faster than real time these rules run: :meth:`compressed` multiplies it,
    #: and :meth:`manager_limits` divides the manager's own durations by it
    time_scale: float = 1.0

    def manager_limits(self, *, status_share: float = 0.5, **overrides: Any) -> dict[str, Any]:
        """``OAuthManager`` keyword arguments that mirror these rules: ``init_limit``,
        ``ip_init_limit``, ``standard_limit``, and ``status_limit`` as ``status_share`` of the
        standard budget (1: polling may spend all that inits leave); and the manager's own
        pacing compressed as these rules are (every default divided by :attr:`time_scale`):
        ``poll_interval``, ``expiry_grace``, ``start_timeout``, ``max_block_wait``, ``breaker``
        and ``retry``. ``overrides`` (any ``OAuthManager`` keyword argument) replace or add.

        The bounds on real I/O (``request_timeout``, ``status_timeout``) and the fleet's lease
        (``session_lease``, ``retention``) are left to the manager's defaults: loopback is not
        faster for being compressed, and a lease must outlast two status reads.

        ``OAuthManager(key, base_url=sim.url, **sim.limits.manager_limits())``
        """
        if not 0 < status_share <= 1:
            raise ValueError("status_share must be a fraction above 0, at most 1")
        standard = (RateLimit(self.api_per_second, per=self.api_second_window),
                    RateLimit(self.api_per_minute, per=self.api_minute_window))
        scale = self.time_scale
        breaker, retry = BreakerPolicy(), RetryPolicy()
        return {
            "init_limit": RateLimit(self.init_per_workspace, per=self.init_window),
            "ip_init_limit": RateLimit(self.init_per_ip, per=self.init_window),
            "standard_limit": standard,
            "status_limit": tuple(
                RateLimit(max(1, math.floor(limit.count * status_share)), per=limit.per)
                for limit in standard),
            # OAuthManager's defaults (tests/test_simulator.py holds them equal), compressed
            "poll_interval": 5.0 / scale,
            "expiry_grace": 60.0 / scale,
            "start_timeout": 600.0 / scale,
            "max_block_wait": 120.0 / scale,
            "breaker": attrs.evolve(
                breaker, cooldown=breaker.cooldown / scale,
                max_cooldown=breaker.max_cooldown / scale,
                probe_timeout=breaker.probe_timeout / scale),
            "retry": attrs.evolve(retry, base=retry.base / scale, cap=retry.cap / scale),
            **overrides,
        }

    def compressed(self, factor: float) -> SimulatorLimits:
        """The same counts with every duration divided by ``factor`` (60 s becomes 60/factor),
        :meth:`manager_limits`' durations too."""
        if not 0 < factor < math.inf:  # NaN fails too
            raise ValueError("factor must be a positive, finite number")
        return attrs.evolve(
            self,
            time_scale=self.time_scale * factor,
            init_window=self.init_window / factor,
            api_second_window=self.api_second_window / factor,
            api_minute_window=self.api_minute_window / factor,
            session_ttl=self.session_ttl / factor,
            block_durations=tuple(d / factor for d in self.block_durations),
            purge_after=self.purge_after / factor,
        )


class Rejection(NamedTuple):
    """Why a request is turned away: its status, message and ``Retry-After`` (None: none)."""

    status: int
    message: str
    retry_after: float | None = None


class _Window:
    """Timestamps of accepted requests; ``count`` within the last ``width`` seconds."""

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def _trim(self, now: float, width: float) -> None:
        while self._times and self._times[0] <= now - width:
            self._times.popleft()

    def full(self, now: float, width: float, limit: int) -> float:
        """0 when one more fits; otherwise seconds until the oldest leaves the window."""
        self._trim(now, width)
        if len(self._times) < limit:
            return 0.0
        return max(self._times[-limit] + width - now, 0.001)

    def add(self, now: float) -> None:
        self._times.append(now)


class RateRules:
    """Who may send what, and when. Methods take the limits in force and the server's time."""

    def __init__(self) -> None:
        self.init_times: dict[tuple[str, str], list[float]] = {}  #: accepted inits per (ws, prov)
        self._init_ws: dict[tuple[str, str], _Window] = {}
        self._init_ip: dict[tuple[str, str], _Window] = {}
        self._api_sec: dict[str, _Window] = {}
        self._api_min: dict[str, _Window] = {}
        self._rejections: dict[tuple[str, str], _Window] = {}
        self._block_level: dict[tuple[str, str], int] = {}
        self._blocked_until: dict[tuple[str, str], float] = {}
        self._outage_until: dict[str, float] = {}
        self._outage_count: dict[str, int] = {}

    def standard(self, lim: SimulatorLimits, workspace_id: str, now: float) -> Rejection | None:
        """Every request of a workspace: 100/s and 6,000/min; an accepted one is counted."""
        second = self._api_sec.setdefault(workspace_id, _Window())
        minute = self._api_min.setdefault(workspace_id, _Window())
        wait = max(
            second.full(now, lim.api_second_window, lim.api_per_second),
            minute.full(now, lim.api_minute_window, lim.api_per_minute),
        )
        if wait > 0:
            return Rejection(429, "Rate limit exceeded", wait)
        second.add(now)
        minute.add(now)
        return None

    def init(
        self, lim: SimulatorLimits, workspace_id: str, provider: str, ip: str, now: float
    ) -> Rejection | None:
        """An init: the IP's block, the workspace and IP windows (escalating to a block after
        ``abuse_threshold`` rejections in a window), then a scripted outage's 503."""
        ip_key = (ip, provider)
        blocked = self._blocked_until.get(ip_key, -math.inf) - now
        if blocked > 0:
            return Rejection(429, "Too many requests from this IP; temporarily blocked", blocked)
        ip_window = self._init_ip.setdefault(ip_key, _Window())
        ws_window = self._init_ws.setdefault((workspace_id, provider), _Window())
        wait = max(
            ip_window.full(now, lim.init_window, lim.init_per_ip),
            ws_window.full(now, lim.init_window, lim.init_per_workspace),
        )
        if wait > 0:
            rejections = self._rejections.setdefault(ip_key, _Window())
            rejections.add(now)
            if rejections.full(now, lim.init_window, lim.abuse_threshold) > 0:
                level = self._block_level.get(ip_key, 0)
                duration = lim.block_durations[min(level, len(lim.block_durations) - 1)]
                self._block_level[ip_key] = level + 1
                self._blocked_until[ip_key] = now + duration
                self._rejections[ip_key] = _Window()
                wait = duration
            return Rejection(429, "Rate limit exceeded for OAuth session creation", wait)
        ip_window.add(now)
        ws_window.add(now)
        outage_until = self._outage_until.get(provider, -math.inf)
        if self._outage_count.get(provider, 0) > 0 or outage_until > now:
            if self._outage_count.get(provider, 0) > 0:
                self._outage_count[provider] -= 1
            return Rejection(503, "OAuth is temporarily unavailable, please retry shortly")
        self.init_times.setdefault((workspace_id, provider), []).append(now)
        return None

    def outage(self, provider: str, *, until: float | None, count: int | None) -> None:
        if until is not None:
            self._outage_until[provider] = until
        if count is not None:
            self._outage_count[provider] = count

    def end_outage(self, provider: str) -> None:
        self._outage_until.pop(provider, None)
        self._outage_count.pop(provider, None)

    def block_ip(self, provider: str, ip: str, until: float) -> None:
        self._blocked_until[(ip, provider)] = until


def retry_after_header(rejection: Rejection) -> dict[str, str]:
    """The ``Retry-After`` header of a rejection, in whole seconds rounded up."""
    if rejection.retry_after is None:
        return {}
    return {"Retry-After": str(math.ceil(rejection.retry_after))}
