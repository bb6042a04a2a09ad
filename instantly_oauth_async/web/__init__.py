"""A "Connect mailbox" flow to mount in a web app: ``web.aiohttp`` for aiohttp (no extra),
``web.asgi`` for Starlette and FastAPI (extra ``asgi``). Both serve :class:`ConnectFlow`: the
guard in the store (one pending connection per user, a cap in all, across every worker sharing
the store), signed links bound to their user, and the result as server-sent events from any
worker. See the site's "A web app" (docs/how-to/web-app.md)."""

from ._flow import ConnectFlow, Refusal, Started, UserOf

__all__ = ["ConnectFlow", "Refusal", "Started", "UserOf"]
