"""A faithful stand-in for the Instantly OAuth session API: a real ``aiohttp.web`` server.

This module is the simulator's state and what tests do with it: workspaces and their keys, the
server's clocks, the scripted outages and misbehaviour, what a person does on the consent page,
and the request log. The rest lives beside it, one concern a module: ``_routes`` (how each HTTP
request is answered), ``_rules`` (limits, blocks, outages), ``_sessions`` (sessions and the
consent page), ``_accounts`` (connected accounts), ``_wire`` (fault knobs, the network's delays).
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
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from types import TracebackType

import anyio
import attrs
from aiohttp import web

from .._limits.clock import Clock
from ._accounts import AccountBook
from ._routes import Kind, Routes
from ._rules import RateRules, SimulatorLimits
from ._sessions import SessionBook, SimSession
from ._wire import CannedResponse, Faults, Network

__all__ = ["LoggedRequest", "Simulator", "Workspace"]


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


class _RequestLog:
    """What arrived and how it went: the entries of ``Simulator.requests``, the requests between
    arrival and answer, and the waiters of ``Simulator.wait_for``, woken by every change."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.entries: list[LoggedRequest] = []
        # Requests between arrival and answer, by id(request): kind, path, received; and where
        # each one's log entry is, to fill in its ``answered``.
        self._in_flight: dict[int, tuple[str, str, float]] = {}
        self._index: dict[int, int] = {}
        self._waiters: set[anyio.Event] = set()

    def arrived(self, request: web.Request, kind: str) -> None:
        """``request`` reached the server's door (before the network's inbound delay)."""
        self._in_flight[id(request)] = (kind, request.raw_path, self._clock())
        self._changed()

    def record(self, request: web.Request, kind: str, status: int, *, ip: str,
               workspace_id: str | None, provider: str | None, outcome: str) -> None:
        arrival = self._in_flight.get(id(request))
        if arrival is not None:
            self._index[id(request)] = len(self.entries)  # ``answered`` comes later
        self.entries.append(
            LoggedRequest(
                at=self._clock(), method=request.method, path=request.raw_path, kind=kind,
                status=status, ip=ip, workspace_id=workspace_id, provider=provider,
                had_authorization="Authorization" in request.headers,
                user_agent=request.headers.get("User-Agent"), outcome=outcome,
                received=None if arrival is None else arrival[2],
            )
        )
        self._changed()

    def answered(self, request: web.Request) -> None:
        """``request``'s handler ended: its answer crossed the outbound delay, or it never will."""
        key = id(request)
        del self._in_flight[key]
        index = self._index.pop(key, None)
        if index is not None:
            self.entries[index] = attrs.evolve(self.entries[index], answered=self._clock())
        self._changed()

    def in_flight(self, kind: str | None) -> list[tuple[str, float]]:
        return [(path, at) for k, path, at in self._in_flight.values()
                if kind is None or k == kind]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            event = anyio.Event()
            self._waiters.add(event)
            try:
                await event.wait()
            finally:
                self._waiters.discard(event)

    def _changed(self) -> None:
        for waiter in self._waiters:
            waiter.set()


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
        self.workspaces: dict[str, Workspace] = {}
        self._log = _RequestLog(self.clock)
        self.requests: list[LoggedRequest] = self._log.entries
        self._rules = RateRules()
        self._accounts = AccountBook()
        self._book = SessionBook(self._accounts, self.clock, self._stamp)
        #: accepted inits per (workspace id, provider), in the server's time
        self.init_times = self._rules.init_times
        #: every live session by id (read-only for tests)
        self.sessions = self._book.sessions
        #: ``accounts[email.lower()] = (workspace id, the Account JSON)``
        self.accounts = self._accounts.records
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._routes = Routes(self, self._log, rules=self._rules, book=self._book,
                              accounts=self._accounts)
        self.app = self._routes.app

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
        self._routes.enqueue(kind, response)

    def redirect_all(self, target: str | None) -> None:
        """Answer every API request with a 307 to ``target`` + path (None: stop)."""
        self._routes.redirect_to = target

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

    # -- what the server saw ------------------------------------------------------------------

    def in_flight(self, kind: str | None = None) -> list[tuple[str, float]]:
        """The API requests (of ``kind``) that reached the server and have no answer out yet:
        ``(path, received)`` each, oldest first. :meth:`wait_for` also wakes when one arrives."""
        return self._log.in_flight(kind)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checking it after every request the server logs.

        Bound it with ``anyio.fail_after``.
        """
        await self._log.wait_for(predicate)
