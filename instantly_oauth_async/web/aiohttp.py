"""The connect flow for aiohttp (no extra)::

    from instantly_oauth_async.web import ConnectFlow
    from instantly_oauth_async.web.aiohttp import connect_routes

    flow = ConnectFlow(manager, secret=LINK_SECRET, max_pending=100)
    install(app, flow, user_of=my_signed_in_user)                          # at the root, or
    app.add_subapp("/mailbox", connect_app(flow, user_of=my_signed_in_user))

``user_of(request)`` is the app's own sign-in: a user id, or None (then 401). Routes:
``POST /connect``, ``GET /events/{session_id}``, ``GET /result/{session_id}`` (see
:class:`~instantly_oauth_async.web.ConnectFlow`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ._flow import ConnectFlow, Refusal, UserOf

__all__ = ["connect_app", "connect_routes", "install"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refusals(handler: Handler) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refusal as refusal:
            return web.Response(status=refusal.status, text=refusal.text,
                                headers=refusal.headers,
                                content_type="text/html" if refusal.page else "text/plain")
    return handle


def _prefix(request: web.Request, route: str) -> str:
    """Where the flow is mounted: the request's path before its route's own part."""
    path = request.path
    return path[: len(path) - len(route)] if path.endswith(route) else ""


def connect_routes(flow: ConnectFlow, *, user_of: UserOf) -> list[web.RouteDef]:
    """The flow's three routes, for ``app.add_routes``. The app ends the streams as it stops
    (``flow.end_streams()`` in ``on_shutdown``) and closes the flow (``flow.aclose()``) before
    its manager."""

    @_refusals
    async def connect(request: web.Request) -> web.StreamResponse:
        flow.check_origin(f"{request.scheme}://{request.host}", request.headers.get("Origin"),
                          request.headers.get("Sec-Fetch-Site"))
        user = await flow.user(user_of, request)
        started = await flow.connect(user, _prefix(request, "/connect"))
        return web.json_response(started.json(), headers={"Cache-Control": "no-store"})

    @_refusals
    async def result(request: web.Request) -> web.StreamResponse:
        user = await flow.user(user_of, request)
        page = await flow.result_page(user, request.match_info["session_id"],
                                      request.query.get("tag"))
        return web.Response(text=page, content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    @_refusals
    async def events(request: web.Request) -> web.StreamResponse:
        user = await flow.user(user_of, request)
        stream = await flow.events(user, request.match_info["session_id"],
                                   request.query.get("tag"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        async for chunk in stream:  # a closed connection raises at the next write: ends
            await response.write(chunk)
        return response

    return [web.post("/connect", connect), web.get("/events/{session_id}", events),
            web.get("/result/{session_id}", result)]


def install(app: web.Application, flow: ConnectFlow, *, user_of: UserOf) -> web.Application:
    """The flow's routes on ``app`` (at its root), its streams ended as ``app`` shuts down and
    the flow closed at its cleanup (before the manager, when the app opened that first)."""
    app.add_routes(connect_routes(flow, user_of=user_of))

    async def end_streams(app: web.Application) -> None:  # first: streams end, no result
        flow.end_streams()

    async def close(app: web.Application) -> None:
        await flow.aclose()

    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(close)
    return app


def connect_app(flow: ConnectFlow, *, user_of: UserOf) -> web.Application:
    """The flow as a sub-application (``app.add_subapp("/mailbox", ...)``), installed as by
    :func:`install`."""
    return install(web.Application(), flow, user_of=user_of)
