"""``connect_many``: many sessions with a bound on how many wait at once, renewal of expired
ones, results as they complete."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio
import anyio.abc
import attrs

from .._wire.convert import coerce_provider
from .._wire.exceptions import ClientStateError, ConfigurationError, InstantlyError
from .._wire.models import OAuthSession, Provider, SessionStatus
from .outcome import ConnectResult
from .polling import PendingConnection

__all__ = ["OnSession", "OnSessionFor", "SessionFor", "connect_many"]

logger = logging.getLogger("instantly_oauth_async")

OnSession = Callable[[OAuthSession], Awaitable[object] | object]


@attrs.frozen
class SessionFor:
    """A session ``connect_many`` made, and the person it is for: what its ``on_session_for``
    callback receives.

    ``index`` is the person's position: in ``expected_emails`` when given, else in the order
    the sessions were asked for (0 to ``count - 1``). ``expected_email`` is
    ``expected_emails[index]`` (None without them). ``renewal`` is 0 for the person's first
    session and n for the n-th that replaced an expired one (``renew_expired``): a renewal
    keeps the index, and may come after sessions made for later people.
    """

    session: OAuthSession
    index: int
    expected_email: str | None = None
    renewal: int = 0


OnSessionFor = Callable[[SessionFor], Awaitable[object] | object]


class _Start(Protocol):
    async def __call__(
        self, provider: Provider | str, *, expected_email: str | None = None
    ) -> PendingConnection: ...


async def connect_many(  # noqa: PLR0915 - producer and slots read best side by side
    start: _Start,
    require_open: Callable[[], anyio.abc.TaskGroup],
    provider: Provider | str,
    count: int,
    *,
    on_session: OnSession | None = None,
    on_session_for: OnSessionFor | None = None,
    expected_emails: Sequence[str] | None = None,
    max_pending: int = 100,
    renew_expired: int = 0,
) -> AsyncIterator[ConnectResult]:
    """See ``OAuthManager.connect_many``: ``start`` makes one session, ``require_open`` gives the
    manager's task group (or raises when it is not open)."""
    group = require_open()
    chosen = coerce_provider(provider)
    if count < 0 or max_pending < 1 or renew_expired < 0:
        raise ConfigurationError("count >= 0, max_pending >= 1 and renew_expired >= 0")
    if on_session is not None and on_session_for is not None:
        raise ConfigurationError("pass on_session or on_session_for, not both")
    emails = list(expected_emails) if expected_emails is not None else None
    if emails is not None and len(emails) != count:
        raise ConfigurationError("expected_emails must hold one address per session")
    send, receive = anyio.create_memory_object_stream[ConnectResult](math.inf)
    errors: list[BaseException] = []
    live: set[PendingConnection] = set()
    slots = anyio.Semaphore(max_pending)
    producer_scope = anyio.CancelScope()
    demand = _Demand()
    created = 0  # sessions made, renewals included
    settled = 0  # of them: a result sent, or an error kept for the caller
    producer_ended = False

    async def announce(session: OAuthSession, index: int, email: str | None, renewal: int
                       ) -> None:
        if on_session_for is not None:
            await _call(on_session_for, SessionFor(session, index, email, renewal))
        else:
            await _call(on_session, session)

    async def slot(pending: PendingConnection, index: int) -> None:
        nonlocal created, settled
        renewals = renew_expired
        try:
            while True:
                try:
                    result = await pending.result()
                except ClientStateError:
                    return  # the manager closed under the loop: told once, at the end
                except InstantlyError as exc:
                    errors.append(exc)
                    settled += 1
                    return
                if result.status is SessionStatus.EXPIRED and renewals > 0:
                    renewals -= 1
                    live.discard(pending)
                    try:
                        email = pending.expected_email
                        await demand.wait()
                        pending = await start(chosen, expected_email=email)
                        created += 1
                        settled += 1  # the expired one, replaced
                        live.add(pending)
                        await announce(pending.session, index, email,
                                       renew_expired - renewals)
                    except Exception as exc:  # noqa: BLE001 - also the caller's callback
                        errors.append(exc)
                        settled += 1
                        await send.send(result)
                        return
                    continue
                settled += 1
                await send.send(result)
                return
        finally:
            live.discard(pending)
            slots.release()

    async def produce() -> None:
        nonlocal created, producer_ended
        async with send:
            with producer_scope:
                async with anyio.create_task_group() as slots_group:
                    for index in range(count):
                        await slots.acquire()
                        await demand.wait()
                        email = emails[index] if emails is not None else None
                        try:
                            pending = await start(chosen, expected_email=email)
                        except InstantlyError as exc:
                            slots.release()
                            errors.append(exc)
                            break
                        created += 1
                        live.add(pending)
                        slots_group.start_soon(slot, pending, index)
                        try:
                            await announce(pending.session, index, email, 0)
                        except Exception as exc:  # noqa: BLE001 - the caller's callback
                            errors.append(exc)
                            break
                    producer_ended = True  # all made, or stopped by an error kept for the caller

    group.start_soon(produce)
    try:
        async with receive:
            while True:
                demand.open()  # sessions are made while the caller waits for a result
                try:
                    result = await receive.receive()
                except anyio.EndOfStream:
                    break
                demand.close()
                yield result
    finally:
        # Stopped early (break, cancellation): stop what this call started, nothing else.
        producer_scope.cancel()
        for pending in live:
            pending.cancel()
    if not producer_ended or settled < created:
        # Only the manager closing under the loop ends it this way.
        errors.insert(0, ClientStateError(
            f"the OAuthManager closed before connect_many finished: {created - settled} of the "
            f"{created} sessions it created have no result, and {count - min(count, created)} "
            "were never created"))
    if errors:
        for extra in errors[1:]:
            logger.warning("connect_many: also %s: %s", type(extra).__name__, extra)
        raise errors[0]


class _Demand:
    """Open while the caller waits for the next result: sessions are made only then, as a
    generator runs only when asked, so a caller that leaves the loop stops the making at once
    (at most the init already on its way completes)."""

    def __init__(self) -> None:
        self._open = False
        self._event = anyio.Event()

    def open(self) -> None:
        self._open = True
        self._event.set()

    def close(self) -> None:
        if self._open:
            self._open = False
            self._event = anyio.Event()

    async def wait(self) -> None:
        while not self._open:
            await self._event.wait()


async def _call(callback: Callable[[Any], Awaitable[object] | object] | None, arg: object
                ) -> None:
    if callback is None:
        return
    outcome = callback(arg)
    if inspect.isawaitable(outcome):
        await outcome
