"""``OAuthManager``, the public face: it checks its arguments, wires the stages together, and
owns their lifetime. A request's life, one module per stage::

    start(provider) ─▶ _admission (breaker, init limits, standard budget) ─▶ OAuthSession
                    ─▶ _polling (one scheduler, leased status reads)      ─▶ PendingConnection
                    ─▶ _outcome (account fetch, lost answers reconciled)  ─▶ ConnectResult
    connect_many    ─▶ _bulk (bounded pending, renewals) over start()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import secrets
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import anyio
import anyio.abc
from yarl import URL

from . import _bulk, _config
from ._admission import Admission
from ._breaker import BreakerPolicy
from ._budget import DEFAULT_STANDARD_LIMIT, DEFAULT_STATUS_LIMIT, Budget, limits_of
from ._client import DEFAULT_BASE_URL, InstantlyClient
from ._clock import Clock, SystemClock
from ._convert import coerce_provider
from ._events import Hook, Hooks
from ._exceptions import (
    CircuitOpenError,
    ClientStateError,
    ConfigurationError,
    InstantlyError,
    IPBlockedError,
    StartTimeoutError,
)
from ._fleet import Fleet, UnknownSessionError, decode_session
from ._guard import Guard
from ._limiter import FairLimiter
from ._models import OAuthSession, Provider, RateLimit, RetryPolicy
from ._outcome import ConnectResult, Outcomes
from ._polling import PendingConnection, Poller
from ._reads import Reads
from ._stats import ManagerStats, Tally
from ._store import MemoryStore, Store, default_store

__all__ = ["OAuthManager"]

_M = TypeVar("_M", bound="OAuthManager")


class OAuthManager:
    """Connects mailboxes: creates sessions within the init limits and polls them to the end.

    Use as ``async with OAuthManager(api_key) as manager:``; leaving the block cancels every poll,
    sends nothing more and closes the HTTP session. Keyword arguments default to the documented
    limits; the site's "What the manager guarantees" and docs/LIMITS.md say what each one
    promises. :meth:`from_env` builds one from ``INSTANTLY_*`` environment variables. Times are
    in seconds; a ``RateLimit(count, per=seconds)`` is ``count`` requests in any ``per``-second
    window (``margin`` seconds more before a slot comes back, default ``per / 200``).

    Args:
        api_key: the workspace's API key (required). Never shown in a repr, a log or an error.
        base_url: the API root (default ``'https://api.instantly.ai'``); plain ``http://`` only
            for a loopback host.
        init_limit: each provider's init budget per workspace (default
            ``RateLimit(75, per=60)``: 75 inits per 60 s).
        ip_init_limit: each provider's init budget per IP, shared by every manager of the
            process (default ``RateLimit(150, per=60)``: 150 inits per 60 s).
        standard_limit: the workspace's standard budget, which every request spends from
            (default ``DEFAULT_STANDARD_LIMIT``: ``(RateLimit(100, per=1), RateLimit(6000,
            per=60))``, 100 requests per second and 6,000 per minute).
        status_limit: the share of the standard budget status and account reads may use
            (default ``DEFAULT_STATUS_LIMIT``: ``(RateLimit(50, per=1), RateLimit(3000,
            per=60))``, half); equal to ``standard_limit`` lets polling use everything inits
            leave.
        workspace: the name budgets and sessions are shared under (default None: derived from
            the API key); give every key of one workspace the same name.
        poll_interval: a session is read at most once per this many seconds (default 5.0).
        store: where budgets, blocks, breakers and the session registry live (default None:
            the process's in-process ``MemoryStore``; a ``SQLiteStore`` or ``RedisStore`` to
            share them across processes). A store given stays the caller's to close.
        clock: the clock every wait and deadline reads (default None: the store's clock, else
            the system's monotonic clock); a ``FakeClock`` in tests.
        breaker: the per-provider init circuit breaker (default ``BreakerPolicy()``: opens
            after 3 failures in a row, for 5.0 s at first, at most 300.0 s; a probe replaced
            after 60.0 s).
        retry: how inits that got no answer, 503s, and failed status and account reads are
            retried (default ``RetryPolicy()``: 5 attempts, base 0.5 s, cap 30.0 s).
        fetch_account: on SUCCESS, read the mailbox's ``Account`` with one
            ``GET /api/v2/accounts/{email}`` (on the status share of the budget, retried under
            ``retry``) into ``ConnectResult.account`` (default True); a failed read leaves
            ``account`` None and says why in ``account_error``, never turning the success into
            a failure. False sends no account read for a success (``account`` stays None); a
            lost answer is still reconciled through GET accounts when ``expected_email`` was
            given.
        max_block_wait: seconds (default 120.0): a server block (a 429's ``Retry-After``)
            longer than this makes ``start()`` raise ``IPBlockedError`` at once.
        start_timeout: seconds (default 600.0): ``start()``'s deadline when it is given no
            ``timeout``.
        expiry_grace: seconds (default 60.0) past a session's lifetime, as the server's
            ``Date`` measures it, before the manager gives up on it on its own.
        request_timeout: seconds (default 30.0) an init or any other request may take.
        status_timeout: seconds (default 5.0) a status read may take; under half of
            ``session_lease``.
        session_lease: seconds (default 15.0) a manager's hold on the sessions it polls lasts
            without a heartbeat; another manager of the store adopts them after it.
        retention: seconds (default 86400.0, 24 h) a decided outcome stays readable by
            ``attach()``.
        session: an ``aiohttp.ClientSession`` to send through (default None: the manager's
            own, closed with it).
        seed: seeds the random jitter of retries and backoff (default None: fresh randomness),
            so a test can replay the same delays. It makes nothing else deterministic (no
            session ids, no timing) and is no security setting.
        hooks: callables of one event each (default ``()``: none), called inline for every
            ``RequestFinished``, ``BudgetWaited``, ``InitDenied``, ``BreakerChanged``,
            ``SessionStarted`` and ``SessionResolved``; a coroutine function is refused.

    Raises:
        ConfigurationError: for a bad argument (a time that is not a positive number of
            seconds, ``status_timeout`` not under half of ``session_lease``, an empty
            ``workspace``, a limit that is not a ``RateLimit``, a plain-http base URL off
            loopback).
    """

    #: A store :meth:`from_env` built: the manager's own, closed by :meth:`aclose`.
    _owned_store: Store | None = None

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
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, safe to share
        fetch_account: bool = True,
        max_block_wait: float = 120.0,
        start_timeout: float = 600.0,
        expiry_grace: float = 60.0,
        request_timeout: float = 30.0,
        status_timeout: float = 5.0,
        session_lease: float = 15.0,
        retention: float = 86400.0,
        session: aiohttp.ClientSession | None = None,
        seed: int | None = None,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self._client = InstantlyClient(
            api_key, base_url=base_url, session=session, timeout=request_timeout
        )
        for name, value in (("poll_interval", poll_interval), ("max_block_wait", max_block_wait),
                            ("start_timeout", start_timeout), ("status_timeout", status_timeout)):
            if not _positive(value):
                raise ConfigurationError(f"{name} must be a positive number of seconds")
        if not (_positive(session_lease) and _positive(retention)):
            raise ConfigurationError("session_lease and retention must be positive seconds")
        if _positive(status_timeout) and not status_timeout < session_lease / 2:
            raise ConfigurationError(
                "status_timeout must be under half of session_lease: a read starts only while "
                "its poller's lease has more time left than the read can take")
        if not 0 <= expiry_grace < math.inf:
            raise ConfigurationError("expiry_grace must be a non-negative number of seconds")
        limits = limits_of("status_limit", status_limit)
        standard = limits_of("standard_limit", standard_limit)
        if workspace is not None and not str(workspace).strip():
            raise ConfigurationError("workspace must be a non-empty string")
        for name, limit in (("init_limit", init_limit), ("ip_init_limit", ip_init_limit)):
            if not isinstance(limit, RateLimit):
                raise ConfigurationError(f"{name} must be a RateLimit")
        # A store's own clock when none is given (a MemoryStore or SQLiteStore on a FakeClock).
        self._clock: Clock = clock or getattr(store, "clock", None) or SystemClock()
        if store is None:
            store = default_store() if clock is None else MemoryStore(self._clock)
        self._store = store
        self._start_timeout = float(start_timeout)
        rng = random.Random(seed)  # noqa: S311 - backoff jitter, not security
        url = URL(self._client.base_url)
        self._tally = Tally(Hooks(hooks), server=(url.host or "", url.port or 0))

        # Keys: budgets belong to the workspace, shared by all its keys (by default one key is
        # taken for one workspace; ``workspace=`` names it when several share one). A 429 for
        # the standard limit holds back every request of the workspace: the standard key.
        # Every budget, block and breaker key of one API server shares one hash tag, so each
        # script touches one Redis Cluster slot (an init takes the workspace's and the IP's keys
        # at once, and the IP's are shared by every workspace sending from this host).
        server = f"{url.host}:{url.port}"
        namespace = f"iox:{{{server}}}"
        name = api_key.strip() if workspace is None else f"workspace:{workspace.strip()}"
        ws_id = hashlib.sha256(name.encode()).hexdigest()[:16]
        standard_key = f"{namespace}:std:ws:{ws_id}"
        standard_specs = [(f"{standard_key}:{i}", limit) for i, limit in enumerate(standard)]
        status_specs = [(f"{namespace}:status:ws:{ws_id}:{i}", lim) for i, lim in enumerate(limits)]
        lease_prefix = f"{secrets.token_hex(6)}:"  # leases of this manager, unique in a fleet
        # An in-process store shared by nobody else: warn if another process of the host uses
        # the workspace on one of its own (each would spend the whole budget).
        self._guard = Guard(ws_id) if isinstance(store, MemoryStore) else None

        def limiter(specs: list[tuple[str, RateLimit]], blocks: list[str],
                    gate: tuple[str, BreakerPolicy] | None = None) -> FairLimiter:
            return FairLimiter(store, specs, blocks, self._clock, prefix=lease_prefix, gate=gate)

        # A lease a crashed holder never released frees its slots after its hold.
        init_hold = float(request_timeout) + 5.0
        self._admission: dict[Provider, Admission] = {}
        for p in Provider:
            ws_key = f"{namespace}:init:{p.value}:ws:{ws_id}"
            ip_key = f"{namespace}:init:{p.value}:ip"
            breaker_key = f"{namespace}:breaker:{p.value}"
            self._admission[p] = Admission(
                p, self._client, store,
                limiter([(ws_key, init_limit), (ip_key, ip_init_limit), *standard_specs],
                        [ws_key, ip_key, standard_key], gate=(breaker_key, breaker)),
                block_keys=(ws_key, ip_key), breaker_key=breaker_key,
                breaker=breaker, window=init_limit.per, hold=init_hold,
                max_block_wait=float(max_block_wait), retry=retry, rng=rng, clock=self._clock,
                tally=self._tally)
        self._reads = Reads(
            self._client, store, limiter([*status_specs, *standard_specs], [standard_key]),
            standard_key, self._tally,
            hold=max(float(request_timeout), float(status_timeout)) + 5.0,
            status_timeout=float(status_timeout))
        registry = getattr(store, "registry", None)
        # The registry's namespace names the budgets' hash tag: one slot, and shared trips.
        self._fleet = None if registry is None else Fleet(
            registry, f"{{{server}}}:{ws_id}", lease_prefix.rstrip(":"),
            lease=float(session_lease), retention=float(retention),
            # Renewed every third of a lease, a lease keeps over 2/3 of it; a read needs its
            # timeout and a tenth of a lease to spare (under 0.6 of it, as checked above).
            read_margin=float(status_timeout) + float(session_lease) / 10)
        self._poller = Poller(
            self._reads, Outcomes(self._reads, self._clock, retry, rng,
                                  fetch_account=fetch_account,
                                  account_wait=2 * float(request_timeout)),
            self._clock, self._tally, retry=retry, rng=rng,
            poll_interval=float(poll_interval), expiry_grace=float(expiry_grace),
            fleet=self._fleet, close_fetch_wait=float(status_timeout))
        # How long aclose() waits for steps under way: a status read's timeout and the account
        # read's bound at close, and the outcome's write (a tenth of a lease, as a read has).
        self._close_wait = 2 * float(status_timeout) + float(session_lease) / 10 + 2.0
        self._budget = Budget(limiter(standard_specs, [standard_key]), hold=init_hold,
                              tally=self._tally)
        self._group: anyio.abc.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._stop: anyio.Event | None = None  # made with the loop, in __aenter__
        self._closed: anyio.Event | None = None
        self._state = "unopened"

    @classmethod
    def from_env(cls: type[_M], environ: Mapping[str, str] | None = None, **overrides: Any
                 ) -> _M:
        """A manager configured from the environment (``environ``, default ``os.environ``).

        ``INSTANTLY_API_KEY`` (required), ``INSTANTLY_BASE_URL``, ``INSTANTLY_WORKSPACE`` and
        ``INSTANTLY_STORE`` (``memory``, ``redis://...``, ``rediss://...``, ``sqlite:///PATH`` or
        a file path); ``overrides`` are keyword arguments of the constructor (and ``api_key``),
        each winning over its variable. A store built from ``INSTANTLY_STORE`` is closed by
        :meth:`aclose`; a ``store=`` passed in stays the caller's. A missing or malformed
        variable raises :class:`EnvironmentVariableError` naming it. The site's
        "Configuration" reference page (docs/reference/configuration.md) has the details.
        """
        return _config.manager_from_env(cls, environ, overrides)

    def __repr__(self) -> str:
        return (
            f"<OAuthManager base_url={self._client.base_url!r} state={self._state} "
            f"pending={len(self._poller.pending)}>"
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> OAuthManager:
        if self._state != "unopened":
            raise ClientStateError("an OAuthManager can be entered only once")
        self._state = "opening"
        await self._client.__aenter__()
        if self._guard is not None:
            self._guard.enter()
        # The manager's tasks live in a task of their own, not in the caller's: so any task may
        # close it, and closing never cancels the code that called aclose().
        ready, self._stop, self._closed = anyio.Event(), anyio.Event(), anyio.Event()
        self._host = asyncio.get_running_loop().create_task(self._run(ready))
        await ready.wait()
        self._state = "opened"
        return self

    async def _run(self, ready: anyio.Event) -> None:
        assert self._stop is not None  # noqa: S101 - made before this task
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._poller.run, group)
            ready.set()
            await self._stop.wait()
            group.cancel_scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel every poll, wait for the tasks to end, close the HTTP session.

        Idempotent, and safe from any task: a second caller waits for the first to finish.
        Cancelling the caller does not interrupt the closing.
        """
        if self._state == "closed":
            if self._closed is not None:
                with anyio.CancelScope(shield=True):
                    await self._closed.wait()
            return
        self._state = "closed"
        # No read starts from now on. Sessions in a step (a status read on the wire, or the
        # account read after a one-time answer) end it: their answers are stored before their
        # leases go. An account read gets at most status_timeout more (the success is then
        # stored without its account); real time bounds the whole wait.
        self._poller.closing()
        busy = self._poller.busy()
        if self._fleet is not None:  # others adopt at once, not one lease later
            with anyio.CancelScope(shield=True), self._clock.deadline(2.0), \
                    contextlib.suppress(InstantlyError):  # else the leases lapse by themselves
                await self._fleet.release_all(busy=busy)
        if busy:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._close_wait), \
                    contextlib.suppress(InstantlyError):
                await self._poller.settle(busy)
        if self._fleet is not None and self._fleet.holding():
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0), \
                    contextlib.suppress(InstantlyError):
                await self._fleet.release_held()
        self._group = None
        try:
            with anyio.CancelScope(shield=True):
                if self._host is not None and self._stop is not None:
                    self._stop.set()
                    await asyncio.shield(self._host)
        finally:
            if self._guard is not None:
                self._guard.exit()
            self._poller.abandon_all()
            with anyio.CancelScope(shield=True):
                await self._client.aclose()
                if self._owned_store is not None:  # built by from_env(): no one else has it
                    await self._owned_store.aclose()
            if self._closed is not None:
                self._closed.set()

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

    @property
    def store(self) -> Store:
        """Where this manager keeps its budgets, blocks, breakers and sessions (the one given as
        ``store=``, or the default in-process store); ``manager.store.claims`` is the connect
        guard that ``instantly_oauth_async.web`` keeps there."""
        return self._store

    def stats(self) -> ManagerStats:
        """A snapshot of what this manager did: requests by endpoint and status, 429s, breaker
        states and transitions, pending sessions, time spent waiting for budget.

        Returns:
            A new :class:`ManagerStats`; later activity does not change it.
        """
        return self._tally.snapshot(pending=len(self._poller.pending))

    # -- the stages --------------------------------------------------------------------------

    async def start(
        self,
        provider: Provider | str,
        *,
        expected_email: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline on the injectable clock
    ) -> PendingConnection:
        """Create a session within the limits and start polling it.

        ``timeout`` (default ``start_timeout``) bounds the whole call: waiting for the rate budget,
        an ordinary 429's ``Retry-After``, retries, and an open circuit; past it, raises
        :class:`StartTimeoutError` (or :class:`CircuitOpenError` at once when the circuit stays
        open past it). ``timeout=0`` never waits: the init is sent at once if the circuit is
        closed and a slot of every budget is free (the request then runs to its own
        ``request_timeout``), else this raises at once. A server block (a 429 asking for more than
        one init window) longer than ``max_block_wait`` or than the time left raises
        :class:`IPBlockedError`.
        """
        self._require_open()
        chosen = coerce_provider(provider)
        if expected_email is not None and "@" not in str(expected_email):
            raise ConfigurationError("expected_email must be an email address")
        budget = self._start_timeout if timeout is None else float(timeout)
        if not budget >= 0:
            raise ConfigurationError("timeout must be a non-negative number of seconds")
        deadline = self._clock.monotonic() + budget
        try:
            session = await self._init(chosen, budget, deadline)
        except CircuitOpenError:
            self._tally.denied(chosen, "breaker_open")
            raise
        except IPBlockedError:
            self._tally.denied(chosen, "blocked")
            raise
        except StartTimeoutError:
            self._tally.denied(chosen, "budget" if budget == 0 else "deadline")
            raise
        self._tally.created += 1
        if self._fleet is not None:  # known to the fleet before the caller sees it
            await self._fleet.register(session, expected_email)
        if self._state == "closed":  # closed while the init or its registration was under way
            sid = session.session_id
            if self._fleet is None:
                raise ClientStateError(
                    f"the OAuthManager closed while start() created session {sid}; nobody "
                    "polls it: resume() it on another manager")
            await self._fleet.hand_over(sid, 0.0)
            raise ClientStateError(
                f"the OAuthManager closed while start() registered session {sid}; it was "
                f"handed over to the fleet: attach('{sid}') from another manager")
        first_poll = self._clock.monotonic() + self._poller.poll_interval
        return self._poller.track(session, expected_email, first_poll)

    async def _init(self, provider: Provider, budget: float, deadline: float) -> OAuthSession:
        if budget == 0:
            return await self._admission[provider].init(deadline, wait=False)
        with self._clock.deadline(budget):
            return await self._admission[provider].init(deadline)
        raise StartTimeoutError(f"no {provider.value} session within {budget:g} s")

    def resume(self, session: OAuthSession, *, expected_email: str | None = None
               ) -> PendingConnection:
        """Poll a session created elsewhere (another process, a previous run).

        A session this manager already polls gives back its existing ``PendingConnection``.
        """
        self._require_open()
        if not isinstance(session, OAuthSession):
            raise ConfigurationError("resume() takes an OAuthSession")
        existing = self._poller.pending.get(session.session_id)
        if existing is not None:
            return existing
        return self._poller.track(session, expected_email, self._clock.monotonic(), resumed=True)

    async def attach(self, session_id: str) -> PendingConnection:
        """A handle on a session started by any manager sharing this store and workspace.

        Awaiting it gives the same outcome as every other awaiter; it spends no API budget (it
        waits on the registry). Raises :class:`UnknownSessionError` for an id the registry does
        not know.
        """
        self._require_open()
        existing = self._poller.pending.get(session_id)
        if existing is not None:
            return existing
        if self._fleet is None:
            raise ConfigurationError("attach() needs a store with a session registry")
        entry = await self._fleet.registry.get(self._fleet.ns, str(session_id))
        if entry is None:
            raise UnknownSessionError(str(session_id))
        session, expected_email = decode_session(entry.data)
        pending = PendingConnection(session, expected_email, clock=self._clock)
        self._poller.watch(pending)
        return pending

    def connect_many(
        self,
        provider: Provider | str,
        count: int,
        *,
        on_session: _bulk.OnSession | None = None,
        expected_emails: Sequence[str] | None = None,
        max_pending: int = 100,
        renew_expired: int = 0,
        on_session_for: _bulk.OnSessionFor | None = None,
    ) -> AsyncIterator[ConnectResult]:
        """Create ``count`` sessions and yield their results as they complete.

        Sessions are created one after another, the i-th with ``expected_emails[i]``, and the
        callback is called with each before the next is created. At most ``max_pending``
        sessions wait for people at once, so none is created long before someone can act on it.

        Args:
            provider: ``Provider`` or its name.
            count: how many sessions (people); 0 or more.
            on_session: called (sync or async) with each new ``OAuthSession``.
            on_session_for: instead of ``on_session``, called (sync or async) with a
                :class:`SessionFor`: the session, the ``index`` of the person it is for (in
                ``expected_emails``, else in creation order), their ``expected_email`` and
                the ``renewal`` number. Send each person their link from it: a renewal may
                come later than the sessions of the people after it.
            expected_emails: one address per session (``len == count``), each the
                ``expected_email`` of its session (see ``start()``).
            max_pending: at most this many sessions pending at once; 1 or more.
            renew_expired: how many times each person's session may be replaced by a new one
                when it ends EXPIRED (default 0: never). A renewed person's expired result is
                not yielded; their new session goes to the callback (same index, next
                ``renewal``) and its result is yielded instead. Each renewal is one more init.

        Yields:
            One ``ConnectResult`` per person, in the order the sessions end.

        Raises:
            ConfigurationError: a bad argument, or both callbacks given.
            ClientStateError: the manager closed before every session had a result.
            InstantlyError: a lost outcome (``OutcomeLostError``) or a failure to create a
                session (a long IP block, an open circuit, a bad key).
            Exception: whatever the callback raised (no session is created after it).

        Those last two are raised after every result that could still be delivered was
        yielded; when several happened, the first is raised and the others are logged.
        """
        return _bulk.connect_many(
            self.start, self._require_open, provider, count, on_session=on_session,
            on_session_for=on_session_for, expected_emails=expected_emails,
            max_pending=max_pending, renew_expired=renew_expired)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf
