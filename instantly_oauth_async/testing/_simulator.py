"""A faithful stand-in for the Instantly OAuth session API: a real ``aiohttp.web`` server.

It enforces the rules the API documents (see ``shared/DESIGN.md``):

* init: per provider, ``init_per_workspace`` (75) per workspace and ``init_per_ip`` (150) per IP in
  any sliding window of ``init_window`` (60 s); 429 past them with ``Retry-After``; an IP that keeps
  going past the limit (``abuse_threshold`` rejections inside one window) is blocked for 30 min,
  then 2 h, then 24 h, each 429 carrying the remaining block in ``Retry-After``; 503 during a
  scripted provider outage;
* every request: the standard workspace limit, 100/s and 6,000/min (sliding windows);
* sessions expire ``session_ttl`` (600 s) after creation; a ``success`` or ``error`` session is
  deleted by its first status read; another workspace's session is a 404;
* Google refuses ``@gmail.com`` mailboxes; a mailbox connected to another workspace fails with
  ``account_exists``; a success creates the account that ``GET /api/v2/accounts/{email}`` serves.

Everything that takes time reads ``clock`` (monotonic seconds), so tests can compress time by
shrinking the limits or inject a fake clock. Fault knobs (:class:`Faults`) and canned responses
(:meth:`Simulator.enqueue`) make the server misbehave on purpose; :attr:`Simulator.requests` logs
what arrived (never the ``Authorization`` value).
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import attrs
from aiohttp import web

from .._models import RateLimit

__all__ = [
    "CannedResponse",
    "Faults",
    "LoggedRequest",
    "Network",
    "SimSession",
    "Simulator",
    "SimulatorLimits",
    "Workspace",
]

Kind = Literal["init", "status", "account", "consent", "other"]
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

    def manager_limits(self, *, status_share: float = 0.5) -> dict[str, Any]:
        """``OAuthManager`` keyword arguments that mirror these rules exactly: ``init_limit``,
        ``ip_init_limit``, ``standard_limit``, and ``status_limit`` as ``status_share`` of the
        standard budget (1: polling may spend all that inits leave).

        ``OAuthManager(key, base_url=sim.url, **sim.limits.manager_limits())``
        """
        if not 0 < status_share <= 1:
            raise ValueError("status_share must be a fraction above 0, at most 1")
        standard = (RateLimit(self.api_per_second, per=self.api_second_window),
                    RateLimit(self.api_per_minute, per=self.api_minute_window))
        return {
            "init_limit": RateLimit(self.init_per_workspace, per=self.init_window),
            "ip_init_limit": RateLimit(self.init_per_ip, per=self.init_window),
            "standard_limit": standard,
            "status_limit": tuple(
                RateLimit(max(1, math.floor(limit.count * status_share)), per=limit.per)
                for limit in standard),
        }

    def compressed(self, factor: float) -> SimulatorLimits:
        """The same counts with every duration divided by ``factor`` (60 s becomes 60/factor)."""
        return attrs.evolve(
            self,
            init_window=self.init_window / factor,
            api_second_window=self.api_second_window / factor,
            api_minute_window=self.api_minute_window / factor,
            session_ttl=self.session_ttl / factor,
            block_durations=tuple(d / factor for d in self.block_durations),
            purge_after=self.purge_after / factor,
        )


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


@attrs.define
class Workspace:
    workspace_id: str
    name: str
    api_key: str = attrs.field(repr=False)
    scopes: frozenset[str]
    paid: bool = True
    revoked: bool = False


@attrs.define
class SimSession:
    session_id: str
    workspace_id: str
    provider: str
    consent_token: str = attrs.field(repr=False)
    created: float
    expires: float
    expires_at: datetime
    state: Literal["pending", "success", "error"] = "pending"
    email: str | None = None
    name: str | None = None
    error: str | None = None
    error_description: str | None = None


@attrs.frozen
class LoggedRequest:
    """One request as the simulator saw it. The API key is never stored, only whether one came."""

    at: float
    method: str
    path: str
    kind: str
    status: int
    ip: str
    workspace_id: str | None
    provider: str | None
    had_authorization: bool
    user_agent: str | None
    outcome: str = ""  #: "reset", "truncated", "canned", "acted-then-reset", ...


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

    def times(self) -> list[float]:
        return list(self._times)


def _scope_ok(scopes: Iterable[str], needed: str) -> bool:
    resource, action = needed.split(":")
    have = set(scopes)
    return bool(
        have & {needed, f"{resource}:all", f"all:{action}", "all:all"}
    )


class Simulator:
    """The Instantly OAuth API on loopback. ``async with Simulator() as sim: sim.url ...``."""

    def __init__(
        self,
        *,
        limits: SimulatorLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_skew: float = 0.0,
        faults: Faults | None = None,
        network: Network | None = None,
        trust_forwarded_for: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.limits = limits or SimulatorLimits()
        self._base_clock = clock
        self._offset = 0.0
        #: seconds the server's wall clock runs ahead of the real one (negative: behind)
        self.wall_skew = wall_skew
        self.faults = faults or Faults()
        #: delays on the wire for every API request; replace it at any time
        self.network = network or Network()
        self._net_rng = random.Random(self.network.seed)
        self.trust_forwarded_for = trust_forwarded_for
        self._host, self._port = host, port
        self._epoch = time.time() - clock()
        self._rng = random.Random(self.faults.seed)
        self.workspaces: dict[str, Workspace] = {}
        self.sessions: dict[str, SimSession] = {}
        self.accounts: dict[str, tuple[str, dict[str, Any]]] = {}
        self.requests: list[LoggedRequest] = []
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
        self._canned: dict[str, deque[CannedResponse]] = {}
        self._redirect_to: str | None = None
        self._waiters: set[anyio.Event] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.app = self._make_app()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Serve on ``host:port`` (port 0: a free one); returns the base URL."""
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}"
        return self.url

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- set-up and scripting ----------------------------------------------------------------

    def add_workspace(
        self,
        name: str = "acme",
        *,
        api_key: str | None = None,
        scopes: Iterable[str] = ("accounts:all",),
        paid: bool = True,
    ) -> Workspace:
        """A workspace and its API key (a random one unless given)."""
        key = api_key or f"sim_{secrets.token_urlsafe(24)}"
        workspace = Workspace(str(uuid.uuid4()), name, key, frozenset(scopes), paid)
        self.workspaces[key] = workspace
        return workspace

    def add_api_key(self, workspace: Workspace, api_key: str | None = None) -> str:
        """Another API key of ``workspace``: every limit and session it meets is the workspace's."""
        key = api_key or f"sim_{secrets.token_urlsafe(24)}"
        self.workspaces[key] = workspace
        return key

    def revoke(self, workspace: Workspace) -> None:
        workspace.revoked = True

    def outage(
        self, provider: str, *, seconds: float | None = None, count: int | None = None
    ) -> None:
        """Answer the provider's inits with 503: for ``seconds``, or for the next ``count``."""
        if seconds is not None:
            self._outage_until[provider] = self.clock() + seconds
        if count is not None:
            self._outage_count[provider] = count

    def end_outage(self, provider: str) -> None:
        self._outage_until.pop(provider, None)
        self._outage_count.pop(provider, None)

    def block_ip(self, provider: str, ip: str, seconds: float) -> None:
        """Block ``ip``'s inits for ``provider`` as if it had abused them."""
        self._blocked_until[(ip, provider)] = self.clock() + seconds

    def enqueue(self, kind: Kind, response: CannedResponse) -> None:
        """Serve ``response`` to the next authenticated request of ``kind``, instead of acting."""
        self._canned.setdefault(kind, deque()).append(response)

    def redirect_all(self, target: str | None) -> None:
        """Answer every API request with a 307 to ``target`` + path (None: stop)."""
        self._redirect_to = target

    def clock(self) -> float:
        """The server's monotonic time: the injected clock plus every :meth:`advance`."""
        return self._base_clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the server's time forward (windows, TTLs, blocks and its wall clock alike)."""
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._offset += seconds

    def now_wall(self) -> datetime:
        """The server's wall clock (the real one plus ``wall_skew``, following ``clock``)."""
        return datetime.fromtimestamp(self._epoch + self.clock() + self.wall_skew, timezone.utc)

    # -- what a person does on the consent page ----------------------------------------------

    def session_for(self, auth_url: str) -> SimSession:
        """The session an ``auth_url`` belongs to (KeyError when unknown)."""
        token = urlsplit(auth_url).path.rsplit("/", 1)[-1]
        for session in self.sessions.values():
            if session.consent_token == token:
                return session
        raise KeyError("no session for that auth_url")

    def complete(self, session_id: str, email: str, name: str | None = None) -> SimSession:
        """The person allows access with mailbox ``email``; the server's rules decide."""
        session = self._live(session_id)
        provider = session.provider
        mailbox = email.strip()
        owner = self.accounts.get(mailbox.lower())
        if provider == "google" and mailbox.lower().endswith("@gmail.com"):
            self._set_error(session, "access_denied", "Non GSuite accounts are not allowed")
        elif owner is not None and owner[0] != session.workspace_id:
            self._set_error(
                session, "account_exists", "Account already connected to another workspace"
            )
        else:
            session.state, session.email = "success", mailbox
            session.name = name if name is not None else mailbox.split("@")[0].title()
            self._create_account(session)
        return session

    def deny(self, session_id: str) -> SimSession:
        session = self._live(session_id)
        self._set_error(session, "access_denied", "User denied access to the application")
        return session

    def fail(
        self, session_id: str, error: str = "server_error", description: str = ""
    ) -> SimSession:
        session = self._live(session_id)
        self._set_error(session, error, description or "Internal server error")
        return session

    def expire(self, session_id: str) -> None:
        """Make a session expire now."""
        session = self.sessions[session_id]
        session.expires = self.clock()

    def pending_sessions(self) -> list[SimSession]:
        now = self.clock()
        return [s for s in self.sessions.values() if s.state == "pending" and s.expires > now]

    def _live(self, session_id: str) -> SimSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise KeyError(f"unknown session {session_id!r}")
        if session.state != "pending":
            raise ValueError(f"session {session_id!r} is already {session.state}")
        if self.clock() >= session.expires:
            raise ValueError(f"session {session_id!r} has expired")
        return session

    @staticmethod
    def _set_error(session: SimSession, error: str, description: str) -> None:
        session.state, session.error, session.error_description = "error", error, description

    def _create_account(self, session: SimSession) -> None:
        assert session.email is not None  # noqa: S101 - set by complete() just before
        stamp = self.now_wall().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        first, _, last = (session.name or "").partition(" ")
        self.accounts[session.email.lower()] = (
            session.workspace_id,
            {
                "email": session.email,
                "timestamp_created": stamp,
                "timestamp_updated": stamp,
                "first_name": first,
                "last_name": last,
                "organization": session.workspace_id,
                "warmup_status": 0,
                "provider_code": 2 if session.provider == "google" else 3,
                "setup_pending": False,
                "is_managed_account": False,
                "status": 1,
                "daily_limit": 50,
                "warmup": {"limit": 20, "increment": "disabled", "advanced": {"warm_ctd": False}},
                "sending_gap": 10,
                "stat_warmup_score": None,
            },
        )

    # -- HTTP --------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[_swallow_dropped])
        app.router.add_post("/api/v2/oauth/{provider}/init", self._init)
        app.router.add_get("/api/v2/oauth/session/status/{session_id}", self._status)
        app.router.add_get("/api/v2/accounts/{email}", self._account)
        app.router.add_get("/sim/consent/{token}", self._consent_page)
        app.router.add_post("/sim/consent/{token}", self._consent_submit)
        return app

    def _ip(self, request: web.Request) -> str:
        forwarded = request.headers.get("X-Forwarded-For") if self.trust_forwarded_for else None
        if forwarded:
            return forwarded.split(",")[0].strip()
        return request.remote or "unknown"

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
              ) -> web.Response:
        response = web.Response(
            status=status, body=json.dumps(payload).encode(), content_type="application/json"
        )
        response.headers.update(headers or {})
        return response

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None
               ) -> web.Response:
        payload = {"statusCode": status, "error": _STATUS_TEXT.get(status, "Error"),
                   "message": message}
        return self._json(status, payload, headers)

    def _log(self, request: web.Request, kind: str, status: int, ws: Workspace | None,
             provider: str | None = None, *, outcome: str = "") -> None:
        self.requests.append(
            LoggedRequest(
                at=self.clock(), method=request.method, path=request.raw_path, kind=kind,
                status=status, ip=self._ip(request),
                workspace_id=ws.workspace_id if ws else None, provider=provider,
                had_authorization="Authorization" in request.headers,
                user_agent=request.headers.get("User-Agent"), outcome=outcome,
            )
        )
        for waiter in self._waiters:
            waiter.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checking it after every request the server logs.

        Bound it with ``anyio.fail_after``.
        """
        while not predicate():
            event = anyio.Event()
            self._waiters.add(event)
            try:
                await event.wait()
            finally:
                self._waiters.discard(event)

    def _authenticate(self, request: web.Request, scope: str) -> Workspace | web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return self._error(401, "Missing Authorization header")
        workspace = self.workspaces.get(header[len("Bearer "):].strip())
        if workspace is None or workspace.revoked:
            return self._error(401, "Invalid API key")
        if not _scope_ok(workspace.scopes, scope):
            return self._error(403, f"API key is missing the {scope} scope")
        return workspace

    def _standard_limit(self, workspace: Workspace) -> web.Response | None:
        now, lim = self.clock(), self.limits
        second = self._api_sec.setdefault(workspace.workspace_id, _Window())
        minute = self._api_min.setdefault(workspace.workspace_id, _Window())
        wait = max(
            second.full(now, lim.api_second_window, lim.api_per_second),
            minute.full(now, lim.api_minute_window, lim.api_per_minute),
        )
        if wait > 0:
            return self._error(429, "Rate limit exceeded", {"Retry-After": str(math.ceil(wait))})
        second.add(now)
        minute.add(now)
        return None

    def _finish(self, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["Date"] = format_datetime(self.now_wall(), usegmt=True)
        return response

    async def _fault_before(self, request: web.Request, kind: str) -> str | web.Response | None:
        """A fault that happens before the server acts: a response, "reset", or None."""
        f = self.faults
        if kind not in f.kinds:
            return None
        if f.slow and self._rng.random() < f.slow:
            await asyncio.sleep(f.slow_seconds)
        if f.reset_before and self._rng.random() < f.reset_before:
            return "reset"
        if f.server_error and self._rng.random() < f.server_error:
            return self._error(500, "Internal server error")
        if f.bad_gateway_html and self._rng.random() < f.bad_gateway_html:
            return web.Response(
                status=502, text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                content_type="text/html",
            )
        if f.rate_limited and self._rng.random() < f.rate_limited:
            return self._error(429, "Rate limit exceeded",
                               {"Retry-After": f"{f.rate_limited_after:g}"})
        return None

    def _fault_after(self, kind: str) -> str | None:
        f = self.faults
        if kind not in f.kinds:
            return None
        if f.reset_after and self._rng.random() < f.reset_after:
            return "acted-then-reset"
        if f.truncated and self._rng.random() < f.truncated:
            return "truncated"
        if f.non_json and self._rng.random() < f.non_json:
            return "non-json"
        return None

    async def _deliver(self, request: web.Request, response: web.Response, fault: str | None
                       ) -> web.StreamResponse:
        """Send ``response``, or lose it the way ``fault`` says."""
        self._finish(response)
        if fault == "acted-then-reset":
            _drop(request)
            raise _Dropped
        if fault == "truncated":
            body = response.body if isinstance(response.body, bytes) else b"{}"
            stream = web.StreamResponse(status=response.status, headers=response.headers)
            stream.content_length = len(body)
            await stream.prepare(request)
            await stream.write(body[: max(1, len(body) // 2)])
            _drop(request)
            raise _Dropped
        if fault == "non-json":
            return self._finish(
                web.Response(status=200, text="<html>maintenance</html>", content_type="text/html")
            )
        return response

    async def _wire(self) -> None:
        """One leg of the network's delay (see :class:`Network`)."""
        net = self.network
        delay = net.latency + (self._net_rng.uniform(0.0, net.jitter) if net.jitter else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _handle(
        self,
        request: web.Request,
        kind: Kind,
        scope: str,
        act: Callable[[Workspace], web.Response],
        provider: str | None = None,
        *,
        paid_only: bool = False,
    ) -> web.StreamResponse:
        await self._wire()  # on its way in: the server sees the request only now
        response = await self._serve(request, kind, scope, act, provider, paid_only=paid_only)
        await self._wire()  # on its way back
        return response

    async def _serve(
        self,
        request: web.Request,
        kind: Kind,
        scope: str,
        act: Callable[[Workspace], web.Response],
        provider: str | None,
        *,
        paid_only: bool,
    ) -> web.StreamResponse:
        if self._redirect_to is not None:
            self._log(request, kind, 307, None, provider, outcome="redirect")
            raise web.HTTPTemporaryRedirect(self._redirect_to + request.raw_path)
        auth = self._authenticate(request, scope)
        if isinstance(auth, web.Response):
            self._log(request, kind, auth.status, None, provider)
            return self._finish(auth)
        workspace = auth
        if paid_only and not workspace.paid:
            response = self._error(402, "Workspace does not have an active paid plan")
            self._log(request, kind, 402, workspace, provider)
            return self._finish(response)
        canned = self._canned.get(kind)
        if canned:
            spec = canned.popleft()
            body = spec.body.encode() if isinstance(spec.body, str) else spec.body
            response = web.Response(status=spec.status, body=body, content_type=spec.content_type)
            for name, value in spec.headers:
                response.headers.add(name, value)
            self._log(request, kind, spec.status, workspace, provider, outcome="canned")
            return self._finish(response)
        before = await self._fault_before(request, kind)
        if before == "reset":
            self._log(request, kind, 0, workspace, provider, outcome="reset")
            _drop(request)
            raise _Dropped
        if isinstance(before, web.Response):
            self._log(request, kind, before.status, workspace, provider, outcome="fault")
            return self._finish(before)
        limited = self._standard_limit(workspace)
        if limited is not None:
            self._log(request, kind, 429, workspace, provider, outcome="standard-limit")
            return self._finish(limited)
        response = act(workspace)
        fault = self._fault_after(kind) if response.status == 200 else None
        self._log(request, kind, response.status, workspace, provider, outcome=fault or "")
        return await self._deliver(request, response, fault)

    async def _init(self, request: web.Request) -> web.StreamResponse:
        provider = request.match_info["provider"]
        if provider not in ("google", "microsoft"):
            self._log(request, "other", 404, None)
            return self._finish(self._error(404, "Route not found"))
        ip = self._ip(request)
        return await self._handle(
            request, "init", "accounts:create", lambda ws: self._init_act(ws, provider, ip),
            provider,
        )

    def _init_act(self, workspace: Workspace, provider: str, ip: str) -> web.Response:
        now, lim = self.clock(), self.limits
        ip_key = (ip, provider)
        blocked = self._blocked_until.get(ip_key, 0.0) - now
        if blocked > 0:
            return self._error(
                429, "Too many requests from this IP; temporarily blocked",
                {"Retry-After": str(math.ceil(blocked))},
            )
        ip_window = self._init_ip.setdefault(ip_key, _Window())
        ws_window = self._init_ws.setdefault((workspace.workspace_id, provider), _Window())
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
            return self._error(
                429, "Rate limit exceeded for OAuth session creation",
                {"Retry-After": str(math.ceil(wait))},
            )
        ip_window.add(now)
        ws_window.add(now)
        if self._outage_count.get(provider, 0) > 0 or self._outage_until.get(provider, 0) > now:
            if self._outage_count.get(provider, 0) > 0:
                self._outage_count[provider] -= 1
            return self._error(503, "OAuth is temporarily unavailable, please retry shortly")
        self.init_times.setdefault((workspace.workspace_id, provider), []).append(now)
        session = SimSession(
            session_id=secrets.token_hex(16),
            workspace_id=workspace.workspace_id,
            provider=provider,
            consent_token=secrets.token_urlsafe(24),
            created=now,
            expires=now + lim.session_ttl,
            expires_at=self.now_wall() + timedelta(seconds=lim.session_ttl),
        )
        self.sessions[session.session_id] = session
        return self._json(200, {
            "session_id": session.session_id,
            "auth_url": f"{self.url}/sim/consent/{session.consent_token}",
            "expires_at": session.expires_at.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
        })

    async def _status(self, request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["session_id"]
        session = self.sessions.get(session_id)
        provider = session.provider if session else None
        return await self._handle(
            request, "status", "accounts:read", lambda ws: self._status_act(ws, session_id),
            provider,
        )

    def _status_act(self, workspace: Workspace, session_id: str) -> web.Response:
        now = self.clock()
        session = self.sessions.get(session_id)
        if session is None or session.workspace_id != workspace.workspace_id:
            return self._error(404, "Session not found")
        if session.state == "success":
            del self.sessions[session_id]
            return self._json(200, {"status": "success", "email": session.email,
                                    "name": session.name})
        if session.state == "error":
            del self.sessions[session_id]
            return self._json(200, {"status": "error", "error": session.error,
                                    "error_description": session.error_description})
        if now >= session.expires:
            if now >= session.expires + self.limits.purge_after:
                del self.sessions[session_id]
                return self._error(404, "Session not found")
            return self._json(200, {"status": "expired", "error": "expired",
                                    "error_description": "Session expired"})
        return self._json(200, {"status": "pending"})

    async def _account(self, request: web.Request) -> web.StreamResponse:
        email = request.match_info["email"]
        return await self._handle(
            request, "account", "accounts:read", lambda ws: self._account_act(ws, email),
            paid_only=True,
        )

    def _account_act(self, workspace: Workspace, email: str) -> web.Response:
        found = self.accounts.get(email.lower())
        if found is None or found[0] != workspace.workspace_id:
            return self._error(404, "Resource not found")
        return self._json(200, found[1])

    # -- the consent page a person sees ------------------------------------------------------

    def _session_by_token(self, token: str) -> SimSession | None:
        return next((s for s in self.sessions.values() if s.consent_token == token), None)

    async def _consent_page(self, request: web.Request) -> web.StreamResponse:
        session = self._session_by_token(request.match_info["token"])
        if session is None or session.state != "pending" or self.clock() >= session.expires:
            self._log(request, "consent", 410, None)
            return _page(410, "Link expired", "<p>This sign-in link has expired.</p>")
        self._log(request, "consent", 200, None, session.provider)
        label = "Google Workspace" if session.provider == "google" else "Microsoft"
        form = (
            f"<p>Instantly wants to connect a {label} mailbox.</p>"
            '<form method="post">'
            '<label>Mailbox <input id="email" name="email" type="email" required></label> '
            '<label>Name <input id="name" name="name"></label> '
            '<button id="allow" name="action" value="allow" type="submit">Allow</button> '
            '<button id="deny" name="action" value="deny" type="submit" formnovalidate>'
            "Deny</button>"
            "</form>"
        )
        return _page(200, f"Sign in with {label}", form)

    async def _consent_submit(self, request: web.Request) -> web.StreamResponse:
        session = self._session_by_token(request.match_info["token"])
        if session is None or session.state != "pending" or self.clock() >= session.expires:
            self._log(request, "consent", 410, None)
            return _page(410, "Link expired", "<p>This sign-in link has expired.</p>")
        form = await request.post()
        self._log(request, "consent", 200, None, session.provider)
        if form.get("action") != "allow":
            self.deny(session.session_id)
            return _page(200, "Access denied", "<p>You denied access. You can close this tab.</p>")
        email = str(form.get("email", "")).strip()
        if "@" not in email:
            return _page(400, "Invalid mailbox", "<p>Enter a mailbox address.</p>")
        name = str(form.get("name", "")).strip() or None
        outcome = self.complete(session.session_id, email, name)
        if outcome.state == "success":
            text = f"<p id='done'>Connected {html.escape(email)}. You can close this tab.</p>"
            return _page(200, "Connected", text)
        return _page(200, "Not connected",
                     f"<p id='done'>{html.escape(session.error_description or '')}</p>")


class _Dropped(Exception):  # internal control flow, never escapes the server
    pass


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


@web.middleware
async def _swallow_dropped(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except _Dropped:
        # The transport is gone; aiohttp needs a response object but cannot send it.
        return web.Response(status=499)


def _page(status: int, title: str, body: str) -> web.Response:
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(status=status, text=doc, content_type="text/html")
