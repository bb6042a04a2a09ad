"""The connect flow, apart from any web framework: :class:`ConnectFlow` composes the guard
(``_guard``: claims in the store), the signed links (``_links``), the attach cache
(``_handles``) and the outcome as server-sent events (``_stream``). ``web.aiohttp`` and
``web.asgi`` only turn requests into calls of :class:`ConnectFlow` and its answers into
responses."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from types import TracebackType
from typing import Any

import anyio

from .._manager.fleet import UnknownSessionError
from .._manager.manager import OAuthManager
from .._manager.pending import PendingConnection
from .._stores.claims import Claims
from .._wire.exceptions import ConfigurationError, InstantlyError
from .._wire.models import Provider
from . import _pages
from ._answers import Refusal, Started
from ._guard import Guard
from ._handles import Handles
from ._links import Links
from ._stream import payload, stream

__all__ = ["ConnectFlow", "Refusal", "Started", "UserOf"]

#: The app's own "who is signed in": the request (the framework's) to a user id, or None for
#: nobody; a plain function or a coroutine function.
UserOf = Callable[[Any], "str | Awaitable[str | None] | None"]


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
    Asking again for the same session gives back the same links (on this worker) while they
    have at least half their life left.
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
        self._ns = namespace
        self._origins = frozenset(o.rstrip("/") for o in trusted_origins)
        self._keepalive = float(keepalive)
        self._links = Links(secret, link_lifetime, wall_clock)
        self._handles = Handles(lambda: self.manager, max_watched)
        self._guard = Guard(lambda: self.manager, store, self._handles, provider=provider,
                            namespace=namespace, limit=max_pending, per_user=max_pending_per_user,
                            start_timeout=float(start_timeout), grace=float(expiry_grace))
        self._watchers = self._guard.watchers  # one a session started here, until decided
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
        return self._guard.claims

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

    def tag(self, user: str, session_id: str) -> str:
        """What a link to ``session_id`` carries: its end (Unix time) and its signature."""
        return self._links.tag(user, session_id)

    def verify(self, user: str, session_id: str, tag: str | None) -> None:
        """Refuse a link not made for ``user`` (404: nothing said of whose it is) or expired
        (410)."""
        self._links.verify(user, session_id, tag)

    # -- POST /connect -----------------------------------------------------------------------

    async def connect(self, user: str, prefix: str) -> Started:
        """The user's pending connection (see the class); ``prefix``: where the flow is
        mounted, for the links."""
        return self._links.started(user, prefix, await self._guard.connect(user))

    # -- the pages that name a session -------------------------------------------------------

    async def attach(self, session_id: str) -> PendingConnection:
        """One handle a session on this worker (any worker may attach again); decided ones
        make room when ``max_watched`` are held. Raises ``UnknownSessionError``."""
        return await self._handles.attach(session_id)

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
        return _pages.result_page(await payload(pending) if pending.done() else None)

    async def events(self, user: str, session_id: str, tag: str | None
                     ) -> AsyncIterator[bytes]:
        """Checked first (refusals raise here); then the stream: a reconnection delay, comments
        every ``keepalive`` seconds while pending, then one ``result`` event. It ends with no
        event when the app stops (the browser reconnects, to any worker)."""
        pending = await self.watched(user, session_id, tag)
        sid = pending.session.session_id  # delivered: the user's claim may leave now
        return stream(pending, closing=self.closing, keepalive=self._keepalive,
                      delivered=lambda: self._guard.release(user, sid))

    # -- life --------------------------------------------------------------------------------

    def end_streams(self) -> None:
        """Open streams end now, without a result: their browsers reconnect to another worker."""
        self.closing.set()

    async def aclose(self) -> None:
        """End the streams and stop the watchers. Sessions go on: the manager (closed by the
        app) hands them over, and their claims leave when they are decided."""
        self.end_streams()
        await self._guard.stop_watchers()

    async def __aenter__(self) -> ConnectFlow:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
