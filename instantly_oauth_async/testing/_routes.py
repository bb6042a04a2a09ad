"""How the simulator answers HTTP: which URL goes to which handler, the gates every API request
passes in order (a redirect, the API key and its scope, the paid plan, a canned answer, a fault
before acting, the standard limit), what each endpoint answers, the network's delays around it,
and the consent page's two routes.

The simulator's state (workspaces, sessions, accounts, limits, its clocks) and its request log
stay with :class:`~instantly_oauth_async.testing.Simulator`; this module reads them through the
narrow views below (:class:`Host`, :class:`Log`, :class:`Caller`), so it never imports it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Literal, Protocol

from aiohttp import web

from ._accounts import AccountBook
from ._rules import RateRules, Rejection, SimulatorLimits, retry_after_header
from ._sessions import SessionBook, consent_given, consent_page, expired_page
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

__all__ = ["Caller", "Host", "Kind", "Log", "Routes"]

Kind = Literal["init", "status", "account", "consent", "other"]


class Caller(Protocol):
    """What a request's API key authenticates as: a workspace."""

    @property
    def workspace_id(self) -> str: ...
    @property
    def scopes(self) -> frozenset[str]: ...
    @property
    def paid(self) -> bool: ...
    @property
    def revoked(self) -> bool: ...


class Host(Protocol):
    """What the routes read of the simulator they serve, anew at every request."""

    @property
    def url(self) -> str: ...
    @property
    def limits(self) -> SimulatorLimits: ...
    @property
    def faults(self) -> Faults: ...
    @property
    def network(self) -> Network: ...
    @property
    def trust_forwarded_for(self) -> bool: ...
    @property
    def workspaces(self) -> Mapping[str, Caller]: ...
    def clock(self) -> float: ...
    def now_wall(self) -> datetime: ...


class Log(Protocol):
    """Where the routes report each request: its arrival, its log entry, its answer's leaving."""

    def arrived(self, request: web.Request, kind: str) -> None: ...
    def record(self, request: web.Request, kind: str, status: int, *, ip: str,
               workspace_id: str | None, provider: str | None, outcome: str) -> None: ...
    def answered(self, request: web.Request) -> None: ...


def _scope_ok(scopes: Iterable[str], needed: str) -> bool:
    resource, action = needed.split(":")
    have = set(scopes)
    return bool(
        have & {needed, f"{resource}:all", f"all:{action}", "all:all"}
    )


class Routes:
    """The simulator's ``aiohttp.web`` application and its handlers. What tests script on the
    wire goes here too: the canned responses (:meth:`enqueue`) and the redirect of every API
    request (``redirect_to``)."""

    def __init__(self, host: Host, log: Log, *, rules: RateRules, book: SessionBook,
                 accounts: AccountBook) -> None:
        self._host = host
        self._log = log
        self._rules = rules
        self._book = book
        self._accounts = accounts
        self._misbehaviour = Misbehaviour(lambda: host.faults, lambda: host.network)
        self._canned: dict[str, deque[CannedResponse]] = {}
        #: answer every API request with a 307 to this + its path (None: serve it)
        self.redirect_to: str | None = None
        self.app = self._make_app()

    def enqueue(self, kind: Kind, response: CannedResponse) -> None:
        self._canned.setdefault(kind, deque()).append(response)

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[swallow_dropped])
        app.router.add_post("/api/v2/oauth/{provider}/init", self._init)
        app.router.add_get("/api/v2/oauth/session/status/{session_id}", self._status)
        app.router.add_get("/api/v2/accounts/{email}", self._account)
        app.router.add_get("/sim/consent/{token}", self._consent_page)
        app.router.add_post("/sim/consent/{token}", self._consent_submit)
        return app

    def _ip(self, request: web.Request) -> str:
        trusted = self._host.trust_forwarded_for
        forwarded = request.headers.get("X-Forwarded-For") if trusted else None
        if forwarded:
            return forwarded.split(",")[0].strip()
        return request.remote or "unknown"

    def _record(self, request: web.Request, kind: str, status: int, ws: Caller | None,
                provider: str | None = None, *, outcome: str = "") -> None:
        self._log.record(request, kind, status, ip=self._ip(request),
                         workspace_id=ws.workspace_id if ws else None, provider=provider,
                         outcome=outcome)

    def _authenticate(self, request: web.Request, scope: str) -> Caller | web.Response:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return error_response(401, "Missing Authorization header")
        workspace = self._host.workspaces.get(header[len("Bearer "):].strip())
        if workspace is None or workspace.revoked:
            return error_response(401, "Invalid API key")
        if not _scope_ok(workspace.scopes, scope):
            return error_response(403, f"API key is missing the {scope} scope")
        return workspace

    def _rejected(self, rejection: Rejection) -> web.Response:
        return error_response(rejection.status, rejection.message, retry_after_header(rejection))

    def _finish(self, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["Date"] = format_datetime(self._host.now_wall(), usegmt=True)
        return response

    async def _handle(
        self,
        request: web.Request,
        kind: Kind,
        scope: str,
        act: Callable[[Caller], web.Response],
        provider: str | None = None,
        *,
        paid_only: bool = False,
    ) -> web.StreamResponse:
        # The request's interval as its client sees it, from before the inbound delay to after
        # the outbound one; a handler that ends otherwise (dropped, cancelled) ends it too.
        self._log.arrived(request, kind)
        try:
            await self._misbehaviour.delay(kind)  # on its way in: the server sees it only now
            response = await self._serve(request, kind, scope, act, provider,
                                         paid_only=paid_only)
            await self._misbehaviour.delay(kind)  # on its way back
            return response
        finally:
            self._log.answered(request)

    async def _serve(
        self,
        request: web.Request,
        kind: Kind,
        scope: str,
        act: Callable[[Caller], web.Response],
        provider: str | None,
        *,
        paid_only: bool,
    ) -> web.StreamResponse:
        if self.redirect_to is not None:
            self._record(request, kind, 307, None, provider, outcome="redirect")
            raise web.HTTPTemporaryRedirect(self.redirect_to + request.raw_path)
        auth = self._authenticate(request, scope)
        if isinstance(auth, web.Response):
            self._record(request, kind, auth.status, None, provider)
            return self._finish(auth)
        workspace = auth
        if paid_only and not workspace.paid:
            response = error_response(402, "Workspace does not have an active paid plan")
            self._record(request, kind, 402, workspace, provider)
            return self._finish(response)
        canned = self._canned.get(kind)
        if canned:
            spec = canned.popleft()
            body = spec.body.encode() if isinstance(spec.body, str) else spec.body
            response = web.Response(status=spec.status, body=body, content_type=spec.content_type)
            for name, value in spec.headers:
                response.headers.add(name, value)
            self._record(request, kind, spec.status, workspace, provider, outcome="canned")
            return self._finish(response)
        before = await self._misbehaviour.before(kind)
        if before == "reset":
            self._record(request, kind, 0, workspace, provider, outcome="reset")
            drop(request)
            raise Dropped
        if isinstance(before, web.Response):
            self._record(request, kind, before.status, workspace, provider, outcome="fault")
            return self._finish(before)
        limited = self._rules.standard(self._host.limits, workspace.workspace_id,
                                       self._host.clock())
        if limited is not None:
            self._record(request, kind, 429, workspace, provider, outcome="standard-limit")
            return self._finish(self._rejected(limited))
        response = act(workspace)
        fault = self._misbehaviour.after(kind) if response.status == 200 else None
        self._record(request, kind, response.status, workspace, provider, outcome=fault or "")
        return await self._misbehaviour.deliver(request, response, fault, self._finish)

    # -- the API's endpoints -----------------------------------------------------------------

    async def _init(self, request: web.Request) -> web.StreamResponse:
        provider = request.match_info["provider"]
        if provider not in ("google", "microsoft"):
            self._record(request, "other", 404, None)
            return self._finish(error_response(404, "Route not found"))
        ip = self._ip(request)
        return await self._handle(
            request, "init", "accounts:create", lambda ws: self._init_act(ws, provider, ip),
            provider,
        )

    def _init_act(self, workspace: Caller, provider: str, ip: str) -> web.Response:
        now, lim = self._host.clock(), self._host.limits
        rejected = self._rules.init(lim, workspace.workspace_id, provider, ip, now)
        if rejected is not None:
            return self._rejected(rejected)
        expires_at = self._host.now_wall() + timedelta(seconds=lim.session_ttl)
        session = self._book.create(workspace.workspace_id, provider, now, lim.session_ttl,
                                    expires_at)
        return json_response(200, {
            "session_id": session.session_id,
            "auth_url": f"{self._host.url}/sim/consent/{session.consent_token}",
            "expires_at": session.expires_at.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
        })

    async def _status(self, request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["session_id"]
        session = self._book.sessions.get(session_id)
        provider = session.provider if session else None
        return await self._handle(
            request, "status", "accounts:read", lambda ws: self._status_act(ws, session_id),
            provider,
        )

    def _status_act(self, workspace: Caller, session_id: str) -> web.Response:
        status, payload = self._book.read(workspace.workspace_id, session_id, self._host.clock(),
                                          self._host.limits.purge_after)
        if status == 404:
            return error_response(404, "Session not found")
        return json_response(status, payload)

    async def _account(self, request: web.Request) -> web.StreamResponse:
        email = request.match_info["email"]
        return await self._handle(
            request, "account", "accounts:read", lambda ws: self._account_act(ws, email),
            paid_only=True,
        )

    def _account_act(self, workspace: Caller, email: str) -> web.Response:
        found = self._accounts.lookup(workspace.workspace_id, email)
        if found is None:
            return error_response(404, "Resource not found")
        return json_response(200, found)

    # -- the consent page a person sees ------------------------------------------------------

    async def _consent_page(self, request: web.Request) -> web.StreamResponse:
        session = self._book.open_for_consent(request.match_info["token"])
        if session is None:
            self._record(request, "consent", 410, None)
            return expired_page()
        self._record(request, "consent", 200, None, session.provider)
        return consent_page(session)

    async def _consent_submit(self, request: web.Request) -> web.StreamResponse:
        session = self._book.open_for_consent(request.match_info["token"])
        if session is None:
            self._record(request, "consent", 410, None)
            return expired_page()
        form = await request.post()
        self._record(request, "consent", 200, None, session.provider)
        name = str(form.get("name", "")).strip() or None
        return consent_given(self._book, session, str(form.get("action", "")),
                             str(form.get("email", "")).strip(), name)
