"""The connect flow, apart from any web framework: the guard (claims in the store), signed links,
the attach cache, and the outcome as server-sent events. ``web.aiohttp`` and ``web.asgi`` only
turn requests into calls of :class:`ConnectFlow` and its answers into responses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from datetime import datetime, timezone
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import attrs

from .._manager.fleet import UnknownSessionError
from .._manager.manager import OAuthManager
from .._manager.polling import PendingConnection
from .._stores.claims import Claims
from .._wire.exceptions import ClientStateError, ConfigurationError, InstantlyError
from .._wire.models import Provider
from . import _pages

__all__ = ["ConnectFlow", "Refusal", "Started", "UserOf"]

#: The app's own "who is signed in": the request (the framework's) to a user id, or None for
#: nobody; a plain function or a coroutine function.
UserOf = Callable[[Any], "str | Awaitable[str | None] | None"]

#: Seconds between two attempts to find a session another request is starting.
_STARTING_POLL = 0.1


class Refusal(InstantlyError):
    """What a route answers instead: ``status``, a ``text`` safe to show anyone (no session id,
    no secret), extra ``headers``, and ``page`` when the answer is a page of HTML."""

    def __init__(self, status: int, text: str, *, headers: dict[str, str] | None = None,
                 page: bool = False) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}
        self.page = page


@attrs.frozen
class Started:
    """A user's pending connection, as ``POST {prefix}/connect`` answers it."""

    session_id: str
    auth_url: str
    events_url: str
    result_url: str

    def json(self) -> dict[str, str]:
        """The fields as a JSON-ready dict (the body of ``POST /connect``'s answer)."""
        return attrs.asdict(self)




class ConnectFlow:
    """The "Connect mailbox" flow an app mounts (``web.aiohttp.connect_routes``,
    ``web.asgi.connect_routes``), around a manager the app opens and closes.

    - ``POST {prefix}/connect``: the signed-in user's pending connection, started when they
      have none: ``{session_id, auth_url, events_url, result_url}``. A user holds at most
      ``max_pending_per_user`` (asking again gives back the one they have, from any worker),
      the app at most ``max_pending`` in all (503 past it). The guard is the store's
      (``store.claims``): it holds across every worker and host sharing the store, and an
      entry leaves when its session is decided or fails to start, or, when the worker that
      held it died, at its deadline (the session's expiry plus ``expiry_grace``).
    - ``GET {prefix}/events/{id}?tag=...``: server-sent events; one ``result`` event when the
      session is decided, from any worker (``manager.attach()``), also for a subscriber that
      comes (or comes back) after the decision: the outcome is the registry's.
    - ``GET {prefix}/result/{id}?tag=...``: a plain page showing the result, live.

    The links are signed with ``secret`` (HMAC-SHA256), bound to the user they were made for
    and valid ``link_lifetime`` seconds (wall clock, ``wall_clock``: every worker reads it
    alike): another user's link, a tampered one or a made-up one gets 404, an expired one 410.
    ``POST`` resists cross-site requests by its ``Origin`` (the page's own, or one of
    ``trusted_origins``; without an ``Origin``, ``Sec-Fetch-Site: same-origin``): 403 otherwise.

    ``manager`` may be a callable giving the manager, for apps that open it later (a
    lifespan); ``store`` is the one the manager uses unless given.
    """

    def __init__(
        self,
        manager: OAuthManager | Callable[[], OAuthManager],
        *,
        secret: str | bytes,
        store: Any | None = None,
        provider: Provider | str = Provider.GOOGLE,
        max_pending: int = 100,
        max_pending_per_user: int = 1,
        namespace: str = "connect",
        link_lifetime: float = 3600.0,
        start_timeout: float = 30.0,
        expiry_grace: float = 60.0,
        trusted_origins: Collection[str] = (),
        keepalive: float = 15.0,
        max_watched: int = 1000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ConfigurationError("the flow's secret must not be empty")
        for name, value in (("max_pending", max_pending),
                            ("max_pending_per_user", max_pending_per_user),
                            ("max_watched", max_watched)):
            if value < 1:
                raise ConfigurationError(f"{name} must be a whole number of at least 1")
        for name, seconds in (("link_lifetime", link_lifetime), ("start_timeout", start_timeout),
                              ("expiry_grace", expiry_grace), ("keepalive", keepalive)):
            if not 0 < seconds < math.inf:
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if not namespace or "{" in namespace or "}" in namespace:
            raise ConfigurationError("namespace is a non-empty string without braces")
        self._manager = manager
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._key = hashlib.sha256(b"instantly-oauth-async connect links\0" + raw).digest()
        self._store = store
        self._provider = provider
        self._limit = max_pending
        self._per_user = max_pending_per_user
        self._ns = namespace
        self._link_lifetime = float(link_lifetime)
        self._start_timeout = float(start_timeout)
        self._grace = float(expiry_grace)
        self._origins = frozenset(o.rstrip("/") for o in trusted_origins)
        self._keepalive = float(keepalive)
        self._max_watched = max_watched
        self._wall = wall_clock
        self._handles: dict[str, PendingConnection] = {}
        self._starting: dict[str, asyncio.Task[PendingConnection]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self.closing = anyio.Event()  #: set as the app stops: open streams end, no result

    def __repr__(self) -> str:
        return f"<ConnectFlow {self._ns!r} watched={len(self._handles)}>"

    @property
    def manager(self) -> OAuthManager:
        """The manager the flow starts and watches sessions with."""
        return self._manager if isinstance(self._manager, OAuthManager) else self._manager()

    @property
    def claims(self) -> Claims:
        """The connect guard of the store (``store.claims``).

        Raises:
            ConfigurationError: the store keeps no claims.
        """
        store = self._store if self._store is not None else self.manager.store
        claims = getattr(store, "claims", None)
        if not isinstance(claims, Claims):
            raise ConfigurationError(f"{type(store).__name__} keeps no claims: use MemoryStore, "
                                     "SQLiteStore or RedisStore")
        return claims

    # -- the signed-in user ------------------------------------------------------------------

    @staticmethod
    async def user(user_of: UserOf, request: Any) -> str:
        """The signed-in user, by the app's own ``user_of``; a 401 refusal for nobody."""
        user = user_of(request)
        if not isinstance(user, str) and user is not None:
            user = await user
        if not user:
            raise Refusal(401, "sign in first")
        return user

    def check_origin(self, own_origin: str, origin: str | None, fetch_site: str | None) -> None:
        """Refuse (403) a state-changing request another site's page may have sent."""
        if origin is None or origin == "null":
            if fetch_site == "same-origin" and origin is None:
                return
            raise Refusal(403, "cross-site request refused: no Origin")
        if origin.rstrip("/") != own_origin and origin.rstrip("/") not in self._origins:
            raise Refusal(403, "cross-site request refused: Origin not trusted")

    # -- links -------------------------------------------------------------------------------

    def _signature(self, user: str, session_id: str, expires: int) -> str:
        text = f"{len(user)}:{user}{len(session_id)}:{session_id}{expires}"
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def tag(self, user: str, session_id: str) -> str:
        """What a link to ``session_id`` carries: its end (Unix time) and its signature."""
        expires = int(self._wall() + self._link_lifetime)
        return f"{expires}.{self._signature(user, session_id, expires)}"

    def verify(self, user: str, session_id: str, tag: str | None) -> None:
        """Refuse a link not made for ``user`` (404: nothing said of whose it is) or expired
        (410)."""
        expires, _, signature = (tag or "").partition(".")
        if not expires.isdigit() or len(expires) > 12 or not hmac.compare_digest(
                signature.encode(), self._signature(user, session_id, int(expires)).encode()):
            raise Refusal(404, _pages.NOT_FOUND_PAGE, page=True)
        if int(expires) <= self._wall():
            raise Refusal(410, _pages.EXPIRED_PAGE, page=True)

    def _started(self, user: str, prefix: str, pending: PendingConnection) -> Started:
        sid = pending.session.session_id
        query = f"{_quote(sid)}?tag={self.tag(user, sid)}"
        return Started(sid, pending.session.auth_url, f"{prefix}/events/{query}",
                       f"{prefix}/result/{query}")

    # -- POST /connect -----------------------------------------------------------------------

    async def connect(self, user: str, prefix: str) -> Started:
        """The user's pending connection (see the class); ``prefix``: where the flow is
        mounted, for the links."""
        claims = self.claims
        deadline = time.monotonic() + self._start_timeout
        for _ in range(int(self._start_timeout / _STARTING_POLL) + 2):  # bounded, as below
            claim = await self._guarded(claims.claim(
                self._ns, user, hold=self._start_timeout + 5, per_user=self._per_user,
                limit=self._limit))
            if claim.state == "full":
                raise Refusal(503, "too many connections pending; try again later",
                              headers={"Retry-After": "60"})
            if claim.state == "taken":
                task = asyncio.get_running_loop().create_task(self._start(user, claim.ticket))
                self._starting[user] = task
                task.add_done_callback(lambda t: self._forget_start(user, t))
                return self._started(user, prefix, await self._shielded(task))
            if claim.session_id is None:  # starting: here (another tab), or on another worker
                local = self._starting.get(user)
                if local is not None:
                    return self._started(user, prefix, await self._shielded(local))
                if time.monotonic() > deadline:
                    raise Refusal(503, "a connection is still starting; try again later",
                                  headers={"Retry-After": "5"})
                await anyio.sleep(_STARTING_POLL)
                continue
            try:
                pending = await self.attach(claim.session_id)
            except UnknownSessionError:
                pending = None
            if pending is not None and not pending.done():
                return self._started(user, prefix, pending)
            # decided (or forgotten) while its claim was left behind: it leaves now
            await self._guarded(claims.drop(self._ns, user, session_id=claim.session_id))
        raise Refusal(503, "a connection is still starting; try again later",
                      headers={"Retry-After": "5"})

    def _forget_start(self, user: str, task: asyncio.Task[PendingConnection]) -> None:
        if self._starting.get(user) is task:
            del self._starting[user]
        if not task.cancelled():
            task.exception()  # retrieved: its awaiters got it, or nobody was left to

    @staticmethod
    async def _shielded(task: asyncio.Task[PendingConnection]) -> PendingConnection:
        try:
            return await asyncio.shield(task)  # a request that goes away leaves the start alone
        except InstantlyError as exc:
            if isinstance(exc, Refusal):
                raise
            raise Refusal(503, type(exc).__name__) from None

    async def _start(self, user: str, ticket: str) -> PendingConnection:
        claims, ns = self.claims, self._ns
        try:
            pending = await self.manager.start(self._provider, timeout=self._start_timeout)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(InstantlyError):
                await claims.drop(ns, user, ticket=ticket)  # nothing started: try again
            raise
        sid = pending.session.session_id
        left = (pending.session.expires_at - datetime.now(timezone.utc)).total_seconds()
        await self._guarded(claims.bind(ns, user, ticket, sid,
                                        hold=max(1.0, left) + self._grace))
        self._handles.setdefault(sid, pending)
        watcher = asyncio.get_running_loop().create_task(self._drop_when_decided(user, pending))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return pending

    async def _drop_when_decided(self, user: str, pending: PendingConnection) -> None:
        try:
            await pending
        except ClientStateError:
            return  # the manager closed, the session goes on elsewhere: its claim stays
        except InstantlyError:
            pass  # over all the same (its outcome was lost, or it was cancelled)
        with contextlib.suppress(InstantlyError):
            await self.claims.drop(self._ns, user, session_id=pending.session.session_id)

    @staticmethod
    async def _guarded(step: Awaitable[Any]) -> Any:
        try:
            return await step
        except ConfigurationError:
            raise
        except InstantlyError as exc:  # the store is away: ask again later
            raise Refusal(503, type(exc).__name__, headers={"Retry-After": "5"}) from None

    # -- the pages that name a session -------------------------------------------------------

    async def attach(self, session_id: str) -> PendingConnection:
        """One handle a session on this worker (any worker may attach again); decided ones
        make room when ``max_watched`` are held. Raises ``UnknownSessionError``."""
        pending = self._handles.get(session_id)
        if pending is None:
            if len(self._handles) >= self._max_watched:
                self._handles = {k: p for k, p in self._handles.items() if not p.done()}
                if len(self._handles) >= self._max_watched:
                    raise Refusal(503, "too many sessions watched; try again later",
                                  headers={"Retry-After": "10"})
            pending = await self.manager.attach(session_id)
            pending = self._handles.setdefault(session_id, pending)
        return pending

    async def watched(self, user: str, session_id: str, tag: str | None) -> PendingConnection:
        """The session a link names, when it was made for ``user``; from any worker."""
        self.verify(user, session_id, tag)
        try:
            return await self.attach(session_id)
        except UnknownSessionError:
            raise Refusal(404, _pages.NOT_FOUND_PAGE, page=True) from None
        except Refusal:
            raise
        except InstantlyError as exc:  # the store is away: the browser will ask again
            raise Refusal(503, type(exc).__name__, headers={"Retry-After": "5"}) from None

    async def result_page(self, user: str, session_id: str, tag: str | None) -> str:
        """The HTML result page of ``user``'s session ``session_id``, linked with ``tag``.

        Raises:
            Refusal: the link is another user's, tampered with, made up or expired.
        """
        pending = await self.watched(user, session_id, tag)
        payload = await self._payload(pending) if pending.done() else None
        return _pages.result_page(payload)

    async def events(self, user: str, session_id: str, tag: str | None
                     ) -> AsyncIterator[bytes]:
        """Checked first (refusals raise here); then the stream: a reconnection delay, comments
        every ``keepalive`` seconds while pending, then one ``result`` event. It ends with no
        event when the app stops (the browser reconnects, to any worker)."""
        pending = await self.watched(user, session_id, tag)
        return self._stream(user, pending)

    async def _stream(self, user: str, pending: PendingConnection) -> AsyncIterator[bytes]:
        yield _pages.RECONNECT  # a stream cut short is opened again, on any worker
        payload = None
        while not self.closing.is_set():  # one pass a keepalive; ends with the session
            with anyio.move_on_after(self._keepalive):
                async with anyio.create_task_group() as group:
                    async def stop_on_close() -> None:
                        await self.closing.wait()
                        group.cancel_scope.cancel()

                    group.start_soon(stop_on_close)
                    payload = await self._payload(pending)
                    group.cancel_scope.cancel()
            if payload is not None or pending.done():
                break
            if not self.closing.is_set():
                yield _pages.KEEPALIVE
        if payload is None:
            return
        with contextlib.suppress(InstantlyError):  # delivered: the user's claim may leave now
            await self.claims.drop(self._ns, user, session_id=pending.session.session_id)
        yield _pages.result_event(payload)

    @staticmethod
    async def _payload(pending: PendingConnection) -> dict[str, Any] | None:
        """The outcome as the pages show it; None when this worker's manager is closing."""
        try:
            result = await pending
        except ClientStateError:
            return None
        except InstantlyError as exc:
            return {"ok": False, "email": None, "reason": type(exc).__name__}
        return {"ok": result.ok, "email": result.email,
                "reason": result.error_description or result.status.value}

    # -- life --------------------------------------------------------------------------------

    def end_streams(self) -> None:
        """Open streams end now, without a result: their browsers reconnect to another worker."""
        self.closing.set()

    async def aclose(self) -> None:
        """End the streams and stop the watchers. Sessions go on: the manager (closed by the
        app) hands them over, and their claims leave when they are decided."""
        self.end_streams()
        tasks = [*self._watchers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> ConnectFlow:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


def _quote(text: str) -> str:
    return quote(text, safe="")
