"""Admission of inits for one provider: its breaker, its workspace and IP init limits and the
standard budget, ``Retry-After`` and long blocks. One method gives a session or raises.

A 429 is one of two things. An ordinary one (the workspace or IP init limit, the standard limit)
asks to wait at most one window: it is waited out when the caller's deadline allows, else
``start()`` ends with :class:`StartTimeoutError`. One that asks for longer than a window can only
be an IP block (30 min, 2 h, 24 h): :class:`IPBlockedError` when it is longer than
``max_block_wait`` or than the caller's time left.
"""

from __future__ import annotations

import logging
import math
import random
from datetime import datetime, timedelta, timezone

import anyio

from .._limits.breaker import BreakerPolicy, BreakerTransition, CircuitState
from .._limits.clock import Clock
from .._limits.limiter import FairLimiter, GateShutError, Grant, TooLongError
from .._observe.stats import Tally
from .._stores.store import Store
from .._wire.client import InstantlyClient
from .._wire.exceptions import (
    CircuitOpenError,
    IPBlockedError,
    MalformedResponseError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    StartTimeoutError,
    TransportError,
)
from .._wire.models import OAuthSession, Provider, RetryPolicy
from .reads import send_leased

__all__ = ["Admission"]

logger = logging.getLogger("instantly_oauth_async")


class Admission:
    """The init gate of one provider: a Microsoft outage never slows Google, as on the server.

    ``limiter`` grants one slot of the provider's workspace and IP init limits and of the
    standard budget at once, held until the init has ended; a 429 blocks ``block_keys`` for its
    ``Retry-After`` for every manager sharing the store.
    """

    def __init__(
        self,
        provider: Provider,
        client: InstantlyClient,
        store: Store,
        limiter: FairLimiter,
        *,
        block_keys: tuple[str, str],
        breaker_key: str,
        breaker: BreakerPolicy,
        window: float,
        hold: float,
        max_block_wait: float,
        retry: RetryPolicy,
        rng: random.Random,
        clock: Clock,
        tally: Tally,
    ) -> None:
        self.provider = provider
        self._client = client
        self._store = store
        self._limiter = limiter
        self._block_keys = list(block_keys)
        self._breaker_key = breaker_key
        self._breaker = breaker
        self._window = window
        # The server's Retry-After is whole seconds rounded up: an ordinary 429 asks for at most
        # this; anything longer is a block.
        self._longest_wait = float(math.ceil(window))
        self._hold = hold
        self._max_block_wait = max_block_wait
        self._retry = retry
        self._rng = rng
        self._clock = clock
        self._tally = tally

    async def create(self, budget: float) -> OAuthSession:
        """A new session within ``budget`` seconds (``start()``'s timeout: 0 never waits); a
        denial (the circuit open, a block, no slot in time) is counted by its reason, then
        raised."""
        try:
            return await self._within(budget)
        except CircuitOpenError:
            self._tally.denied(self.provider, "breaker_open")
            raise
        except IPBlockedError:
            self._tally.denied(self.provider, "blocked")
            raise
        except StartTimeoutError:
            self._tally.denied(self.provider, "budget" if budget == 0 else "deadline")
            raise

    async def _within(self, budget: float) -> OAuthSession:
        deadline = self._clock.monotonic() + budget
        if budget == 0:
            return await self.init(deadline, wait=False)
        with self._clock.deadline(budget):
            return await self.init(deadline)
        raise StartTimeoutError(f"no {self.provider.value} session within {budget:g} s")

    async def init(self, deadline: float, *, wait: bool = True) -> OAuthSession:
        """A new session, retried within ``deadline`` (this clock's monotonic seconds).

        With ``wait=False`` nothing waits: the init goes now if the circuit admits it and a slot
        of every budget is free, else this raises at once (the request itself still runs to its
        own timeout). An answer that arrived but cannot be read is raised at once, never retried:
        the server spent the init, and a parse failure would repeat.
        """
        provider, attempt = self.provider, 0
        while True:
            try:
                # The breaker and the budgets answer in one step of the store.
                grant = await self._grant(deadline, wait=wait)
            except GateShutError as shut:
                if not wait or self._clock.monotonic() + shut.wait > deadline:
                    raise CircuitOpenError(provider.value, shut.wait) from None
                await self._clock.sleep(shut.wait)
                continue
            if grant.probe and self._tally.breakers[provider.value] is not \
                    CircuitState.HALF_OPEN:
                self._tally.transition(provider, BreakerTransition(
                    self._breaker_key, CircuitState.OPEN, CircuitState.HALF_OPEN,
                    self._clock.monotonic(), "cooldown over: one probe"))
            verdict: bool | None = None  # True: success, False: a breaker failure
            retry_after: float | None = None
            delay = 0.0
            try:
                session = await send_leased(self._limiter, grant, self._tally, "init",
                                            lambda: self._client.init_oauth(self.provider),
                                            provider=provider.value, attempt=attempt + 1)
                verdict = True
                return session  # noqa: TRY300 - the finally must see the verdict first
            except RateLimitedError as exc:
                # The limiter waits out the block; every manager sharing the store does too.
                hold = exc.retry_after if exc.retry_after is not None else self._window
                await self._store.block(self._block_keys, hold)
                logger.warning("%s init got 429; holding inits back %.1f s", provider.value, hold)
                self._refuse_long_wait(hold, deadline, exc, wait=wait)
                attempt += 1
                if attempt >= self._retry.attempts:
                    raise
            except MalformedResponseError as exc:
                # An answer came and cannot be read: the init was spent on the server, and the
                # same answer would come again. No retry, and no breaker failure.
                logger.warning("%s init answer could not be read (%s); not retried",
                               provider.value, type(exc).__name__)
                raise
            except (ServiceUnavailableError, TransportError, ServerError) as exc:
                # 503s and failures to get an answer count against the breaker; other 5xx don't.
                # A retry after an answer that was lost leaves the server an orphan session,
                # which costs one init and nothing else.
                if isinstance(exc, (ServiceUnavailableError, TransportError)):
                    verdict, retry_after = False, getattr(exc, "retry_after", None)
                attempt += 1
                delay = self._retry.delay(attempt, self._rng, retry_after)
                if attempt >= self._retry.attempts or (
                    self._clock.monotonic() + delay > deadline
                ):
                    raise
                logger.info("%s init failed (%s); retry %d in %.2f s", provider.value,
                            type(exc).__name__, attempt, delay)
            finally:
                await self._settle(grant.probe, verdict, retry_after)
            await self._clock.sleep(delay)

    def _refuse_long_wait(self, seconds: float, deadline: float, cause: BaseException | None,
                          *, wait: bool = True) -> None:
        """Raise when a wait of ``seconds`` that a 429 asked for is not to be waited.

        Longer than one window, it is an IP block: :class:`IPBlockedError` past
        ``max_block_wait`` or the time left. An ordinary 429's wait (the workspace or IP init
        limit, the standard limit) past the time left: :class:`StartTimeoutError`.
        """
        left = deadline - self._clock.monotonic() if wait else 0.0
        if seconds > self._longest_wait:
            if seconds > min(self._max_block_wait, left):
                raise self._blocked(seconds) from None
            return
        if seconds > left:
            raise StartTimeoutError(
                f"no {self.provider.value} session in time: the init limit asks to wait "
                f"{seconds:.1f} s, {max(left, 0.0):.1f} s were left"
            ) from cause

    async def _grant(self, deadline: float, *, wait: bool = True) -> Grant:
        """A slot for one init (raises for a block or a hold-back too long to wait, and
        :class:`GateShutError` while the circuit is open)."""
        provider = self.provider.value
        if not wait:
            grant = await self._take_now()
        else:
            remaining = deadline - self._clock.monotonic()
            began = self._clock.monotonic()
            try:
                grant = await self._limiter.acquire(
                    max_block=min(max(self._max_block_wait, self._longest_wait), remaining),
                    hold=self._hold)
            except TooLongError as exc:
                self._tally.waited("init", provider, self._clock.monotonic() - began,
                                   granted=False)
                self._refuse_long_wait(exc.wait, deadline, None)
                raise StartTimeoutError(  # not reached: the limiter waits what is allowed
                    f"no {provider} session in time") from None
            except GateShutError:
                raise  # the breaker's refusal is no wait for the budget: the caller reports it
            except BaseException:  # the caller's deadline or cancellation
                self._tally.waited("init", provider, self._clock.monotonic() - began,
                                   granted=False)
                raise
        self._tally.waited("init", provider, grant.waited)
        return grant

    async def _take_now(self) -> Grant:
        """A slot of every budget now, or a raise at once: never queued, never slept.

        It never goes ahead of a caller already queued.
        """
        grant, wait, blocked = await self._limiter.take_now(hold=self._hold)
        if grant is not None:
            return grant
        if wait == math.inf:
            raise StartTimeoutError(
                f"no {self.provider.value} session without waiting: {self._limiter.waiting} "
                "earlier callers wait for the init budget")
        if blocked:
            self._refuse_long_wait(wait, self._clock.monotonic(), None, wait=False)
        raise StartTimeoutError(
            f"no {self.provider.value} session without waiting: the init budget has a slot "
            f"again in {wait:.1f} s")

    async def _settle(self, probe: bool, verdict: bool | None, retry_after: float | None) -> None:
        """Report an attempt's outcome to the breaker (None: no verdict, free the probe)."""
        with anyio.CancelScope(shield=True):
            if verdict is None:
                if probe:  # the probe is free again; a plain request holds nothing
                    await self._store.breaker_release(self._breaker_key, probe=probe)
                return
            # A success while this process sees the circuit closed changes nothing it could
            # report: the store may send it with its next step.
            quiet = verdict and not probe and \
                self._tally.breakers[self.provider.value] is CircuitState.CLOSED
            transition = await self._store.breaker_record(
                self._breaker_key, self._breaker, success=verdict, probe=probe,
                retry_after=retry_after, quiet=quiet)
        self._tally.transition(self.provider, transition)

    def _blocked(self, seconds: float) -> IPBlockedError:
        until = datetime.now(timezone.utc) + timedelta(seconds=seconds)
        return IPBlockedError(self.provider.value, until, seconds)
