"""Rate budgets that mirror the server's sliding window, plus a first-come-first-served queue.

The server counts requests in a sliding window: at most ``count`` in any ``per`` seconds. A token
bucket can only approximate that (its steady rate is ``count - burst`` per window, and a waiter
that wakes late forfeits what the bucket could not hold), so each budget here is the window
itself: ``count`` slots, and a slot spent on a request comes back ``per + margin`` seconds after
that request *ended*. A request reaches the server somewhere between the moment it was granted
and the moment its answer (or its failure) came back; timing the slot from the end therefore
keeps two requests that share a slot at least ``per + margin`` apart as the server sees them,
however slow or uneven the network is. Requests that are cheap to get wrong (status polls, whose
default budget is half the server's) may instead be timed from the grant: ``hold=0``.

Guarantee (the property tests check it for generated arrivals and request durations): for any
requests ``i`` and window start ``x``, at most ``count`` requests have ``granted < x + per +
margin`` and ``ended >= x``; so whenever each arrival lies between its grant and its end, no
server window of ``per`` seconds sees more than ``count``.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Protocol

import anyio
import anyio.lowlevel
import attrs

from .._wire.models import RateLimit
from .breaker import Admission, BreakerPolicy
from .clock import Clock

__all__ = [
    "FairLimiter", "GateShutError", "Grant", "SlotLog", "TooLongError", "check", "release",
    "spend", "take",
]


def _queue(times: Iterable[float]) -> collections.deque[float]:
    return collections.deque(times)


@attrs.define(on_setattr=attrs.setters.NO_OP)  # (no hook run on every write: a few a read)
class SlotLog:
    """One budget's spent slots: when each released one comes back, and those still held.

    ``freed`` holds the return times in order: a budget has one window and the store's clock
    never goes back, so a slot spent or released later comes back later (a queue: no heap, whose
    every pop sifts through the log: 6,000 slots in the standard minute). ``held`` maps a lease
    to the time its slot comes back even if it is never released (a crashed holder must not
    keep the slot forever).
    """

    freed: collections.deque[float] = attrs.field(factory=collections.deque, converter=_queue)
    held: dict[str, float] = attrs.Factory(dict)
    # No held slot comes back before this: a bound kept as leases are held, so that pruning
    # looks through ``held`` only when one may have run out (its own release may have come
    # first: then one look finds the true soonest again). Not part of the log's value.
    _soonest: float = attrs.field(default=math.inf, init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._soonest = min(self.held.values(), default=math.inf)

    def hold(self, lease: str, until: float) -> None:
        """``lease`` holds a slot until it is released, or until ``until`` at the latest."""
        self.held[lease] = until
        if until < self._soonest:  # noqa: PLR1730 - no min() call: a few a read
            self._soonest = until

    def prune(self, now: float) -> None:
        freed = self.freed
        while freed and freed[0] <= now:
            freed.popleft()
        if self._soonest <= now:
            self.held = {lease: until for lease, until in self.held.items() if until > now}
            self._soonest = min(self.held.values(), default=math.inf)

    def wait(self, limit: RateLimit, now: float) -> float:
        """Seconds until a slot is free (0 when one is); the log must be pruned at ``now``.

        A held slot comes back no sooner than one window after now, so that is when to look again.
        """
        if len(self.freed) + len(self.held) < limit.count:
            return 0.0
        soonest = self.freed[0] if self.freed else float("inf")
        if self.held:
            soonest = min(soonest, now + limit.window)
        return soonest - now


def _new_log(logs: dict[str, SlotLog], key: str) -> SlotLog:
    """A budget's first log (a log is always true: ``logs.get(key) or _new_log(logs, key)``)."""
    log = logs[key] = SlotLog()
    return log


def check(logs: dict[str, SlotLog], specs: Sequence[tuple[str, RateLimit]], now: float) -> float:
    """Seconds until every budget in ``specs`` could give a slot (0: now); spends nothing."""
    wait = 0.0
    for key, limit in specs:  # (every request's path: no call that can be left out)
        log = logs.get(key) or _new_log(logs, key)
        log.prune(now)
        this = log.wait(limit, now)
        if this > wait:  # noqa: PLR1730 - no max() call: a few a read
            wait = this
    return wait


def spend(
    logs: dict[str, SlotLog],
    specs: Sequence[tuple[str, RateLimit]],
    now: float,
    lease: str | None = None,
    hold: float = 0.0,
) -> None:
    """Record one slot of every budget as spent at ``now``, whatever :func:`check` would say."""
    ends: dict[float, float] = {}  # budgets of one window log one float (see release)
    for key, limit in specs:
        log = logs.get(key) or _new_log(logs, key)
        if lease is None:
            log.freed.append(_end(ends, now, limit.window))
        else:
            log.hold(lease, now + hold + limit.window)


def take(
    logs: dict[str, SlotLog],
    specs: Sequence[tuple[str, RateLimit]],
    now: float,
    lease: str | None = None,
    hold: float = 0.0,
) -> float:
    """Spend one slot of every budget in ``specs`` at once, or none.

    Returns 0 when spent, else the seconds until all of them could give one. With ``lease``, the
    slots stay held until :func:`release` (or ``hold`` seconds, whichever comes first); without,
    they are timed from ``now``.
    """
    wait = check(logs, specs, now)
    if wait <= 0:
        spend(logs, specs, now, lease, hold)
    return wait


def release(
    logs: dict[str, SlotLog], specs: Sequence[tuple[str, RateLimit]], lease: str, now: float
) -> None:
    """The request behind ``lease`` has ended: its slots come back one window from ``now``.

    Even when the hold ran out first (the slot was already given back), the request may have
    reached the server only now, so the window is counted again from here.
    """
    # Budgets of one window (the init budgets and the standard minute, say) log the same float
    # object: a slot logged in four budgets holds two floats, not four (48 B less a slot).
    ends: dict[float, float] = {}
    for key, limit in specs:
        log = logs.get(key) or _new_log(logs, key)
        log.held.pop(lease, None)
        window = limit.window
        end = ends.get(window)
        if end is None:
            end = ends[window] = now + window
        log.freed.append(end)


def _end(ends: dict[float, float], now: float, window: float) -> float:
    """``now + window``, made once per window for one spend or release."""
    end = ends.get(window)
    if end is None:
        end = ends[window] = now + window
    return end


class TooLongError(Exception):
    """Internal: the store says to wait longer than the caller allows (a server block)."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


class GateShutError(Exception):
    """Internal: the limiter's breaker lets nothing through for ``wait`` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


class _Store(Protocol):
    """What a FairLimiter needs of a store (see ``_store.Store``)."""

    async def take(
        self,
        specs: Sequence[tuple[str, RateLimit]],
        block_keys: Sequence[str],
        *,
        lease: str | None = None,
        hold: float = 0.0,
        asker: str | None = None,
    ) -> tuple[float, bool]: ...

    async def release(self, specs: Sequence[tuple[str, RateLimit]], lease: str) -> None: ...

    async def leave(self, specs: Sequence[tuple[str, RateLimit]], asker: str) -> None: ...

    async def take_gated(
        self,
        specs: Sequence[tuple[str, RateLimit]],
        block_keys: Sequence[str],
        breaker: tuple[str, BreakerPolicy],
        *,
        lease: str | None = None,
        hold: float = 0.0,
        asker: str | None = None,
    ) -> tuple[float, bool, Admission]: ...


@attrs.frozen
class Grant:
    """One slot of every budget: ``waited`` seconds in the queue; ``lease`` to release, if held;
    ``probe``: the request is its breaker's one half-open probe."""

    waited: float
    lease: str | None = None
    probe: bool = False


class _Turn:
    """A waiter's place in a :class:`FairLimiter`'s queue. The head of the queue goes at once
    (its event is made only by one that must wait for those ahead of it)."""

    __slots__ = ("event", "ready")

    def __init__(self, *, ready: bool) -> None:
        self.ready = ready
        self.event: anyio.Event | None = None

    def set(self) -> None:
        self.ready = True
        if self.event is not None:
            self.event.set()

    async def wait(self) -> None:
        if self.ready:  # first in line: no wait, but a cancelled caller goes no further
            await anyio.lowlevel.checkpoint_if_cancelled()
            return
        self.event = anyio.Event()
        await self.event.wait()


_leases = itertools.count()
_askers = itertools.count()


class FairLimiter:
    """Waiters served first come, first served; only the head of the queue asks the store.

    A waiter cancelled while queued leaves the queue and takes no slot. Each grant is one slot
    of every budget in ``specs``; a key in ``block_keys`` that the store marks blocked holds
    everyone back until the block ends. With ``gate`` (a breaker's key and policy), the store asks
    the breaker in the same step as the budgets: a grant may be the half-open probe, and an open
    circuit raises :class:`GateShutError`. ``immediate``: the store answers every step without
    suspending (``MemoryStore``), so no step needs shielding from a cancellation.
    """

    def __init__(
        self,
        store: _Store,
        specs: Sequence[tuple[str, RateLimit]],
        block_keys: Sequence[str],
        clock: Clock,
        *,
        prefix: str = "",
        gate: tuple[str, BreakerPolicy] | None = None,
        immediate: bool = False,
    ) -> None:
        self._store = store
        # The store never suspends inside a step (``MemoryStore``): a cancellation cannot come
        # between asking and being answered, so takes and releases need no shield.
        self._immediate = immediate
        self._specs = tuple(specs)
        self._block_keys = tuple(block_keys)
        self._clock = clock
        self._prefix = prefix
        self._gate = gate
        self._queue: collections.deque[_Turn] = collections.deque()
        # This limiter in the store's line of askers (a store shared by many processes serves
        # its askers in turn); in line once refused, until a grant or until nobody waits here.
        self._asker = f"{prefix}q{next(_askers)}"
        self._in_line = False

    def __repr__(self) -> str:
        keys = ", ".join(k for k, _ in self._specs)
        return f"<FairLimiter [{keys}] waiting={len(self._queue)}>"

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def acquire(self, *, max_block: float = float("inf"), hold: float = 0.0) -> Grant:
        """Wait for a grant.

        With ``hold > 0`` the slots stay spent until :meth:`release` is awaited with the grant
        (at the latest ``hold`` seconds on): call it when the request has ended, however it
        ended. Raises :class:`TooLongError` when the store reports a block longer than
        ``max_block``, :class:`GateShutError` when the gate's circuit is open.
        """
        lease = f"{self._prefix}{next(_leases)}" if hold > 0 else None
        answer: tuple[float, bool, bool] | None = None
        if not self._queue and self._immediate:
            # Nobody waits and the store answers at once: ask it before queueing (what the
            # head of the queue would do first, without a turn of its own); refused, that
            # answer is the head's first.
            await anyio.lowlevel.checkpoint_if_cancelled()
            answer = await self._take(lease, hold)
            if answer[0] <= 0:
                return Grant(0.0, lease, answer[2])
        turn = _Turn(ready=not self._queue)
        self._queue.append(turn)
        started = self._clock.monotonic()
        try:
            await turn.wait()
            while True:
                if answer is None:
                    answer = await self._take(lease, hold)
                (wait, blocked, probe), answer = answer, None
                if wait <= 0:
                    return Grant(self._clock.monotonic() - started, lease, probe)
                if blocked and wait > max_block:
                    raise TooLongError(wait)
                await self._clock.sleep(wait)
        finally:
            if self._queue and self._queue[0] is turn:
                self._queue.popleft()
                if self._queue:
                    self._queue[0].set()
            else:
                self._queue.remove(turn)
            if not self._queue and self._in_line:
                self._in_line = False
                with anyio.CancelScope(shield=True):
                    await self._store.leave(self._specs, self._asker)

    async def take_now(self, *, hold: float = 0.0) -> tuple[Grant | None, float, bool]:
        """A grant now, never queued and never slept: ``(grant, 0, False)``, or ``(None, wait,
        blocked)`` with how long the store says to wait. Never goes ahead of a queued waiter
        (then ``wait`` is ``inf``). Raises :class:`GateShutError` as :meth:`acquire` does."""
        if self._queue:
            return None, float("inf"), False
        lease = f"{self._prefix}{next(_leases)}" if hold > 0 else None
        wait, blocked, probe = await self._take(lease, hold)
        if wait <= 0:
            return Grant(0.0, lease, probe), 0.0, False
        if self._in_line and not self._queue:  # it will not ask again
            self._in_line = False
            with anyio.CancelScope(shield=True):
                await self._store.leave(self._specs, self._asker)
        return None, wait, blocked

    async def _take(self, lease: str | None, hold: float) -> tuple[float, bool, bool]:
        """One ask of the store, shielded: a store on the network may have spent the slot by
        the time a cancellation arrives, and the caller must learn of it to release it.
        ``(wait, blocked, probe)``."""
        probe = False
        if self._gate is None and self._immediate:  # nothing can come between: no shield
            wait, blocked = await self._store.take(
                self._specs, self._block_keys, lease=lease, hold=hold, asker=self._asker)
        else:
            with anyio.CancelScope(shield=True):
                if self._gate is None:
                    wait, blocked = await self._store.take(
                        self._specs, self._block_keys, lease=lease, hold=hold,
                        asker=self._asker)
                else:
                    wait, blocked, admission = await self._store.take_gated(
                        self._specs, self._block_keys, self._gate, lease=lease, hold=hold,
                        asker=self._asker)
                    if not admission.allowed:
                        raise GateShutError(admission.wait)
                    probe = admission.probe
        if wait <= 0:
            self._in_line = False  # the store took this asker out of its line
        elif not blocked:
            self._in_line = True
        return wait, blocked, probe

    async def release(self, grant: Grant) -> None:
        """The request made with ``grant`` has ended: its slots start coming back now."""
        if grant.lease is None:
            return
        if self._immediate:
            await self._store.release(self._specs, grant.lease)
        else:
            with anyio.CancelScope(shield=True):
                await self._store.release(self._specs, grant.lease)
