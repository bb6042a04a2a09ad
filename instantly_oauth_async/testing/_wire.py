"""What happens on the wire: responses as the API shapes them, the network's delays, and the
fault knobs that make the server misbehave on purpose (errors, dropped connections, truncated or
garbled bodies)."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web

__all__ = [
    "CannedResponse", "Dropped", "Faults", "Misbehaviour", "Network", "drop", "error_response",
    "json_response", "swallow_dropped",
]

_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@attrs.define
class Faults:
    """Probabilities (0 to 1) of misbehaviour per request, drawn from a seeded RNG.

    ``kinds`` limits them to some endpoints. ``reset_after`` acts on the request (creates the
    session, consumes the terminal status) and then drops the connection, so the answer is lost.
    """

    server_error: float = 0.0  #: a 500 JSON error before acting
    bad_gateway_html: float = 0.0  #: a proxy's 502 HTML page before acting
    reset_before: float = 0.0  #: drop the connection before acting
    reset_after: float = 0.0  #: act, then drop the connection
    truncated: float = 0.0  #: act, then send half the body and drop the connection
    non_json: float = 0.0  #: act, then answer 200 with a body that is not JSON
    slow: float = 0.0  #: wait ``slow_seconds`` before handling
    slow_seconds: float = 0.0
    rate_limited: float = 0.0  #: a 429 with ``Retry-After: rate_limited_after`` before acting
    rate_limited_after: float = 1.0  #: seconds (compress it with the limits)
    kinds: frozenset[str] = frozenset({"init", "status", "account"})
    seed: int = 0


@attrs.define
class Network:
    """How long the wire takes, each way, for every API request (consent pages are not delayed).

    A request waits ``latency`` plus a uniform draw from ``[0, jitter]`` seconds before the server
    sees it (logs it, counts it against a limit, acts on it), and again before its response
    leaves: so requests that a client sent in order may reach the server bunched or reordered,
    as they do through a real network. Draws come from an RNG seeded with ``seed``.
    """

    latency: float = 0.0
    jitter: float = 0.0
    seed: int = 0
    #: the endpoints delayed (``{"status"}``: only status reads are slow)
    kinds: frozenset[str] = frozenset({"init", "status", "account"})

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.latency < math.inf and 0 <= self.jitter < math.inf):
            raise ValueError("latency and jitter must be non-negative numbers of seconds")


@attrs.frozen
class CannedResponse:
    """A response served instead of the real one, once, for the next request of its kind."""

    status: int
    body: bytes | str = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


def json_response(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
                  ) -> web.Response:
    response = web.Response(
        status=status, body=json.dumps(payload).encode(), content_type="application/json"
    )
    response.headers.update(headers or {})
    return response


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> web.Response:
    """The API's error body: ``{statusCode, error, message}``."""
    payload = {"statusCode": status, "error": _STATUS_TEXT.get(status, "Error"),
               "message": message}
    return json_response(status, payload, headers)


class Misbehaviour:
    """Draws the faults and delays of each request from seeded RNGs; reads the knobs anew each
    time, so a test may replace ``faults`` or ``network`` on the simulator at any moment."""

    def __init__(self, faults: Callable[[], Faults], network: Callable[[], Network]) -> None:
        self._faults = faults
        self._network = network
        self._rng = random.Random(faults().seed)
        self._net_rng = random.Random(network().seed)

    async def delay(self, kind: str | None = None) -> None:
        """One leg of the network's delay (see :class:`Network`) for a request of ``kind``."""
        net = self._network()
        if kind is not None and kind not in net.kinds:
            return
        delay = net.latency + (self._net_rng.uniform(0.0, net.jitter) if net.jitter else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

    async def before(self, kind: str) -> str | web.Response | None:
        """A fault that happens before the server acts: a response, "reset", or None."""
        f = self._faults()
        if kind not in f.kinds:
            return None
        if f.slow and self._rng.random() < f.slow:
            await asyncio.sleep(f.slow_seconds)
        if f.reset_before and self._rng.random() < f.reset_before:
            return "reset"
        if f.server_error and self._rng.random() < f.server_error:
            return error_response(500, "Internal server error")
        if f.bad_gateway_html and self._rng.random() < f.bad_gateway_html:
            return web.Response(
                status=502, text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                content_type="text/html",
            )
        if f.rate_limited and self._rng.random() < f.rate_limited:
            return error_response(429, "Rate limit exceeded",
                                  {"Retry-After": f"{f.rate_limited_after:g}"})
        return None

    def after(self, kind: str) -> str | None:
        """A fault that happens after the server acted: how the answer gets lost, or None."""
        f = self._faults()
        if kind not in f.kinds:
            return None
        if f.reset_after and self._rng.random() < f.reset_after:
            return "acted-then-reset"
        if f.truncated and self._rng.random() < f.truncated:
            return "truncated"
        if f.non_json and self._rng.random() < f.non_json:
            return "non-json"
        return None

    @staticmethod
    async def deliver(request: web.Request, response: web.Response, fault: str | None,
                      finish: Callable[[web.StreamResponse], web.StreamResponse]
                      ) -> web.StreamResponse:
        """Send ``response`` (``finish`` dates it), or lose it the way ``fault`` says."""
        finish(response)
        if fault == "acted-then-reset":
            drop(request)
            raise Dropped
        if fault == "truncated":
            body = response.body if isinstance(response.body, bytes) else b"{}"
            stream = web.StreamResponse(status=response.status, headers=response.headers)
            stream.content_length = len(body)
            await stream.prepare(request)
            await stream.write(body[: max(1, len(body) // 2)])
            drop(request)
            raise Dropped
        if fault == "non-json":
            return finish(
                web.Response(status=200, text="<html>maintenance</html>", content_type="text/html")
            )
        return response


class Dropped(Exception):
    pass


def drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


@web.middleware
async def swallow_dropped(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except Dropped:
        # The transport is gone; aiohttp needs a response object but cannot send it.
        return web.Response(status=499)
