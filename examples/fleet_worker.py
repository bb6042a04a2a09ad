"""A worker of a fleet: run it on as many hosts and processes as you like, one Redis between them.

    pip install 'instantly-oauth-async[redis]'
    INSTANTLY_API_KEY=... INSTANTLY_STORE=redis://10.0.0.5:6379/0 python fleet_worker.py google 200

``OAuthManager.from_env()`` reads the configuration: the key, the store (``INSTANTLY_STORE``: a
``redis://`` or ``rediss://`` URL; a SQLite file path for the workers of one host), and
``INSTANTLY_BASE_URL`` and ``INSTANTLY_WORKSPACE`` when set. Every worker draws on the same init
budgets (75/min per workspace, 150/min per IP, per provider), status budget, learned blocks and
breakers, so adding workers never adds 429s. While Redis is unreachable a worker waits for it (the
store's default; to carry on alone with a share of each budget, pass a store of your own,
``RedisStore.from_url(url, fallback_share=1 / 3)``, as ``store=``). Each auth URL goes to stdout
as one JSON line for whatever delivers it to the person, flushed at once (piped, stdout is
block-buffered); results follow as they come.

``--metrics-port 9464`` (``pip install prometheus-client``) serves the worker's figures for
Prometheus at ``http://127.0.0.1:9464/metrics`` while it runs, through a hook of the manager:
requests by operation and status, sessions ended by outcome, sessions being polled, init denials,
breaker transitions and budget waits. It listens on loopback only (a scraper on the same host, or
a sidecar); port 0 picks a free port. The address goes to stderr as ``metrics: URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from instantly_oauth_async import (
    BreakerChanged,
    BudgetWaited,
    ConfigurationError,
    EnvironmentVariableError,
    Event,
    Hook,
    InitDenied,
    OAuthManager,
    OAuthSession,
    Provider,
    RequestFinished,
    SessionResolved,
    SessionStarted,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: The HTTP semantic conventions' buckets for request durations, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def prometheus_hook(registry: CollectorRegistry) -> Hook:
    """A hook of the manager that keeps Prometheus metrics in ``registry``. Every label comes
    from a closed set (operations, status codes, providers, outcomes): never a session id, an
    email or a URL, so the number of series stays small."""
    from prometheus_client import Counter, Gauge, Histogram  # noqa: PLC0415 - an optional extra

    requests = Histogram(
        "instantly_request_duration_seconds", "Requests to the Instantly API (status 0: no answer)",
        ["operation", "status"], buckets=DURATION_BUCKETS, registry=registry)
    sessions = Counter("instantly_sessions_resolved", "Sessions ended, by outcome",
                       ["provider", "outcome"], registry=registry)
    active = Gauge("instantly_sessions_active", "Sessions being polled", ["provider"],
                   registry=registry)
    denials = Counter("instantly_init_denials", "start() calls that sent no init",
                      ["provider", "reason"], registry=registry)
    breaker = Counter("instantly_breaker_transitions", "Circuit breaker changes",
                      ["provider", "old", "new"], registry=registry)
    waited = Counter("instantly_budget_wait_seconds", "Seconds spent waiting for rate budget",
                     ["budget"], registry=registry)
    for provider in Provider:  # present from the first scrape, at zero
        active.labels(provider.value)

    def hook(event: Event) -> None:  # runs inline, where the event happens: quick, no I/O
        if isinstance(event, RequestFinished):
            requests.labels(event.operation, str(event.status or 0)).observe(event.duration)
        elif isinstance(event, BudgetWaited):
            waited.labels(event.budget).inc(event.seconds)
        elif isinstance(event, SessionStarted):
            active.labels(event.provider).inc()
        elif isinstance(event, SessionResolved):
            active.labels(event.provider).dec()
            sessions.labels(event.provider, event.outcome).inc()
        elif isinstance(event, InitDenied):
            denials.labels(event.provider, event.reason).inc()
        elif isinstance(event, BreakerChanged):
            breaker.labels(event.provider, event.old, event.new).inc()

    return hook


async def main(provider: str, count: int, *, metrics_port: int | None = None,
               environ: Mapping[str, str] | None = None, **manager_options: Any) -> None:
    env = os.environ if environ is None else environ
    if "store" not in manager_options and env.get("INSTANTLY_STORE", "").strip().lower() in (
            "", "memory"):
        raise EnvironmentVariableError(
            "INSTANTLY_STORE", "INSTANTLY_STORE must name the store the fleet shares "
            "(redis://HOST:6379/0): on a store of its own, each worker spends the whole budget")
    metrics_server = None
    try:
        if metrics_port is not None:
            from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

            registry = CollectorRegistry()
            manager_options["hooks"] = [prometheus_hook(registry)]
            metrics_server, _ = start_http_server(metrics_port, "127.0.0.1", registry)
            print(f"metrics: http://127.0.0.1:{metrics_server.server_port}/metrics",
                  file=sys.stderr, flush=True)
        # The store built from INSTANTLY_STORE is the manager's: closed with it.
        async with OAuthManager.from_env(env, **manager_options) as manager:
            def hand_out(session: OAuthSession) -> None:
                # flush: piped to another program, stdout is block-buffered, and a link that
                # waits in the buffer until the worker exits is useless (its session expires)
                print(json.dumps({"session": session.session_id, "url": session.auth_url}),
                      flush=True)

            async for result in manager.connect_many(
                Provider(provider), count, on_session=hand_out, max_pending=50
            ):
                sid, status = result.session.session_id, result.status.value
                print(json.dumps({"session": sid, "status": status, "email": result.email}),
                      flush=True)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A worker of a fleet (see its docstring).")
    parser.add_argument("provider", choices=[p.value for p in Provider])
    parser.add_argument("count", type=int)
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on "
                        "127.0.0.1:PORT (0: a free port) while the worker runs")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.provider, args.count, metrics_port=args.metrics_port))
    except ConfigurationError as exc:  # a variable missing or malformed: its message names it
        sys.exit(f"fleet_worker: {exc}")
