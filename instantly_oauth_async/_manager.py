"""``OAuthManager``: rate-limited, breaker-guarded init and budgeted concurrent polling.

::

    start(provider) ─▶ breaker (per provider) ─▶ limiter (workspace + IP init budget, per
                       provider, and the workspace's standard budget) ─▶ InstantlyClient.init_oauth
                    ─▶ PendingConnection
    scheduler (one task) ─▶ status share + standard budget ─▶ get_oauth_status ─▶ ConnectResult

Every request holds its slots from the grant until its response has been read (a lease), so
no server window overfills however long requests queue or travel.
"""

from __future__ import annotations

import hashlib
import heapq
import inspect
import logging
import math
import random
import secrets
import warnings
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, Final

import aiohttp
import anyio
import anyio.abc
import attrs
from yarl import URL

from ._breaker import BreakerPolicy, BreakerTransition, CircuitState
from ._budget import DEFAULT_STANDARD_LIMIT, Budget, limits_of
from ._client import DEFAULT_BASE_URL, InstantlyClient
from ._clock import Clock, SystemClock
from ._convert import coerce_provider
from ._exceptions import (
    APIError,
    CircuitOpenError,
    ClientStateError,
    ConfigurationError,
    InstantlyError,
    IPBlockedError,
    MalformedResponseError,
    NotFoundError,
    OutcomeLostError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    SessionCancelledError,
    StartTimeoutError,
    TransportError,
)
from ._limiter import FairLimiter, Grant, TooLongError
from ._models import Account, OAuthSession, OAuthStatus, Provider, RateLimit, SessionStatus
from ._store import MemoryStore, Store, default_store

__all__ = [
    "DEFAULT_STATUS_LIMIT",
    "ConnectResult",
    "ManagerStats",
    "OAuthManager",
    "PendingConnection",
    "RetryPolicy",
]

logger = logging.getLogger("instantly_oauth_async")

#: The share of the workspace's standard budget (100/s, 6,000/min) that polling and account
#: fetches may spend by default: half of each, leaving the rest to inits and the application's
#: other calls.
DEFAULT_STATUS_LIMIT: Final = (RateLimit(50, per=1), RateLimit(3000, per=60))
DOCUMENTED_TTL: Final = 600.0
_RESULT_FIELDS = ("email", "name", "error", "error_description")


@attrs.frozen
class RetryPolicy:
    """Jittered exponential backoff for transient failures, bounded in attempts and time.

    The n-th retry waits a random time between half and all of ``min(cap, base * 2**(n-1))``,
    and at least the server's ``Retry-After`` when it sent one.
    """

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * (2.0 ** min(max(attempt - 1, 0), 30)))
        return max(ceiling * rng.uniform(0.5, 1.0), min(retry_after or 0.0, self.cap))


@attrs.frozen
class ConnectResult:
    """How one session ended. ``account`` is fetched on success (None if that fetch failed, and
    ``account_error`` says why: a failed fetch never turns a success into a failure)."""

    session: OAuthSession
    status: SessionStatus
    email: str | None = None
    name: str | None = None
    error: str | None = None
    error_description: str | None = None
    account: Account | None = None
    account_error: str | None = None
    expected_email: str | None = None
    #: True when the one-time answer was lost and success was confirmed through GET accounts.
    reconciled: bool = False

    @property
    def ok(self) -> bool:
        return self.status is SessionStatus.SUCCESS

    @property
    def email_mismatch(self) -> bool:
        """A mailbox other than ``expected_email`` was connected."""
        return (
            self.ok
            and self.expected_email is not None
            and self.email is not None
            and self.email.strip().lower() != self.expected_email.strip().lower()
        )


@attrs.frozen
class ManagerStats:
    """A snapshot for dashboards: ``requests[endpoint][status]`` counts HTTP answers (status 0: no
    answer), ``breakers[provider]`` the last state this manager saw."""

    requests: dict[str, dict[int, int]]
    rate_limited: int
    breakers: dict[str, CircuitState]
    transitions: tuple[BreakerTransition, ...]
    pending: int
    results: dict[str, int]
    token_wait_seconds: float
    sessions_created: int


class PendingConnection:
    """A session waiting for its person. ``await pending`` or ``await pending.result()``.

    Any number of tasks may await it; they share its one poll loop. Cancelling an awaiter
    cancels nothing else; :meth:`cancel` stops the session's polling.
    """

    __slots__ = ("_cancel_requested", "_deadline", "_done", "_error", "_failures", "_finished",
                 "_next_at", "_on_finish", "_reading", "_result", "_scope", "expected_email",
                 "session")

    def __init__(
        self,
        session: OAuthSession,
        expected_email: str | None,
        on_finish: Callable[[PendingConnection], None] | None = None,
    ) -> None:
        self.session = session
        self.expected_email = expected_email
        self._finished = False
        self._done: anyio.Event | None = None  # made when someone first waits: most never do
        self._result: ConnectResult | None = None
        self._error: BaseException | None = None
        self._on_finish = on_finish
        self._scope: anyio.CancelScope | None = None  # while a poll step runs
        self._cancel_requested = False
        self._reading = False  # a status read is in flight: cancel() waits for its answer
        # Poll state, kept here between steps (no task sleeps on a pending session):
        self._next_at = 0.0
        self._deadline = math.inf
        self._failures = 0

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        session = self.session
        return f"<PendingConnection {session.session_id} {session.provider.value} {state}>"

    def done(self) -> bool:
        return self._finished

    async def result(self) -> ConnectResult:
        """The outcome; raises what the caller must act on (see ``OutcomeLostError``)."""
        if not self._finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None  # noqa: S101 - set together with _done
        return self._result

    def __await__(self) -> Generator[Any, None, ConnectResult]:
        return self.result().__await__()

    def cancel(self) -> None:
        """Stop polling this session (an in-flight read finishes first: its answer may be the one
        the server gives only once). Awaiters then get :class:`SessionCancelledError`."""
        self._cancel_requested = True
        if self._scope is not None:
            if not self._reading:
                self._scope.cancel()
        elif not self.done():
            sid = self.session.session_id
            self._finish(error=SessionCancelledError(f"session {sid} cancelled"))

    def _finish(
        self, *, result: ConnectResult | None = None, error: BaseException | None = None
    ) -> None:
        if self.done():
            return
        self._result, self._error, self._finished = result, error, True
        if self._done is not None:
            self._done.set()
        if self._on_finish is not None:
            on_finish, self._on_finish = self._on_finish, None
            on_finish(self)


OnSession = Callable[[OAuthSession], Awaitable[object] | object]


class OAuthManager:
    """Connects mailboxes: creates sessions within the init limits and polls them to the end.

    Use as ``async with OAuthManager(api_key) as manager:``; leaving the block cancels every poll,
    sends nothing more and closes the HTTP session. Keyword arguments default to the documented
    limits; see the README's "Limits and guarantees" for what each one promises.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | URL = DEFAULT_BASE_URL,
        init_limit: RateLimit = RateLimit(75, per=60),  # noqa: B008 - frozen, safe to share
        ip_init_limit: RateLimit = RateLimit(150, per=60),  # noqa: B008 - frozen, safe to share
        standard_limit: RateLimit | Sequence[RateLimit] = DEFAULT_STANDARD_LIMIT,
        status_limit: RateLimit | Sequence[RateLimit] = DEFAULT_STATUS_LIMIT,
        workspace: str | None = None,
        poll_interval: float = 5.0,
        store: Store | None = None,
        clock: Clock | None = None,
        breaker: BreakerPolicy = BreakerPolicy(),  # noqa: B008 - frozen, safe to share
        retry: RetryPolicy = RetryPolicy(),
        fetch_account: bool = True,
        max_block_wait: float = 120.0,
        start_timeout: float = 600.0,
        expiry_grace: float = 60.0,
        request_timeout: float = 30.0,
        status_timeout: float = 120.0,
        session: aiohttp.ClientSession | None = None,
        seed: int | None = None,
    ) -> None:
        self._client = InstantlyClient(
            api_key, base_url=base_url, session=session, timeout=request_timeout
        )
        for name, value in (("poll_interval", poll_interval), ("max_block_wait", max_block_wait),
                            ("start_timeout", start_timeout), ("status_timeout", status_timeout)):
            if not _positive(value):
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if not 0 <= expiry_grace < math.inf:
            raise ConfigurationError("expiry_grace must be a non-negative number of seconds")
        limits = limits_of("status_limit", status_limit)
        standard = limits_of("standard_limit", standard_limit)
        if workspace is not None and not str(workspace).strip():
            raise ConfigurationError("workspace must be a non-empty string")
        for name, limit in (("init_limit", init_limit), ("ip_init_limit", ip_init_limit)):
            if not isinstance(limit, RateLimit):
                raise ConfigurationError(f"{name} must be a RateLimit")
        self._clock: Clock = clock or (store.clock if isinstance(store, MemoryStore) else None) \
            or SystemClock()
        if store is None:
            store = default_store() if clock is None else MemoryStore(self._clock)
        self._store = store
        self._init_limit, self._ip_init_limit, self._status_limits = (
            init_limit, ip_init_limit, limits)
        self._poll_interval = float(poll_interval)
        self._breaker_policy, self._retry = breaker, retry
        self._fetch_account = fetch_account
        self._max_block_wait, self._start_timeout = float(max_block_wait), float(start_timeout)
        self._expiry_grace, self._status_timeout = float(expiry_grace), float(status_timeout)
        self._rng = random.Random(seed)  # noqa: S311 - backoff jitter, not security

        url = URL(self._client.base_url)
        namespace = f"iox:{url.host}:{url.port}"
        # Budgets belong to the workspace, shared by all its keys: by default one key is taken
        # for one workspace; ``workspace=`` names it when several keys or services share one.
        name = api_key.strip() if workspace is None else f"workspace:{workspace.strip()}"
        ws_id = hashlib.sha256(name.encode()).hexdigest()[:16]
        self._keys = {
            p: (f"{namespace}:init:{p.value}:ws:{ws_id}", f"{namespace}:init:{p.value}:ip",
                f"{namespace}:breaker:{p.value}")
            for p in Provider
        }
        # A 429 for the standard limit holds back every request of the workspace: this key.
        self._standard_key = f"{namespace}:std:ws:{ws_id}"
        standard_specs = [(f"{self._standard_key}:{i}", limit) for i, limit in enumerate(standard)]
        lease_prefix = f"{secrets.token_hex(6)}:"  # leases of this manager, unique in a fleet
        # A lease a crashed holder never released frees its slots after this many seconds.
        self._init_hold = float(request_timeout) + 5.0
        self._status_hold = max(float(request_timeout), float(status_timeout)) + 5.0
        self._init_limiters = {
            p: FairLimiter(
                store, [(ws, init_limit), (ip, ip_init_limit), *standard_specs],
                [ws, ip, self._standard_key], self._clock, prefix=lease_prefix,
            )
            for p, (ws, ip, _) in self._keys.items()
        }
        status_key = f"{namespace}:status:ws:{ws_id}"
        self._status_limiter = FairLimiter(
            store,
            [*((f"{status_key}:{i}", limit) for i, limit in enumerate(limits)), *standard_specs],
            [self._standard_key], self._clock, prefix=lease_prefix,
        )
        self._budget = Budget(
            FairLimiter(store, standard_specs, [self._standard_key], self._clock,
                        prefix=lease_prefix),
            hold=self._init_hold,
        )
        self._group: anyio.abc.TaskGroup | None = None
        self._state = "unopened"
        self._pending: dict[str, PendingConnection] = {}
        self._requests: dict[str, Counter[int]] = {}
        self._rate_limited = 0
        self._breakers = dict.fromkeys((p.value for p in Provider), CircuitState.CLOSED)
        self._transitions: deque[BreakerTransition] = deque(maxlen=100)
        self._results: Counter[str] = Counter()
        self._token_wait = 0.0
        self._due: list[tuple[float, int, PendingConnection]] = []
        self._seq = 0
        self._wakeup: anyio.Event | None = None
        self._created = 0

    def __repr__(self) -> str:
        return (
            f"<OAuthManager base_url={self._client.base_url!r} state={self._state} "
            f"pending={len(self._pending)}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> OAuthManager:
        if self._state != "unopened":
            raise ClientStateError("an OAuthManager can be entered only once")
        await self._client.__aenter__()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group, self._state = group, "opened"
        group.start_soon(self._scheduler, group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel every poll, wait for the tasks to end, close the HTTP session. Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        group, self._group = self._group, None
        try:
            if group is not None:
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)
        finally:
            for pending in list(self._pending.values()):
                pending._finish(error=ClientStateError("the OAuthManager closed first"))
            self._pending.clear()
            await self._client.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", None) == "opened":
            _warn(f"unclosed {self!r}; use 'async with' or aclose()", ResourceWarning,
                  stacklevel=1)

    def _require_open(self) -> anyio.abc.TaskGroup:
        if self._group is None:
            raise ClientStateError(
                "use the OAuthManager inside 'async with' (it is "
                f"{'closed' if self._state == 'closed' else 'not open yet'})"
            )
        return self._group

    @property
    def client(self) -> InstantlyClient:
        """The underlying client, for one-off calls that need no limiter (each call still spends
        the workspace's standard budget on the server: wrap it in ``budget.slot()``)."""
        return self._client

    @property
    def budget(self) -> Budget:
        """The workspace's standard budget, for the application's own requests to Instantly:
        ``async with manager.budget.slot(): ...`` (see :class:`Budget`)."""
        return self._budget

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> ManagerStats:
        return ManagerStats(
            requests={k: dict(v) for k, v in self._requests.items()},
            rate_limited=self._rate_limited,
            breakers=dict(self._breakers),
            transitions=tuple(self._transitions),
            pending=len(self._pending),
            results=dict(self._results),
            token_wait_seconds=self._token_wait,
            sessions_created=self._created,
        )

    def _tally(self, endpoint: str, exc: BaseException | None = None) -> None:
        status = 200
        if isinstance(exc, APIError):
            status = exc.status
        elif isinstance(exc, MalformedResponseError):
            status = exc.status or 200
        elif exc is not None:
            status = 0
        if status == 429:
            self._rate_limited += 1
        self._requests.setdefault(endpoint, Counter())[status] += 1

    def _note_transition(self, provider: Provider, transition: BreakerTransition | None) -> None:
        if transition is None:
            return
        self._breakers[provider.value] = transition.new
        self._transitions.append(transition)
        logger.warning("%s init breaker %s -> %s (%s)", provider.value, transition.old.value,
                       transition.new.value, transition.reason)

    # -- init --------------------------------------------------------------------------------

    async def start(
        self,
        provider: Provider | str,
        *,
        expected_email: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline on the injectable clock
    ) -> PendingConnection:
        """Create a session within the limits and start polling it.

        ``timeout`` (default ``start_timeout``) bounds the whole call: waiting for the rate budget,
        retries, and an open circuit. When the circuit stays open past it, raises
        :class:`CircuitOpenError` at once (``timeout=0`` means "never wait for the circuit"); a
        server block longer than ``max_block_wait`` raises :class:`IPBlockedError`.
        """
        self._require_open()
        chosen = coerce_provider(provider)
        if expected_email is not None and "@" not in str(expected_email):
            raise ConfigurationError("expected_email must be an email address")
        budget = self._start_timeout if timeout is None else float(timeout)
        if not budget >= 0:
            raise ConfigurationError("timeout must be a non-negative number of seconds")
        deadline = self._clock.monotonic() + budget
        with self._clock.deadline(budget) as scope:
            session = await self._init(chosen, deadline)
        if scope.cancelled_caught:
            raise StartTimeoutError(f"no {chosen.value} session within {budget:g} s")
        self._created += 1
        return self._track(session, expected_email, self._clock.monotonic() + self._poll_interval)

    async def _init(self, provider: Provider, deadline: float) -> OAuthSession:
        ws_key, ip_key, breaker_key = self._keys[provider]
        policy = self._breaker_policy
        attempt = 0
        while True:
            admission = await self._store.breaker_admit(breaker_key, policy)
            if not admission.allowed:
                if self._clock.monotonic() + admission.wait > deadline:
                    raise CircuitOpenError(provider.value, admission.wait)
                await self._clock.sleep(admission.wait)
                continue
            if admission.probe and self._breakers[provider.value] is not CircuitState.HALF_OPEN:
                self._note_transition(provider, BreakerTransition(
                    breaker_key, CircuitState.OPEN, CircuitState.HALF_OPEN,
                    self._clock.monotonic(), "cooldown over: one probe"))
            verdict: bool | None = None  # True: success, False: a breaker failure
            retry_after: float | None = None
            delay = 0.0
            try:
                session = await self._send_init(provider, deadline)
                verdict = True
                return session  # noqa: TRY300 - the finally must see the verdict first
            except RateLimitedError as exc:
                # The limiter waits out the block; every manager sharing the store does too.
                wait = exc.retry_after if exc.retry_after is not None else self._init_limit.per
                await self._store.block([ws_key, ip_key], wait)
                logger.warning("%s init got 429; holding inits back %.1f s", provider.value, wait)
                if wait > min(self._max_block_wait, deadline - self._clock.monotonic()):
                    raise _blocked(provider, wait) from None
                attempt += 1
                if attempt >= self._retry.attempts:
                    raise
            except (ServiceUnavailableError, TransportError, ServerError,
                    MalformedResponseError) as exc:
                # 503s and failures to get an answer count against the breaker; other 5xx and a
                # garbled answer don't. A retry after an answer that was lost or garbled leaves
                # the server an orphan session, which costs one init and nothing else.
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
                await self._settle(provider, admission.probe, verdict, retry_after)
            await self._clock.sleep(delay)

    async def _send_init(self, provider: Provider, deadline: float) -> OAuthSession:
        """One init through the limiter (raises IPBlockedError for a block too long to wait)."""
        limiter = self._init_limiters[provider]
        try:
            remaining = deadline - self._clock.monotonic()
            grant = await limiter.acquire(
                max_block=min(self._max_block_wait, remaining), hold=self._init_hold)
        except TooLongError as exc:
            raise _blocked(provider, exc.wait) from None
        self._token_wait += grant.waited
        try:
            session = await self._client.init_oauth(provider)
        except BaseException as exc:
            self._tally("init", exc)
            raise
        finally:
            # The server saw this init at some moment up to now: its slot counts from here.
            await limiter.release(grant)
        self._tally("init")
        return session

    async def _settle(
        self, provider: Provider, probe: bool, verdict: bool | None, retry_after: float | None
    ) -> None:
        """Report an attempt's outcome to the breaker (None: no verdict, free the probe)."""
        key = self._keys[provider][2]
        with anyio.CancelScope(shield=True):
            if verdict is None:
                await self._store.breaker_release(key, probe=probe)
                return
            transition = await self._store.breaker_record(
                key, self._breaker_policy, success=verdict, probe=probe, retry_after=retry_after
            )
        self._note_transition(provider, transition)

    # -- polling -----------------------------------------------------------------------------

    def resume(self, session: OAuthSession, *, expected_email: str | None = None
               ) -> PendingConnection:
        """Poll a session created elsewhere (another process, a previous run).

        A session this manager already polls gives back its existing ``PendingConnection``.
        """
        self._require_open()
        if not isinstance(session, OAuthSession):
            raise ConfigurationError("resume() takes an OAuthSession")
        existing = self._pending.get(session.session_id)
        if existing is not None:
            return existing
        return self._track(session, expected_email, self._clock.monotonic())

    def _track(self, session: OAuthSession, expected_email: str | None, first_poll: float
               ) -> PendingConnection:
        """Register a session and queue its first poll."""
        pending = PendingConnection(session, expected_email, self._finished)
        pending._deadline = self._local_deadline(session.expires_at, session.server_date)
        self._pending[session.session_id] = pending
        self._schedule(pending, first_poll)
        return pending

    def _finished(self, pending: PendingConnection) -> None:
        """Bookkeeping for a session that just ended, however it ended."""
        self._pending.pop(pending.session.session_id, None)
        error = pending._error
        if pending._result is not None:
            self._results[pending._result.status.value] += 1
        elif isinstance(error, SessionCancelledError):
            self._results["cancelled"] += 1
        elif error is not None and not isinstance(error, ClientStateError):
            self._results[type(error).__name__] += 1

    # Polling: no task per pending session. Sessions wait in a heap by when they are next due;
    # one scheduler task takes a status token for the earliest due session (first come, first
    # served with account fetches) and starts a short task for that one read. A session costs
    # its records and a heap entry while it waits, so 10,000 of them are cheap.

    def _schedule(self, pending: PendingConnection, at: float) -> None:
        pending._next_at = at
        self._seq += 1
        heapq.heappush(self._due, (at, self._seq, pending))
        if self._due[0][2] is pending and self._wakeup is not None:
            self._wakeup.set()  # earlier than what the scheduler sleeps towards

    async def _scheduler(self, group: anyio.abc.TaskGroup) -> None:
        while True:
            while self._due and self._due[0][2].done():
                heapq.heappop(self._due)  # cancelled while it waited
            if not self._due:
                await self._sleep_until(math.inf)
                continue
            at, _, pending = self._due[0]
            if at > self._clock.monotonic():
                await self._sleep_until(at)
                continue
            heapq.heappop(self._due)
            grant = await self._status_slot()
            while pending.done() and self._due and self._due[0][0] <= self._clock.monotonic():
                pending = heapq.heappop(self._due)[2]  # cancelled meanwhile: the next one due
            if pending.done():
                await self._status_limiter.release(grant)  # nobody to spend it on
            else:
                group.start_soon(self._step, pending, grant)

    async def _sleep_until(self, at: float) -> None:
        """Until ``at`` or until an earlier session is scheduled, whichever comes first."""
        wakeup = self._wakeup = anyio.Event()
        with self._clock.deadline(max(0.0, at - self._clock.monotonic())
                                  if at < math.inf else 86400.0 * 365):
            await wakeup.wait()

    async def _step(self, pending: PendingConnection, grant: Grant) -> None:
        """One status read for ``pending`` and what follows from it; reschedules or finishes.

        ``grant`` is the read's slot, released as soon as the read has ended, however it ended.
        """
        try:
            with anyio.CancelScope() as scope:
                pending._scope = scope
                if pending._cancel_requested:
                    scope.cancel()
                result = await self._poll_once(pending, grant)
            if scope.cancelled_caught:
                pending._finish(error=SessionCancelledError(
                    f"session {pending.session.session_id} cancelled"))
            elif result is None:
                self._schedule(pending, pending._next_at)
            else:
                pending._finish(result=result)
        except InstantlyError as exc:
            logger.warning("session %s ended with %s", pending.session.session_id,
                           type(exc).__name__)
            pending._finish(error=exc)
        except Exception as exc:  # a bug of ours must reach the awaiter, not kill the group
            logger.exception("unexpected error polling session %s", pending.session.session_id)
            pending._finish(error=exc)
        finally:
            pending._scope = None
            if not pending.done() and self._state == "closed":
                pending._finish(error=ClientStateError("the OAuthManager closed first"))

    def _local_deadline(self, expires_at: datetime, server_date: datetime | None) -> float:
        """When to give up on our own: the server's own lifetime figure, plus the grace."""
        reference = server_date or datetime.now(timezone.utc)
        remaining = (expires_at - reference).total_seconds()
        return self._clock.monotonic() + max(0.0, remaining) + self._expiry_grace

    async def _status_slot(self) -> Grant:
        """A slot of the status share and of the standard budget, held until released."""
        grant = await self._status_limiter.acquire(hold=self._status_hold)
        self._token_wait += grant.waited
        return grant

    async def _read_status(self, pending: PendingConnection, grant: Grant) -> OAuthStatus:
        # pending.cancel() waits for this read: its answer may be one the server gives only once.
        # Closing the manager does not wait: it sends nothing more and abandons what is in flight.
        pending._reading = True
        try:
            status = await self._client.get_oauth_status(
                pending.session.session_id, timeout=self._status_timeout)
        except BaseException as exc:
            self._tally("status", exc)
            raise
        finally:
            pending._reading = False
            # The server saw the read at some moment up to now: its slot counts from here.
            await self._status_limiter.release(grant)
        self._tally("status")
        return status

    async def _poll_once(self, pending: PendingConnection, grant: Grant) -> ConnectResult | None:
        """Read the status once with ``grant``; None: poll again at ``_next_at``."""
        session = pending.session
        now = self._clock.monotonic()
        pending._next_at = now + self._poll_interval
        try:
            status = await self._read_status(pending, grant)
        except NotFoundError:
            return await self._reconcile(pending, "the status read answered 404")
        except RateLimitedError as exc:
            await self._store.block([self._standard_key], exc.retry_after or 1.0)
            pending._next_at = now  # again as soon as the block allows
            return None
        except (TransportError, ServerError, MalformedResponseError) as exc:
            pending._failures += 1
            logger.info("status of %s failed (%s); retrying", session.session_id,
                        type(exc).__name__)
            if (self._clock.monotonic() > pending._deadline
                    and pending._failures >= self._retry.attempts):
                return await self._reconcile(pending, "no answer from the server past expiry")
            pending._next_at = self._clock.monotonic() + min(
                self._poll_interval, self._retry.delay(pending._failures, self._rng))
            return None
        pending._failures = 0
        if status.server_date is not None:
            pending._deadline = self._local_deadline(session.expires_at, status.server_date)
        if status.status is SessionStatus.PENDING:
            if pending._cancel_requested and pending._scope is not None:
                pending._scope.cancel()  # asked while the read was in flight
            if self._clock.monotonic() > pending._deadline:
                return ConnectResult(
                    session, SessionStatus.EXPIRED, error="expired",
                    error_description="still pending well past expires_at",
                    expected_email=pending.expected_email)
            return None
        return await self._conclude(pending, status)

    async def _conclude(self, pending: PendingConnection, status: OAuthStatus) -> ConnectResult:
        fields = {name: getattr(status, name) for name in _RESULT_FIELDS}
        account, account_error = None, None
        wanted = self._fetch_account and not pending._cancel_requested
        if status.status is SessionStatus.SUCCESS and wanted and status.email:
            account, account_error = await self._get_account(status.email)
        return ConnectResult(pending.session, status.status, **fields, account=account,
                             account_error=account_error, expected_email=pending.expected_email)

    async def _get_account(self, email: str) -> tuple[Account | None, str | None]:
        """The account, or why not; retried (a GET of an account is safe to repeat)."""
        error = "not attempted"
        for attempt in range(1, self._retry.attempts + 1):
            try:
                account = await self._read_account(email)
            except RateLimitedError as exc:
                await self._store.block([self._standard_key], exc.retry_after or 1.0)
                error = str(exc)
                continue
            except (TransportError, ServerError, MalformedResponseError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                await self._clock.sleep(self._retry.delay(attempt, self._rng))
                continue
            except InstantlyError as exc:
                return None, f"{type(exc).__name__}: {exc}"
            return account, None
        return None, error

    async def _read_account(self, email: str) -> Account:
        """One account read on a slot of the status share, held until the read has ended."""
        grant = await self._status_slot()
        try:
            account = await self._client.get_account(email)
        except BaseException as exc:
            self._tally("account", exc)
            raise
        finally:
            await self._status_limiter.release(grant)
        self._tally("account")
        return account

    async def _reconcile(self, pending: PendingConnection, why: str) -> ConnectResult:
        """The one-time answer is gone: confirm a success through GET accounts, or say it's lost.

        Never reports ERROR, EXPIRED or PENDING: a lost answer may have been a success.
        """
        session, email = pending.session, pending.expected_email
        if email is None:
            raise OutcomeLostError(
                session.session_id, f"{why}; pass expected_email to let the library reconcile")
        account, account_error = await self._get_account(email)
        if account is None:
            raise OutcomeLostError(
                session.session_id, f"{why}; {email} is not connected ({account_error})")
        # The Date header has whole seconds: an update inside the init's own second may predate
        # the session, so only a later one counts. Erring this way costs a false "lost", never a
        # false success (no person completes OAuth within a second).
        if session.server_date is not None:
            created = session.server_date + timedelta(seconds=1)
        else:
            created = session.expires_at - timedelta(seconds=DOCUMENTED_TTL)
        if account.timestamp_updated < created:
            raise OutcomeLostError(
                session.session_id, f"{why}; {email} was connected before this session, not by it")
        logger.info("session %s reconciled as success through GET accounts", session.session_id)
        return ConnectResult(session, SessionStatus.SUCCESS, email=account.email,
                             name=" ".join(p for p in (account.first_name, account.last_name) if p)
                             or None, account=account, expected_email=email, reconciled=True)

    # -- bulk --------------------------------------------------------------------------------

    async def connect_many(  # noqa: PLR0915 - producer and slots read best side by side
        self,
        provider: Provider | str,
        count: int,
        *,
        on_session: OnSession | None = None,
        expected_emails: Sequence[str] | None = None,
        max_pending: int = 100,
        renew_expired: int = 0,
    ) -> AsyncIterator[ConnectResult]:
        """Create ``count`` sessions and yield their results as they complete.

        Sessions are created one after another, the i-th with ``expected_emails[i]``, and
        ``on_session`` is called with each before the next is created.

        At most ``max_pending`` sessions wait for people at once, so none is created long before
        someone can act on it. ``on_session`` (sync or async) is called with each new session.
        ``renew_expired`` lets each slot replace an expired session with a new one that many
        times (``on_session`` is called again). A lost outcome or a failure to create sessions
        (a long IP block, an open circuit, a bad key) is raised after every result that could
        still be delivered was yielded.
        """
        group = self._require_open()
        chosen = coerce_provider(provider)
        if count < 0 or max_pending < 1 or renew_expired < 0:
            raise ConfigurationError("count >= 0, max_pending >= 1 and renew_expired >= 0")
        emails = list(expected_emails) if expected_emails is not None else None
        if emails is not None and len(emails) != count:
            raise ConfigurationError("expected_emails must hold one address per session")
        send, receive = anyio.create_memory_object_stream[ConnectResult](math.inf)
        errors: list[BaseException] = []
        live: set[PendingConnection] = set()
        slots = anyio.Semaphore(max_pending)
        producer_scope = anyio.CancelScope()

        async def slot(pending: PendingConnection) -> None:
            renewals = renew_expired
            try:
                while True:
                    try:
                        result = await pending.result()
                    except InstantlyError as exc:
                        errors.append(exc)
                        return
                    if result.status is SessionStatus.EXPIRED and renewals > 0:
                        renewals -= 1
                        live.discard(pending)
                        try:
                            email = pending.expected_email
                            pending = await self.start(chosen, expected_email=email)
                            live.add(pending)
                            await _call(on_session, pending.session)
                        except Exception as exc:  # noqa: BLE001 - also the caller's callback
                            errors.append(exc)
                            await send.send(result)
                            return
                        continue
                    await send.send(result)
                    return
            finally:
                live.discard(pending)
                slots.release()

        async def produce() -> None:
            async with send:
                with producer_scope:
                    async with anyio.create_task_group() as slots_group:
                        for index in range(count):
                            await slots.acquire()
                            email = emails[index] if emails is not None else None
                            try:
                                pending = await self.start(chosen, expected_email=email)
                            except InstantlyError as exc:
                                slots.release()
                                errors.append(exc)
                                break
                            live.add(pending)
                            slots_group.start_soon(slot, pending)
                            try:
                                await _call(on_session, pending.session)
                            except Exception as exc:  # noqa: BLE001 - the caller's callback
                                errors.append(exc)
                                break

        group.start_soon(produce)
        try:
            async with receive:
                async for result in receive:
                    yield result
        finally:
            # Stopped early (break, cancellation): stop what this call started, nothing else.
            producer_scope.cancel()
            for pending in live:
                pending.cancel()
        if errors:
            for extra in errors[1:]:
                logger.warning("connect_many: also %s: %s", type(extra).__name__, extra)
            raise errors[0]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _blocked(provider: Provider, seconds: float) -> IPBlockedError:
    until = datetime.now(timezone.utc) + timedelta(seconds=seconds)
    return IPBlockedError(provider.value, until, seconds)


async def _call(callback: OnSession | None, session: OAuthSession) -> None:
    if callback is None:
        return
    outcome = callback(session)
    if inspect.isawaitable(outcome):
        await outcome
