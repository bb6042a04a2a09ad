"""``OAuthManager``, the public face: it checks its arguments, wires the stages together, and
owns their lifetime. A request's life, one module per stage::

    start(provider) ─▶ _admission (breaker, init limits, standard budget) ─▶ OAuthSession
                    ─▶ _polling (one scheduler, leased status reads)      ─▶ PendingConnection
                    ─▶ _outcome (account fetch, lost answers reconciled)  ─▶ ConnectResult
    connect_many    ─▶ _bulk (bounded pending, renewals) over start()
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import anyio
import anyio.abc
from yarl import URL

from .._limits.breaker import BreakerPolicy
from .._limits.clock import Clock
from .._observe.events import Hook
from .._observe.stats import ManagerStats
from .._stores.store import Store
from .._wire.client import DEFAULT_BASE_URL, InstantlyClient
from .._wire.convert import coerce_provider
from .._wire.exceptions import (
    ConfigurationError,
)
from .._wire.models import OAuthSession, Provider, RateLimit, RetryPolicy
from . import bulk as _bulk
from . import config as _config
from . import parts as _parts
from .budget import DEFAULT_STANDARD_LIMIT, DEFAULT_STATUS_LIMIT, Budget
from .lifetime import Lifetime
from .outcome import ConnectResult
from .polling import PendingConnection

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
            own, closed with it). The status reads of all managers on it take at most 9/10 of
            its pool (100 if unlimited), the rest left for its other requests.
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
        parts = _parts.build(
            api_key, base_url=base_url, init_limit=init_limit, ip_init_limit=ip_init_limit,
            standard_limit=standard_limit, status_limit=status_limit, workspace=workspace,
            poll_interval=poll_interval, store=store, clock=clock, breaker=breaker, retry=retry,
            fetch_account=fetch_account, max_block_wait=max_block_wait,
            start_timeout=start_timeout, expiry_grace=expiry_grace,
            request_timeout=request_timeout, status_timeout=status_timeout,
            session_lease=session_lease, retention=retention, session=session, seed=seed,
            hooks=hooks)
        self._client, self._clock, self._store = parts.client, parts.clock, parts.store
        self._tally, self._admission, self._reads = parts.tally, parts.admission, parts.reads
        self._fleet, self._poller, self._budget = parts.fleet, parts.poller, parts.budget
        self._start_timeout = parts.start_timeout
        self._life = Lifetime(parts)

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
        api_key, options, owned = _config.configured(environ, overrides)
        manager = cls(api_key, **options)
        manager._owned_store = owned  # the manager's own: aclose() closes it
        return manager

    def __repr__(self) -> str:
        return (f"<OAuthManager base_url={self._client.base_url!r} state={self._life.state} "
                f"pending={len(self._poller.pending)}>")

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> OAuthManager:
        await self._life.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel every poll, wait for the tasks to end, close the HTTP session.

        Idempotent, and safe from any task: a second caller waits for the first to finish.
        Cancelling the caller does not interrupt the closing.
        """
        await self._life.close(self._owned_store)

    def __del__(self, _warn: Any = warnings.warn) -> None:
        life = getattr(self, "_life", None)
        if life is not None and life.state == "opened":
            _warn(f"unclosed {self!r}; use 'async with' or aclose()", ResourceWarning,
                  stacklevel=1)

    def _require_open(self) -> anyio.abc.TaskGroup:
        return self._life.require_open()

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
        session = await self._admission[chosen].create(budget)
        self._tally.created += 1
        return await self._poller.take_new(session, expected_email,
                                           closed=lambda: self._life.state == "closed")

    def resume(self, session: OAuthSession, *, expected_email: str | None = None
               ) -> PendingConnection:
        """Poll a session created elsewhere (another process, a previous run).

        A session this manager already polls gives back its existing ``PendingConnection``.
        """
        self._require_open()
        if not isinstance(session, OAuthSession):
            raise ConfigurationError("resume() takes an OAuthSession")
        return self._poller.resume(session, expected_email)

    async def attach(self, session_id: str) -> PendingConnection:
        """A handle on a session started by any manager sharing this store and workspace.

        Awaiting it gives the same outcome as every other awaiter; it spends no API budget (it
        waits on the registry). Raises :class:`UnknownSessionError` for an id the registry does
        not know.
        """
        self._require_open()
        return await self._poller.attach(session_id)

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

