"""The OpenTelemetry hook through the real SDK (in-memory reader and exporter), against the
simulator: exact instrument names, units, attribute sets and counts, one span per session, and
nothing secret in any of it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from instantly_oauth_async import (
    BreakerPolicy,
    BudgetWaited,
    CircuitOpenError,
    Event,
    MemoryStore,
    OAuthManager,
    OutcomeLostError,
    RequestFinished,
    RetryPolicy,
    ServiceUnavailableError,
    SessionCancelledError,
    SessionStarted,
)
from instantly_oauth_async import otel as otel_module
from instantly_oauth_async.otel import (
    BUDGET_WAIT_BUCKETS,
    HTTP_DURATION_BUCKETS,
    SESSION_DURATION_BUCKETS,
    OpenTelemetryHook,
)
from instantly_oauth_async.testing import CannedResponse, Faults, Simulator

pytestmark = pytest.mark.anyio

UNITS = {
    "http.client.request.duration": "s",
    "instantly.oauth.budget.wait.duration": "s",
    "instantly.oauth.init.denials": "{denial}",
    "instantly.oauth.breaker.transitions": "{transition}",
    "instantly.oauth.session.duration": "s",
    "instantly.oauth.session.active": "{session}",
}


class Metrics:
    """A meter provider of the real SDK and the in-memory reader it feeds."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])


@pytest.fixture
def meters() -> Iterator[Metrics]:
    made = Metrics()
    yield made
    made.provider.shutdown()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    span_exporter = InMemorySpanExporter()
    yield span_exporter
    span_exporter.shutdown()


def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    """Every metric of the library's scope, by name."""
    data = reader.get_metrics_data()
    assert data is not None
    metrics: dict[str, Metric] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "instantly_oauth_async"
            for metric in scope.metrics:
                assert metric.name not in metrics
                metrics[metric.name] = metric
    return metrics


Attrs = frozenset[tuple[str, Any]]


def counts(metric: Metric) -> Counter[Attrs]:
    """Histogram: observations per attribute set; counter: its value per attribute set."""
    out: Counter[Attrs] = Counter()
    for point in metric.data.data_points:
        key = frozenset((point.attributes or {}).items())
        if isinstance(point, HistogramDataPoint):
            out[key] += point.count
        else:
            assert isinstance(point, NumberDataPoint)
            out[key] += int(point.value)
    return out


def histogram(metric: Metric) -> list[HistogramDataPoint]:
    points = list(metric.data.data_points)
    assert points and all(isinstance(p, HistogramDataPoint) for p in points), metric.name
    return points  # type: ignore[return-value]  # checked just above


def attrs(values: dict[str, Any]) -> Attrs:
    return frozenset(values.items())


GOOGLE = attrs({"instantly.provider": "google"})
MICROSOFT = attrs({"instantly.provider": "microsoft"})


def http(operation: str, provider: str | None, status: int | None, error: str | None,
         port: int) -> Attrs:
    values: dict[str, Any] = {
        "http.request.method": "POST" if operation == "init" else "GET",
        "server.address": "127.0.0.1", "server.port": port, "instantly.operation": operation}
    if provider is not None:
        values["instantly.provider"] = provider
    if status is not None:
        values["http.response.status_code"] = status
    if error is not None:
        values["error.type"] = error
    return frozenset(values.items())


async def test_a_scripted_run_records_exact_metrics_and_one_span_per_session(
    csim: Simulator, meters: Metrics, exporter: InMemorySpanExporter,
) -> None:
    workspace = csim.add_workspace()
    traces = tracer_provider(exporter)
    hook = OpenTelemetryHook(meters.provider, traces, spans=True)
    events: list[Event] = []
    port = int(csim.url.rsplit(":", 1)[1])
    secrets: list[str] = [workspace.api_key, "ann@acme.io", "acme.io"]
    handler_span = traces.get_tracer("app").start_span("handler")
    async with OAuthManager(
        workspace.api_key, base_url=csim.url, store=MemoryStore(),
        **csim.limits.manager_limits(
            poll_interval=0.1, expiry_grace=1.0,
            breaker=BreakerPolicy(failure_threshold=2, cooldown=0.3),
            # retry: a read without an answer is read again min(poll_interval, 0.1-0.2 s)
            # later, time enough to end the fault below before then
            retry=RetryPolicy(attempts=2, base=0.2)),
        hooks=[hook, events.append],
    ) as manager:
        # success, after a 429 on its first status read; started inside the app's own span
        csim.enqueue("status", CannedResponse(429, "{}", (("Retry-After", "0"),)))
        with trace.use_span(handler_span, end_on_exit=True):
            pending = await manager.start("google", expected_email="ann@acme.io")
        csim.complete(pending.session.session_id, "ann@acme.io")
        assert (await pending).ok
        sessions = [pending.session]
        # the person denies (microsoft)
        pending = await manager.start("microsoft")
        csim.deny(pending.session.session_id)
        assert (await pending).status.value == "error"
        sessions.append(pending.session)
        # expired
        pending = await manager.start("google")
        csim.expire(pending.session.session_id)
        assert (await pending).status.value == "expired"
        sessions.append(pending.session)
        # cancelled before its first poll
        pending = await manager.start("google")
        pending.cancel()
        with pytest.raises(SessionCancelledError):
            await pending
        sessions.append(pending.session)
        # lost: the status read answers 404 and no expected_email can settle it
        csim.enqueue("status", CannedResponse(404, '{"statusCode": 404}'))
        pending = await manager.start("google")
        with pytest.raises(OutcomeLostError):
            await pending
        sessions.append(pending.session)
        # a read without an answer (the body cut short), then the person denies
        pending = await manager.start("google")
        csim.faults = Faults(truncated=1.0, kinds=frozenset({"status"}))
        await csim.wait_for(lambda: any(r.outcome == "truncated" for r in csim.requests))
        csim.faults = Faults()
        csim.deny(pending.session.session_id)
        assert (await pending).status.value == "error"
        sessions.append(pending.session)
        # the breaker: two 503s open it, a start that will not wait is denied, the probe closes it
        csim.outage("google", count=2)
        with pytest.raises(ServiceUnavailableError):
            await manager.start("google")
        with pytest.raises(CircuitOpenError):
            await manager.start("google", timeout=0)
        pending = await manager.start("google")
        sessions.append(pending.session)
        during = collect(meters.reader)
        assert counts(during["instantly.oauth.session.active"]) == {
            GOOGLE: 1, MICROSOFT: 0}
        # left pending: the manager's close ends it as "closed"
    metrics = collect(meters.reader)
    secrets += [s.session_id for s in sessions] + [s.auth_url for s in sessions]

    assert {name: m.unit for name, m in metrics.items()} == UNITS
    duration = metrics["http.client.request.duration"]
    assert all(tuple(p.explicit_bounds) == HTTP_DURATION_BUCKETS for p in histogram(duration))
    assert counts(duration) == {
        http("init", "google", 200, None, port): 6,
        http("init", "microsoft", 200, None, port): 1,
        http("init", "google", 503, "503", port): 2,
        http("status", "google", 429, "429", port): 1,
        http("status", "google", 200, None, port): 3,
        http("status", "microsoft", 200, None, port): 1,
        http("status", "google", 404, "404", port): 1,
        http("status", "google", None, "TransportError", port): 1,
        http("account", "google", 200, None, port): 1,  # the session's provider
    }
    # the simulator saw exactly those requests, with those answers
    api = [r for r in csim.requests if r.kind in ("init", "status", "account")]
    assert len(api) == sum(counts(duration).values()) == 17
    assert Counter((r.kind, r.status) for r in api if r.outcome != "truncated") == {
        ("init", 200): 7, ("init", 503): 2, ("status", 429): 1, ("status", 200): 4,
        ("status", 404): 1, ("account", 200): 1}
    assert all(p.sum > 0 and p.min > 0 for p in histogram(duration))

    waits = metrics["instantly.oauth.budget.wait.duration"]
    assert all(tuple(p.explicit_bounds) == BUDGET_WAIT_BUCKETS for p in histogram(waits))
    told = Counter(attrs({"instantly.budget": e.budget, "instantly.budget.granted": e.granted,
                          **({"instantly.provider": e.provider} if e.provider else {})})
                   for e in events if isinstance(e, BudgetWaited))
    # init: 8 google inits (two 503s among them) and 1 microsoft; read: 7 status reads, 1 account
    assert counts(waits) == told == {
        attrs({"instantly.budget": "init", "instantly.budget.granted": True,
               "instantly.provider": "google"}): 8,
        attrs({"instantly.budget": "init", "instantly.budget.granted": True,
               "instantly.provider": "microsoft"}): 1,
        attrs({"instantly.budget": "read", "instantly.budget.granted": True}): 8,
    }
    assert counts(metrics["instantly.oauth.init.denials"]) == {
        attrs({"instantly.provider": "google", "instantly.init.deny_reason": "breaker_open"}): 1}
    assert counts(metrics["instantly.oauth.breaker.transitions"]) == {
        attrs({"instantly.provider": "google", "instantly.breaker.old_state": old,
               "instantly.breaker.new_state": new}): 1
        for old, new in (("closed", "open"), ("open", "half_open"), ("half_open", "closed"))}
    session_duration = metrics["instantly.oauth.session.duration"]
    assert all(tuple(p.explicit_bounds) == SESSION_DURATION_BUCKETS
               for p in histogram(session_duration))
    assert counts(session_duration) == {
        attrs({"instantly.provider": provider, "instantly.session.outcome": outcome}): n
        for provider, outcome, n in (
            ("google", "success", 1), ("microsoft", "error", 1), ("google", "expired", 1),
            ("google", "cancelled", 1), ("google", "lost", 1), ("google", "error", 1),
            ("google", "closed", 1))}
    # +1 for every start, -1 for every end: nothing left active
    assert counts(metrics["instantly.oauth.session.active"]) == {
        GOOGLE: 0, MICROSOFT: 0}
    assert sum(isinstance(e, RequestFinished) for e in events) == 17

    spans = [s for s in exporter.get_finished_spans() if s.name != "handler"]
    assert [s.name for s in spans] == ["instantly.oauth.session"] * 7
    assert all(s.kind is SpanKind.INTERNAL for s in spans)
    assert [(s.attributes or {}).get("instantly.session.outcome") for s in spans] == [
        "success", "error", "expired", "cancelled", "lost", "error", "closed"]
    assert [(s.attributes or {}).get("instantly.provider") for s in spans] == [
        "google", "microsoft", "google", "google", "google", "google", "google"]
    assert [s.status.status_code for s in spans] == [
        StatusCode.UNSET] * 4 + [StatusCode.ERROR] + [StatusCode.UNSET] * 2
    assert spans[4].status.description == "lost"
    first = dict(spans[0].attributes or {})
    assert first == {"instantly.provider": "google", "instantly.session.resumed": False,
                     "instantly.session.outcome": "success", "instantly.session.polls": 2,
                     "instantly.session.reconciled": False}
    assert spans[0].parent is not None
    assert spans[0].parent.span_id == handler_span.get_span_context().span_id
    assert all(s.parent is None for s in spans[1:])
    assert all(s.end_time is not None and s.start_time is not None
               and s.end_time >= s.start_time for s in spans)
    assert not hook._spans  # every span ended

    shown = [json.dumps(m.to_json()) for m in metrics.values()] + [s.to_json() for s in spans]
    for text in shown:
        assert not any(secret in text for secret in secrets)
    traces.shutdown()


async def test_spans_are_opt_in(csim: Simulator, meters: Metrics,
                                exporter: InMemorySpanExporter) -> None:
    workspace = csim.add_workspace()
    hook = OpenTelemetryHook(meters.provider, tracer_provider(exporter))
    async with OAuthManager(workspace.api_key, base_url=csim.url, store=MemoryStore(),
                            **csim.limits.manager_limits(poll_interval=0.05),
                            hooks=[hook]) as manager:
        pending = await manager.start("google")
        csim.complete(pending.session.session_id, "bob@acme.io")
        assert (await pending).ok
    assert exporter.get_finished_spans() == ()
    assert counts(collect(meters.reader)["instantly.oauth.session.duration"]) == {
        attrs({"instantly.provider": "google", "instantly.session.outcome": "success"}): 1}


def test_the_hook_never_raises_into_the_library(
    meters: Metrics, caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def record(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("the exporter's bad day")

    hook = OpenTelemetryHook(meters.provider)
    hook._http_duration = Broken()  # type: ignore[assignment]
    finished = RequestFinished("status", "google", 200, None, 0.01, 1, None, "127.0.0.1", 443)
    with caplog.at_level(logging.WARNING, logger="instantly_oauth_async.otel"):
        for _ in range(3):
            hook(finished)  # nothing raised
        hook(SessionStarted("google", 1))  # the other instruments still record
    failures = [r for r in caplog.records if r.name == "instantly_oauth_async.otel"]
    assert [r.getMessage() for r in failures] == [
        "OpenTelemetryHook failed on RequestFinished (reported at most once a minute)"]
    assert counts(collect(meters.reader)["instantly.oauth.session.active"]) == {
        GOOGLE: 1}
    hook("not an event")  # type: ignore[arg-type]  # an unknown kind is ignored


def run_python(code: str) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603 - our own argv
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_importing_the_package_never_imports_opentelemetry() -> None:
    found = run_python(
        "import json, sys\n"
        "import instantly_oauth_async\n"
        "manager = instantly_oauth_async.OAuthManager('key', hooks=[lambda event: None])\n"
        "before = sorted(n for n in sys.modules if n.split('.')[0] == 'opentelemetry')\n"
        "import instantly_oauth_async.otel\n"
        "after = any(n.split('.')[0] == 'opentelemetry' for n in sys.modules)\n"
        "print(json.dumps({'before': before, 'after': after}))\n")
    assert found == {"before": [], "after": True}


def test_the_default_is_the_global_providers_and_no_sdk_is_a_no_op() -> None:
    found = run_python(
        "import json\n"
        "from instantly_oauth_async import SessionResolved, SessionStarted\n"
        "from instantly_oauth_async.otel import OpenTelemetryHook\n"
        "bare = OpenTelemetryHook(spans=True)  # no SDK yet: OpenTelemetry's no-ops\n"
        "bare(SessionStarted('google', 1))\n"
        "bare(SessionResolved('google', 'lost', 1.0, 3, False, 1))\n"
        "from opentelemetry import metrics, trace\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()\n"
        "metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))\n"
        "tracing = TracerProvider(); tracing.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(tracing)\n"
        "hook = OpenTelemetryHook(spans=True)\n"
        "hook(SessionStarted('google', 7, resumed=True))\n"
        "hook(SessionResolved('google', 'lost', 1.0, 3, False, 7))\n"
        "names = [m.name for r in reader.get_metrics_data().resource_metrics\n"
        "         for s in r.scope_metrics for m in s.metrics]\n"
        "spans = [(s.name, s.status.status_code.name, dict(s.attributes))\n"
        "         for s in exporter.get_finished_spans()]\n"
        "print(json.dumps({'names': sorted(names), 'spans': spans}))\n")
    assert found == {
        "names": ["instantly.oauth.session.active", "instantly.oauth.session.duration"],
        "spans": [["instantly.oauth.session", "ERROR", {
            "instantly.provider": "google", "instantly.session.resumed": True,
            "instantly.session.outcome": "lost", "instantly.session.polls": 3,
            "instantly.session.reconciled": False}]],
    }


def test_the_module_exports_the_hook_and_its_buckets() -> None:
    assert otel_module.__all__ == [
        "BUDGET_WAIT_BUCKETS", "HTTP_DURATION_BUCKETS", "SESSION_DURATION_BUCKETS",
        "OpenTelemetryHook"]
    assert HTTP_DURATION_BUCKETS == (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1,
                                     2.5, 5, 7.5, 10)
