"""A session's outcome as the browser gets it: the server-sent events stream (a reconnection
delay, a comment every keepalive while pending, then one ``result`` event), and the outcome as
the pages show it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from .._manager.pending import PendingConnection
from .._wire.exceptions import ClientStateError, InstantlyError
from . import _pages

__all__ = ["payload", "stream"]


async def stream(pending: PendingConnection, *, closing: anyio.Event, keepalive: float,
                 delivered: Callable[[], Awaitable[None]]) -> AsyncIterator[bytes]:
    """The events of ``pending``; ``delivered()`` is awaited just before its ``result`` event.
    It ends with no event once ``closing`` is set (the browser reconnects, to any worker)."""
    yield _pages.RECONNECT  # a stream cut short is opened again, on any worker
    outcome = None
    while not closing.is_set():  # one pass a keepalive; ends with the session
        with anyio.move_on_after(keepalive):
            async with anyio.create_task_group() as group:
                async def stop_on_close() -> None:
                    await closing.wait()
                    group.cancel_scope.cancel()

                group.start_soon(stop_on_close)
                outcome = await payload(pending)
                group.cancel_scope.cancel()
        if outcome is not None or pending.done():
            break
        if not closing.is_set():
            yield _pages.KEEPALIVE
    if outcome is None:
        return
    await delivered()
    yield _pages.result_event(outcome)


async def payload(pending: PendingConnection) -> dict[str, Any] | None:
    """The outcome as the pages show it; None when this worker's manager is closing."""
    try:
        result = await pending
    except ClientStateError:
        return None
    except InstantlyError as exc:
        return {"ok": False, "email": None, "reason": type(exc).__name__}
    return {"ok": result.ok, "email": result.email,
            "reason": result.error_description or result.status.value}
