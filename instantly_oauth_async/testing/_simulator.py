"""A faithful stand-in for the Instantly OAuth session API: a real ``aiohttp.web`` server.

This module is the HTTP app: routing, authentication, the request log, fault knobs and the
network's delays. The rules live beside it, one concern a module: ``_rules`` (limits, blocks,
outages), ``_sessions`` (sessions and the consent page), ``_accounts`` (connected accounts).
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

import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import TracebackType
from typing import Literal

import anyio
import attrs
from aiohttp import web

from .._limits.clock import Clock
from ._accounts import AccountBook
from ._rules import RateRules, Rejection, SimulatorLimits, retry_after_header
from ._sessions import SessionBook, SimSession, consent_given, consent_page, expired_page
from ._wire import (
    CannedResponse,
    Dropped,
    Faults,
    Misbehaviour,
    Network,
    drop,
    error_response,
    json_response,
    swallow_dropped,
)

__all__ = ["LoggedRequest", "Simulator", "Workspace"]

Kind = Literal["init", "status", "account", "consent", "other"]



@attrs.define
class Workspace:
    """A workspace of the simulator: its id, name, API key (never in the repr), scopes, and
    whether it is paid and revoked.
    """
    workspace_id: str
    name: str
    api_key: str = attrs.field(repr=False)
    scopes: frozenset[str]
    paid: bool = True
    revoked: bool = False


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
    #: When it reached the server's door, before the network's inbound delay (the server's
    #: clock): the client sent it no later. None for a request that skips the delays.
    received: float | None = None
    #: When its answer had crossed the network's outbound delay (or the connection was dropped,
    #: or the handler ended otherwise): the client, if still there, had it by then.
    answered: float | None = None

    @property
    def interval(self) -> tuple[float, float]:
        """``(received, answered)``, falling back to ``at`` for what was not recorded."""
        return (self.at if self.received is None else self.received,
                self.at if self.answered is None else self.answered)


def _monotonic_of(clock: Clock | Callable[[], float] | None) -> Callable[[], float]:
    """The monotonic-seconds reader of ``clock``: a :class:`~instantly_oauth_async.Clock` (the one
    ``OAuthManager(clock=...)`` takes, such as :class:`FakeClock`), or a plain callable."""
    if clock is None:
        return time.monotonic
    monotonic = getattr(clock, "monotonic", None)
    if callable(monotonic):
        return monotonic  # type: ignore[no-any-return]
    if callable(clock):
        return clock
    raise TypeError(
        f"clock must be a Clock (with a monotonic() method, such as FakeClock or SystemClock) "
        f"or a callable returning monotonic seconds, not {type(clock).__name__}")


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
        clock: Clock | Callable[[], float] | None = None,
        wall_skew: float = 0.0,
        faults: Faults | None = None,
        network: Network | None = None,
        trust_forwarded_for: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.limits = limits or SimulatorLimits()
        self._base_clock = _monotonic_of(clock)
        self._offset = 0.0
        #: seconds the server's wall clock runs ahead of the real one (negative: behind)
        self.wall_skew = wall_skew
        self.faults = faults or Faults()
        #: delays on the wire for every API request; replace it at any time
        self.network = network or Network()
        self.trust_forwarded_for = trust_forwarded_for
        self._host, self._port = host, port
        self._epoch = time.time() - self._base_clock()
        self._misbehaviour = Misbehaviour(lambda: self.faults, lambda: self.network)
        self.workspaces: dict[str, Workspace] = {}
        self.requests: list[LoggedRequest] = []
        self._rules = RateRules()
        self._accounts = AccountBook()
        self._book = SessionBook(self._accounts, self.clock, self._stamp)
        #: accepted inits per (workspace id, provider), in the server's time
        self.init_times = self._rules.init_times
        #: every live session by id (read-only for tests)
        self.sessions = self._book.sessions
        #: ``accounts[email.lower()] = (workspace id, the Account JSON)``
        self.accounts = self._accounts.records
        self._canned: dict[str, deque[CannedResponse]] = {}
        self._redirect_to: str | None = None
        self._waiters: set[anyio.Event] = set()
        # Requests between arrival and answer, by id(request): kind, path, received; and where
        # each one's log entry is, to fill in its ``answered``.
        self._in_flight: dict[int, tuple[str, str, float]] = {}
        self._log_index: dict[int, int] = {}
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
        """Stop serving; what was recorded (``requests``, sessions) stays readable."""
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
        """Revoke every API key of ``workspace``: its requests get 401 from now on."""
        workspace.revoked = True

    def outage(
        self, provider: str, *, seconds: float | None = None, count: int | None = None
    ) -> None:
        """Answer the provider's inits with 503: for ``seconds``, or for the next ``count``."""
        until = None if seconds is None else self.clock() + seconds
        self._rules.outage(provider, until=until, count=count)

    def end_outage(self, provider: str) -> None:
        """End the provider's outage (:meth:`outage`) now."""
        self._rules.end_outage(provider)

    def block_ip(self, provider: str, ip: str, seconds: float) -> None:
        """Block ``ip``'s inits for ``provider`` as if it had abused them."""
        self._rules.block_ip(provider, ip, self.clock() + seconds)

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
        return self._book.session_for(auth_url)

    def complete(self, session_id: str, email: str, name: str | None = None) -> SimSession:
        """The person allows access with mailbox ``email``; the server's rules decide."""
        return self._book.complete(session_id, email, name)

    def deny(self, session_id: str) -> SimSession:
        """The person denies access on the consent page; the session ends with ``access_denied``."""
        return self._book.deny(session_id)

    def fail(
        self, session_id: str, error: str = "server_error", description: str = ""
    ) -> SimSession:
        """The session fails with ``error`` (and ``description``), as a provider error would."""
        return self._book.fail(session_id, error, description)

    def expire(self, session_id: str) -> None:
        """Make a session expire now."""
        self._book.expire(session_id)

    def touch_account(self, email: str) -> None:
        """Someone edits the connected account's settings: ``timestamp_updated`` moves to now,
        nothing else does (KeyError when ``email`` is not connected)."""
        self._accounts.touch(email, self._stamp())

    def pending_sessions(self) -> list[SimSession]:
        """The sessions still waiting for their person, in every workspace."""
        return self._book.pending()

    def _stamp(self) -> str:
        """The server's wall clock as the API writes timestamps."""
        return self.now_wall().isoformat(timespec="milliseconds").replace("+00:00", "Z")

    # -- HTTP --------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[swallow_dropped])
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

    def _log(self, request: web.Request, kind: str, status: int, ws: Workspace | None,
             provider: str | None = None, *, outcome: str = "") -> None:
        arrival = self._in_flight.get(id(request))
        if arrival is not None:
            self._log_index[id(request)] = len(self.requests)  # ``answered`` comes later
        self.requests.append(
            LoggedRequest(
                at=self.clock(), method=request.method, path=request.raw_path, kind=kind,
                status=status, ip=self._ip(request),
                workspace_id=ws.workspace_id if ws else None, provider=provider,
                had_authorization="Authorization" in request.headers,
                user_agent=request.headers.get("User-Agent"), outcome=outcome,
                received=None if arrival is None else arrival[2],
            )
        )
        self._changed()

    def _changed(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    def in_flight(self, kind: str | None = None) -> list[tuple[str, float]]:
        """The API requests (of ``kind``) that reached the server and have no answer out yet:
        ``(path, received)`` each, oldest first. :meth:`wait_for` also wakes when one arrives."""
        return [(path, at) for k, path, at in self._in_flight.values()
                if kind is None or k == kind]

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
            return error_response(401, "Missing Authorization header")
        workspace = self.workspaces.get(header[len("Bearer "):].strip())
        if workspace is None or workspace.revoked:
            return error_response(401, "Invalid API key")
        if not _scope_ok(workspace.scopes, scope):
            return error_response(403, f"API key is missing the {scope} scope")
        return workspace

    def _rejected(self, rejection: Rejection) -> web.Response:
        return error_response(rejection.status, rejection.message, retry_after_header(rejection))

    def _finish(self, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["Date"] = format_datetime(self.now_wall(), usegmt=True)
        return response

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
        # The request's interval as its client sees it, from before the inbound delay to after
        # the outbound one; a handler that ends otherwise (dropped, cancelled) ends it too.
        key = id(request)
        self._in_flight[key] = (kind, request.raw_path, self.clock())
        self._changed()
        try:
            await self._misbehaviour.delay(kind)  # on its way in: the server sees it only now
            response = await self._serve(request, kind, scope, act, provider,
                                         paid_only=paid_only)
            await self._misbehaviour.delay(kind)  # on its way back
            return response
        finally:
            del self._in_flight[key]
            index = self._log_index.pop(key, None)
            if index is not None:
                self.requests[index] = attrs.evolve(self.requests[index], answered=self.clock())
            self._changed()

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
            response = error_response(402, "Workspace does not have an active paid plan")
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
        before = await self._misbehaviour.before(kind)
        if before == "reset":
            self._log(request, kind, 0, workspace, provider, outcome="reset")
            drop(request)
            raise Dropped
        if isinstance(before, web.Response):
            self._log(request, kind, before.status, workspace, provider, outcome="fault")
            return self._finish(before)
        limited = self._rules.standard(self.limits, workspace.workspace_id, self.clock())
        if limited is not None:
            self._log(request, kind, 429, workspace, provider, outcome="standard-limit")
            return self._finish(self._rejected(limited))
        response = act(workspace)
        fault = self._misbehaviour.after(kind) if response.status == 200 else None
        self._log(request, kind, response.status, workspace, provider, outcome=fault or "")
        return await self._misbehaviour.deliver(request, response, fault, self._finish)

    async def _init(self, request: web.Request) -> web.StreamResponse:
        provider = request.match_info["provider"]
        if provider not in ("google", "microsoft"):
            self._log(request, "other", 404, None)
            return self._finish(error_response(404, "Route not found"))
        ip = self._ip(request)
        return await self._handle(
            request, "init", "accounts:create", lambda ws: self._init_act(ws, provider, ip),
            provider,
        )

    def _init_act(self, workspace: Workspace, provider: str, ip: str) -> web.Response:
        now, lim = self.clock(), self.limits
        rejected = self._rules.init(lim, workspace.workspace_id, provider, ip, now)
        if rejected is not None:
            return self._rejected(rejected)
        expires_at = self.now_wall() + timedelta(seconds=lim.session_ttl)
        session = self._book.create(workspace.workspace_id, provider, now, lim.session_ttl,
                                    expires_at)
        return json_response(200, {
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
        status, payload = self._book.read(workspace.workspace_id, session_id, self.clock(),
                                          self.limits.purge_after)
        if status == 404:
            return error_response(404, "Session not found")
        return json_response(status, payload)

    async def _account(self, request: web.Request) -> web.StreamResponse:
        email = request.match_info["email"]
        return await self._handle(
            request, "account", "accounts:read", lambda ws: self._account_act(ws, email),
            paid_only=True,
        )

    def _account_act(self, workspace: Workspace, email: str) -> web.Response:
        found = self._accounts.lookup(workspace.workspace_id, email)
        if found is None:
            return error_response(404, "Resource not found")
        return json_response(200, found)

    # -- the consent page a person sees ------------------------------------------------------

    async def _consent_page(self, request: web.Request) -> web.StreamResponse:
        session = self._book.open_for_consent(request.match_info["token"])
        if session is None:
            self._log(request, "consent", 410, None)
            return expired_page()
        self._log(request, "consent", 200, None, session.provider)
        return consent_page(session)

    async def _consent_submit(self, request: web.Request) -> web.StreamResponse:
        session = self._book.open_for_consent(request.match_info["token"])
        if session is None:
            self._log(request, "consent", 410, None)
            return expired_page()
        form = await request.post()
        self._log(request, "consent", 200, None, session.provider)
        name = str(form.get("name", "")).strip() or None
        return consent_given(self._book, session, str(form.get("action", "")),
                             str(form.get("email", "")).strip(), name)
