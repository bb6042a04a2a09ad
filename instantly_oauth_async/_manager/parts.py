"""What a manager is made of: its arguments checked, the keys its budgets live under, and its
stages built and wired together (``OAuthManager.__init__`` hands its arguments here).

Keys: budgets belong to the workspace, shared by all its API keys (by default one key is taken
for one workspace; ``workspace=`` names it when several share one). A 429 for the standard
limit holds back every request of the workspace: the standard key. Every budget, block and
breaker key of one API server shares one hash tag, so each script touches one Redis Cluster
slot (an init takes the workspace's and the IP's keys at once, and the IP's are shared by every
workspace sending from this host).
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
from collections.abc import Iterable, Sequence

import aiohttp
import attrs
from yarl import URL

from .._limits.breaker import BreakerPolicy
from .._limits.clock import Clock, SystemClock
from .._limits.limiter import FairLimiter
from .._observe.events import Hook, Hooks
from .._observe.stats import Tally
from .._stores.guard import Guard
from .._stores.store import MemoryStore, Store, default_store
from .._wire.client import InstantlyClient
from .._wire.exceptions import ConfigurationError
from .._wire.models import Provider, RateLimit, RetryPolicy
from .admission import Admission
from .budget import Budget, limits_of
from .fleet import Fleet
from .outcome import Outcomes
from .polling import Poller
from .reads import Reads

__all__ = ["Parts", "build"]


@attrs.frozen
class Parts:
    """A manager's stages, wired."""

    client: InstantlyClient
    clock: Clock
    store: Store
    tally: Tally
    guard: Guard | None  # an in-process store: warns if another process uses the workspace
    admission: dict[Provider, Admission]
    reads: Reads
    fleet: Fleet | None  # None for a store without a session registry
    poller: Poller
    budget: Budget
    start_timeout: float
    #: How long aclose() waits for steps under way: a status read's timeout and the account
    #: read's bound at close, and the outcome's write (a tenth of a lease, as a read has).
    close_wait: float


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _check(*, poll_interval: float, max_block_wait: float, start_timeout: float,
           status_timeout: float, session_lease: float, retention: float, expiry_grace: float,
           workspace: str | None, init_limit: RateLimit, ip_init_limit: RateLimit) -> None:
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
    if workspace is not None and not str(workspace).strip():
        raise ConfigurationError("workspace must be a non-empty string")
    for name, limit in (("init_limit", init_limit), ("ip_init_limit", ip_init_limit)):
        if not isinstance(limit, RateLimit):
            raise ConfigurationError(f"{name} must be a RateLimit")


def build(
    api_key: str, *, base_url: str | URL, init_limit: RateLimit, ip_init_limit: RateLimit,
    standard_limit: RateLimit | Sequence[RateLimit], status_limit: RateLimit | Sequence[RateLimit],
    workspace: str | None, poll_interval: float, store: Store | None, clock: Clock | None,
    breaker: BreakerPolicy, retry: RetryPolicy, fetch_account: bool, max_block_wait: float,
    start_timeout: float, expiry_grace: float, request_timeout: float, status_timeout: float,
    session_lease: float, retention: float, session: aiohttp.ClientSession | None,
    seed: int | None, hooks: Iterable[Hook],
) -> Parts:
    """The stages of a manager made with these arguments (see ``OAuthManager``); raises
    ``ConfigurationError`` for a bad one."""
    client = InstantlyClient(api_key, base_url=base_url, session=session, timeout=request_timeout)
    _check(poll_interval=poll_interval, max_block_wait=max_block_wait,
           start_timeout=start_timeout, status_timeout=status_timeout,
           session_lease=session_lease, retention=retention, expiry_grace=expiry_grace,
           workspace=workspace, init_limit=init_limit, ip_init_limit=ip_init_limit)
    limits = limits_of("status_limit", status_limit)
    standard = limits_of("standard_limit", standard_limit)
    # A store's own clock when none is given (a MemoryStore or SQLiteStore on a FakeClock).
    the_clock: Clock = clock or getattr(store, "clock", None) or SystemClock()
    if store is None:
        store = default_store() if clock is None else MemoryStore(the_clock)
    rng = random.Random(seed)  # noqa: S311 - backoff jitter, not security
    url = URL(client.base_url)
    tally = Tally(Hooks(hooks), server=(url.host or "", url.port or 0))

    server = f"{url.host}:{url.port}"
    namespace = f"iox:{{{server}}}"
    name = api_key.strip() if workspace is None else f"workspace:{workspace.strip()}"
    ws_id = hashlib.sha256(name.encode()).hexdigest()[:16]
    standard_key = f"{namespace}:std:ws:{ws_id}"
    standard_specs = [(f"{standard_key}:{i}", limit) for i, limit in enumerate(standard)]
    status_specs = [(f"{namespace}:status:ws:{ws_id}:{i}", lim) for i, lim in enumerate(limits)]
    lease_prefix = f"{secrets.token_hex(6)}:"  # leases of this manager, unique in a fleet
    shared = store

    def limiter(specs: list[tuple[str, RateLimit]], blocks: list[str],
                gate: tuple[str, BreakerPolicy] | None = None) -> FairLimiter:
        return FairLimiter(shared, specs, blocks, the_clock, prefix=lease_prefix, gate=gate,
                           immediate=isinstance(shared, MemoryStore))

    # A lease a crashed holder never released frees its slots after its hold.
    init_hold = float(request_timeout) + 5.0
    admission: dict[Provider, Admission] = {}
    for p in Provider:
        ws_key = f"{namespace}:init:{p.value}:ws:{ws_id}"
        ip_key = f"{namespace}:init:{p.value}:ip"
        breaker_key = f"{namespace}:breaker:{p.value}"
        admission[p] = Admission(
            p, client, store,
            limiter([(ws_key, init_limit), (ip_key, ip_init_limit), *standard_specs],
                    [ws_key, ip_key, standard_key], gate=(breaker_key, breaker)),
            block_keys=(ws_key, ip_key), breaker_key=breaker_key,
            breaker=breaker, window=init_limit.per, hold=init_hold,
            max_block_wait=float(max_block_wait), retry=retry, rng=rng, clock=the_clock,
            tally=tally)
    reads = Reads(
        client, store, limiter([*status_specs, *standard_specs], [standard_key]),
        standard_key, tally,
        hold=max(float(request_timeout), float(status_timeout)) + 5.0,
        status_timeout=float(status_timeout))
    registry = getattr(store, "registry", None)
    # The registry's namespace names the budgets' hash tag: one slot, and shared trips.
    fleet = None if registry is None else Fleet(
        registry, f"{{{server}}}:{ws_id}", lease_prefix.rstrip(":"),
        lease=float(session_lease), retention=float(retention),
        # Renewed every third of a lease, a lease keeps over 2/3 of it; a read needs its
        # timeout and a tenth of a lease to spare (under 0.6 of it, as checked above).
        read_margin=float(status_timeout) + float(session_lease) / 10, clock=the_clock)
    poller = Poller(
        reads, Outcomes(reads, the_clock, retry, rng, fetch_account=fetch_account,
                        account_wait=2 * float(request_timeout)),
        the_clock, tally, retry=retry, rng=rng,
        poll_interval=float(poll_interval), expiry_grace=float(expiry_grace),
        fleet=fleet, close_fetch_wait=float(status_timeout))
    return Parts(
        client=client, clock=the_clock, store=store, tally=tally,
        guard=Guard(ws_id) if isinstance(store, MemoryStore) else None,
        admission=admission, reads=reads, fleet=fleet, poller=poller,
        budget=Budget(limiter(standard_specs, [standard_key]), hold=init_hold, tally=tally),
        start_timeout=float(start_timeout),
        close_wait=2 * float(status_timeout) + float(session_lease) / 10 + 2.0)
