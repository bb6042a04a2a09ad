"""How a manager opens and closes: the task its stages run in, and a close that lets every step
under way end (its answer stored before its lease goes), hands the sessions over to the fleet,
and waits for all of it within a bound of real time."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import anyio.abc

from .._stores.store import Store
from .._wire.exceptions import ClientStateError, InstantlyError
from .parts import Parts

__all__ = ["Lifetime"]


class Lifetime:
    """The open and close of one manager's :class:`Parts` (one of each, in that order)."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self.state = "unopened"  # opening, opened, closed
        self.group: anyio.abc.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._stop: anyio.Event | None = None  # made with the loop, in open()
        self._closed: anyio.Event | None = None

    async def open(self) -> None:
        if self.state != "unopened":
            raise ClientStateError("an OAuthManager can be entered only once")
        self.state = "opening"
        await self._parts.client.__aenter__()
        if self._parts.guard is not None:
            self._parts.guard.enter()
        # The manager's tasks live in a task of their own, not in the caller's: so any task may
        # close it, and closing never cancels the code that called aclose().
        ready, self._stop, self._closed = anyio.Event(), anyio.Event(), anyio.Event()
        self._host = asyncio.get_running_loop().create_task(self._run(ready))
        await ready.wait()
        self.state = "opened"

    async def _run(self, ready: anyio.Event) -> None:
        assert self._stop is not None  # noqa: S101 - made before this task
        async with anyio.create_task_group() as group:
            self.group = group
            group.start_soon(self._parts.poller.run, group)
            ready.set()
            await self._stop.wait()
            group.cancel_scope.cancel()

    def require_open(self) -> anyio.abc.TaskGroup:
        if self.group is None:
            raise ClientStateError(
                "use the OAuthManager inside 'async with' (it is "
                f"{'closed' if self.state == 'closed' else 'not open yet'})"
            )
        return self.group

    async def close(self, owned_store: Store | None) -> None:
        """See ``OAuthManager.aclose``; ``owned_store`` (one ``from_env`` built) is closed last."""
        if self.state == "closed":
            if self._closed is not None:
                with anyio.CancelScope(shield=True):
                    await self._closed.wait()
            return
        self.state = "closed"
        poller, fleet = self._parts.poller, self._parts.fleet
        # No read starts from now on. Sessions in a step (a status read on the wire, or the
        # account read after a one-time answer) end it: their answers are stored before their
        # leases go. An account read gets at most status_timeout more (the success is then
        # stored without its account); real time bounds the whole wait.
        poller.closing()
        busy = poller.busy()
        if fleet is not None:  # others adopt at once, not one lease later
            with anyio.CancelScope(shield=True), self._parts.clock.deadline(2.0), \
                    contextlib.suppress(InstantlyError):  # else the leases lapse by themselves
                await fleet.release_all(busy=busy)
        if busy:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._parts.close_wait), \
                    contextlib.suppress(InstantlyError):
                await poller.settle(busy)
        if fleet is not None and fleet.holding():
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0), \
                    contextlib.suppress(InstantlyError):
                await fleet.release_held()
        self.group = None
        try:
            with anyio.CancelScope(shield=True):
                if self._host is not None and self._stop is not None:
                    self._stop.set()
                    await asyncio.shield(self._host)
        finally:
            if self._parts.guard is not None:
                self._parts.guard.exit()
            poller.abandon_all()
            with anyio.CancelScope(shield=True):
                await self._parts.client.aclose()
                if owned_store is not None:  # built by from_env(): no one else has it
                    await owned_store.aclose()
            if self._closed is not None:
                self._closed.set()
