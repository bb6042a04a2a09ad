"""The connect flow for ASGI frameworks: Starlette, and FastAPI on top of it (extra ``asgi``,
Starlette only)::

    from instantly_oauth_async.web import ConnectFlow
    from instantly_oauth_async.web.asgi import connect_routes

    app = FastAPI(lifespan=lifespan)              # the lifespan opens the manager and the flow
    app.router.routes.extend(connect_routes(lambda: app.state.flow, user_of=signed_in_user))
    # or: app.mount("/mailbox", Router(connect_routes(...))); Starlette(routes=[...]) alike

``user_of(request)`` is the app's own sign-in (a Starlette ``Request``): a user id, or None
(then 401). ``flow`` is the :class:`~instantly_oauth_async.web.ConnectFlow`, or a callable
giving it (an app that makes it in its lifespan). Routes: ``POST /connect``,
``GET /events/{session_id}``, ``GET /result/{session_id}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

try:
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import BaseRoute, Route
except ModuleNotFoundError as exc:  # the extra is not installed
    if exc.name != "starlette" and not (exc.name or "").startswith("starlette."):
        raise
    raise ModuleNotFoundError(
        "instantly_oauth_async.web.asgi needs Starlette, which the 'asgi' extra installs: "
        "pip install 'instantly-oauth-async[asgi]'", name="starlette") from exc

from ._flow import ConnectFlow, Refusal, UserOf

__all__ = ["connect_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]


def _refusals(endpoint: Endpoint) -> Endpoint:
    async def handle(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Refusal as refusal:
            kind = HTMLResponse if refusal.page else Response
            return kind(refusal.text, status_code=refusal.status, headers=refusal.headers)
    return handle


def _prefix(request: Request, route: str) -> str:
    path = request.url.path
    return path[: len(path) - len(route)] if path.endswith(route) else ""


def connect_routes(flow: ConnectFlow | Callable[[], ConnectFlow], *, user_of: UserOf
                   ) -> list[BaseRoute]:
    """The flow's three routes, for a Starlette or FastAPI app or router. The app's lifespan
    closes the flow (``await flow.aclose()``: its streams end) before its manager."""

    def the_flow() -> ConnectFlow:
        return flow if isinstance(flow, ConnectFlow) else flow()

    @_refusals
    async def connect(request: Request) -> Response:
        current = the_flow()
        current.check_origin(f"{request.url.scheme}://{request.url.netloc}",
                             request.headers.get("origin"),
                             request.headers.get("sec-fetch-site"))
        user = await current.user(user_of, request)
        started = await current.connect(user, _prefix(request, "/connect"))
        return JSONResponse(started.json(), headers={"Cache-Control": "no-store"})

    @_refusals
    async def result(request: Request) -> Response:
        current = the_flow()
        user = await current.user(user_of, request)
        page = await current.result_page(user, request.path_params["session_id"],
                                         request.query_params.get("tag"))
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @_refusals
    async def events(request: Request) -> Response:
        current = the_flow()
        user = await current.user(user_of, request)
        stream = await current.events(user, request.path_params["session_id"],
                                      request.query_params.get("tag"))
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    return [Route("/connect", connect, methods=["POST"]),
            Route("/events/{session_id}", events), Route("/result/{session_id}", result)]
