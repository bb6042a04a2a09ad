"""OpenTelemetry metrics (and, opt-in, one span per session) for :class:`OAuthManager`.

    pip install 'instantly-oauth-async[otel]'      # opentelemetry-api only; bring your own SDK

    from instantly_oauth_async.otel import OpenTelemetryHook

    async with OAuthManager(api_key, hooks=[OpenTelemetryHook()]) as manager: ...

The hook uses the global meter and tracer providers unless given others, so without an SDK
configured every call is OpenTelemetry's cheap no-op. Importing ``instantly_oauth_async`` never
imports OpenTelemetry; only this module does. Instruments (scope ``instantly_oauth_async``):

- ``http.client.request.duration`` (histogram, ``s``, the semantic conventions' buckets):
  ``http.request.method`` (POST for an init, GET for a status or account read),
  ``server.address``, ``server.port``, ``http.response.status_code`` when an answer came,
  ``error.type`` when it failed (the status code, or the exception's class name without an
  answer), ``instantly.operation`` (init, status, account), ``instantly.provider`` when known;
- ``instantly.oauth.budget.wait.duration`` (histogram, ``s``): ``instantly.budget`` (init, read,
  caller), ``instantly.budget.granted``, ``instantly.provider`` when known;
- ``instantly.oauth.init.denials`` (counter, ``{denial}``): ``instantly.provider``,
  ``instantly.init.deny_reason`` (breaker_open, budget, deadline, blocked);
- ``instantly.oauth.breaker.transitions`` (counter, ``{transition}``): ``instantly.provider``,
  ``instantly.breaker.old_state``, ``instantly.breaker.new_state`` (closed, open, half_open);
- ``instantly.oauth.session.duration`` (histogram, ``s``): ``instantly.provider``,
  ``instantly.session.outcome`` (success, error, expired, cancelled, lost, closed, failed);
- ``instantly.oauth.session.active`` (up-down counter, ``{session}``): ``instantly.provider``.

Every attribute value comes from a closed set (operations, providers, budgets, outcomes, status
codes, the library's exception names, the API's one host and port): never a session id, an email,
a URL path or a key. With ``spans=True`` each session is one span, ``instantly.oauth.session``
(not one per poll: a span costs far more than a metric), from when it began to be polled to its
end, with its outcome, polls and whether its result was reconciled; ``lost`` and ``failed`` set
the span's status to ERROR. The span's parent is whatever span was current when the session
started (``start()`` or ``resume()`` inside a request handler's span, say).

Like every hook, it runs inline and must never break a request: its body is wrapped, and a
failure is logged (at most once a minute) to the ``instantly_oauth_async.otel`` logger. One hook
may serve several managers: sessions are paired by a key unique within the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry import metrics, trace

from ._observe.events import (
    BreakerChanged,
    BudgetWaited,
    Event,
    InitDenied,
    RequestFinished,
    SessionResolved,
    SessionStarted,
    Throttle,
)
from ._wire.client import __version__

__all__ = [
    "BUDGET_WAIT_BUCKETS",
    "HTTP_DURATION_BUCKETS",
    "SESSION_DURATION_BUCKETS",
    "OpenTelemetryHook",
]

logger = logging.getLogger("instantly_oauth_async.otel")

SCOPE: Final = "instantly_oauth_async"
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.26.0"

#: The HTTP semantic conventions' advisory buckets for ``http.client.request.duration``.
HTTP_DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Budget waits: most are none at all (the first bucket), the longest last a window or a block.
BUDGET_WAIT_BUCKETS: Final = (
    0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Sessions: a person takes seconds to minutes; a session lives 10 minutes (plus the grace).
SESSION_DURATION_BUCKETS: Final = (
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 450.0, 600.0, 900.0)

_METHODS: Final = {"init": "POST", "status": "GET", "account": "GET"}
_ERROR_OUTCOMES: Final = frozenset({"lost", "failed"})
_CACHE_LIMIT: Final = 512  # attribute sets are from closed sets; the bound is only a backstop

Attributes = Mapping[str, Any]


class OpenTelemetryHook:
    """A hook (``OAuthManager(hooks=[OpenTelemetryHook()])``) recording the manager's events as
    OpenTelemetry metrics and, with ``spans=True``, one span per session.

    ``meter_provider`` and ``tracer_provider`` default to the global ones (as set by the
    application's SDK set-up); the tracer is looked up only when ``spans`` is True.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        spans: bool = False,
    ) -> None:
        meter = metrics.get_meter(SCOPE, __version__, meter_provider, schema_url=SCHEMA_URL)
        self._http_duration = meter.create_histogram(
            "http.client.request.duration", unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=HTTP_DURATION_BUCKETS)
        self._budget_wait = meter.create_histogram(
            "instantly.oauth.budget.wait.duration", unit="s",
            description="Time a request waited for its rate-budget slots.",
            explicit_bucket_boundaries_advisory=BUDGET_WAIT_BUCKETS)
        self._denials = meter.create_counter(
            "instantly.oauth.init.denials", unit="{denial}",
            description="start() calls that gave up before sending an init.")
        self._transitions = meter.create_counter(
            "instantly.oauth.breaker.transitions", unit="{transition}",
            description="Changes of a provider's circuit breaker state.")
        self._session_duration = meter.create_histogram(
            "instantly.oauth.session.duration", unit="s",
            description="Time from a session's first poll being queued to its end.",
            explicit_bucket_boundaries_advisory=SESSION_DURATION_BUCKETS)
        self._active = meter.create_up_down_counter(
            "instantly.oauth.session.active", unit="{session}",
            description="Sessions being polled.")
        self._tracer = (trace.get_tracer(SCOPE, __version__, tracer_provider,
                                         schema_url=SCHEMA_URL) if spans else None)
        self._spans: dict[int, trace.Span] = {}
        self._request_attrs: dict[tuple[Any, ...], Attributes] = {}
        self._other_attrs: dict[tuple[Any, ...], Attributes] = {}
        self._reported = Throttle()  # a failure is logged at most once a minute
        self._handlers: dict[type, Callable[[Any], None]] = {
            RequestFinished: self._request,
            BudgetWaited: self._waited,
            InitDenied: self._denied,
            BreakerChanged: self._breaker,
            SessionStarted: self._started,
            SessionResolved: self._resolved,
        }

    def __call__(self, event: Event) -> None:
        try:
            handler = self._handlers.get(type(event))
            if handler is not None:
                handler(event)
        except Exception as exc:  # noqa: BLE001 - instrumentation never throws into the library
            self._report(event, exc)

    # -- one method per kind of event ------------------------------------------------------

    def _request(self, event: RequestFinished) -> None:
        key = (event.operation, event.provider, event.status, event.error_type,
               event.server_address, event.server_port)
        attributes = self._request_attrs.get(key)
        if attributes is None:
            attributes = _request_attributes(event)
            if len(self._request_attrs) < _CACHE_LIMIT:
                self._request_attrs[key] = attributes
        self._http_duration.record(event.duration, attributes)

    def _waited(self, event: BudgetWaited) -> None:
        key = ("waited", event.budget, event.granted, event.provider)
        attributes = self._other_attrs.get(key)
        if attributes is None:
            fresh: dict[str, Any] = {"instantly.budget": event.budget,
                                     "instantly.budget.granted": event.granted}
            if event.provider is not None:
                fresh["instantly.provider"] = event.provider
            attributes = self._remember(key, fresh)
        self._budget_wait.record(event.seconds, attributes)

    def _denied(self, event: InitDenied) -> None:
        self._denials.add(1, self._remember(("denied", event.provider, event.reason), {
            "instantly.provider": event.provider, "instantly.init.deny_reason": event.reason}))

    def _breaker(self, event: BreakerChanged) -> None:
        self._transitions.add(1, {"instantly.provider": event.provider,
                                  "instantly.breaker.old_state": event.old,
                                  "instantly.breaker.new_state": event.new})

    def _started(self, event: SessionStarted) -> None:
        self._active.add(1, self._provider(event.provider))
        if self._tracer is not None:
            self._spans[event.key] = self._tracer.start_span(
                "instantly.oauth.session", kind=trace.SpanKind.INTERNAL,
                attributes={"instantly.provider": event.provider,
                            "instantly.session.resumed": event.resumed})

    def _resolved(self, event: SessionResolved) -> None:
        self._active.add(-1, self._provider(event.provider))
        self._session_duration.record(event.latency, self._remember(
            ("resolved", event.provider, event.outcome),
            {"instantly.provider": event.provider, "instantly.session.outcome": event.outcome}))
        span = self._spans.pop(event.key, None)
        if span is not None:
            span.set_attributes({"instantly.session.outcome": event.outcome,
                                 "instantly.session.polls": event.polls,
                                 "instantly.session.reconciled": event.reconciled})
            if event.outcome in _ERROR_OUTCOMES:
                span.set_status(trace.StatusCode.ERROR, event.outcome)
            span.end()

    # -- helpers -----------------------------------------------------------------------------

    def _provider(self, provider: str) -> Attributes:
        return self._remember(("provider", provider), {"instantly.provider": provider})

    def _remember(self, key: tuple[Any, ...], attributes: Attributes) -> Attributes:
        known = self._other_attrs.get(key)
        if known is not None:
            return known
        if len(self._other_attrs) < _CACHE_LIMIT:
            self._other_attrs[key] = attributes
        return attributes

    def _report(self, event: Event, exc: Exception) -> None:
        try:
            if self._reported.allow():
                logger.warning("OpenTelemetryHook failed on %s (reported at most once a minute)",
                               type(event).__name__, exc_info=exc)
        except Exception:  # noqa: BLE001, S110 - not even a broken logging set-up gets through
            pass


def _request_attributes(event: RequestFinished) -> dict[str, Any]:
    """The HTTP semantic conventions' attributes of one request, and the library's own."""
    attributes: dict[str, Any] = {
        "http.request.method": _METHODS.get(event.operation, "_OTHER"),
        "server.address": event.server_address,
        "server.port": event.server_port,
        "instantly.operation": event.operation,
    }
    if event.provider is not None:
        attributes["instantly.provider"] = event.provider
    if event.status is not None:
        attributes["http.response.status_code"] = event.status
    # error.type: the status code when the answer says the request failed, else the exception
    if event.status is not None and event.status >= 400:
        attributes["error.type"] = str(event.status)
    elif event.error_type is not None:
        attributes["error.type"] = event.error_type
    return attributes
