"""asyncio-native client for connecting Google Workspace and Microsoft mailboxes to Instantly."""

import logging as _logging

from ._limits.breaker import BreakerPolicy, BreakerTransition, CircuitState
from ._limits.clock import Clock, SystemClock
from ._manager.budget import DEFAULT_STANDARD_LIMIT, DEFAULT_STATUS_LIMIT, Budget
from ._manager.bulk import SessionFor
from ._manager.fleet import UnknownSessionError
from ._manager.manager import OAuthManager
from ._manager.outcome import ConnectResult, OutcomeLostError
from ._manager.polling import PendingConnection
from ._observe.events import (
    BreakerChanged,
    BudgetWaited,
    Event,
    Hook,
    InitDenied,
    RequestFinished,
    SessionResolved,
    SessionStarted,
)
from ._observe.stats import ManagerStats
from ._stores.store import MemoryStore, Store, StoreError
from ._wire.client import InstantlyClient, __version__
from ._wire.exceptions import (
    APIError,
    BadRequestError,
    CircuitOpenError,
    ClientStateError,
    ConfigurationError,
    EnvironmentVariableError,
    ForbiddenError,
    InstantlyError,
    IPBlockedError,
    MalformedResponseError,
    NotFoundError,
    PaymentRequiredError,
    RateLimitedError,
    RequestTimeoutError,
    ResponseTooLargeError,
    ServerError,
    ServiceUnavailableError,
    SessionCancelledError,
    StartTimeoutError,
    TransportError,
    UnauthorizedError,
)
from ._wire.models import (
    Account,
    AccountStatus,
    OAuthSession,
    OAuthStatus,
    Provider,
    ProviderCode,
    RateLimit,
    RetryPolicy,
    SessionStatus,
    StatusMessage,
    Warmup,
    WarmupAdvanced,
    WarmupStatus,
)

__all__ = [
    "DEFAULT_STANDARD_LIMIT",
    "DEFAULT_STATUS_LIMIT",
    "APIError",
    "Account",
    "AccountStatus",
    "BadRequestError",
    "BreakerChanged",
    "BreakerPolicy",
    "BreakerTransition",
    "Budget",
    "BudgetWaited",
    "CircuitOpenError",
    "CircuitState",
    "ClientStateError",
    "Clock",
    "ConfigurationError",
    "ConnectResult",
    "EnvironmentVariableError",
    "Event",
    "ForbiddenError",
    "Hook",
    "IPBlockedError",
    "InitDenied",
    "InstantlyClient",
    "InstantlyError",
    "MalformedResponseError",
    "ManagerStats",
    "MemoryStore",
    "NotFoundError",
    "OAuthManager",
    "OAuthSession",
    "OAuthStatus",
    "OutcomeLostError",
    "PaymentRequiredError",
    "PendingConnection",
    "Provider",
    "ProviderCode",
    "RateLimit",
    "RateLimitedError",
    "RequestFinished",
    "RequestTimeoutError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "SessionCancelledError",
    "SessionFor",
    "SessionResolved",
    "SessionStarted",
    "SessionStatus",
    "StartTimeoutError",
    "StatusMessage",
    "Store",
    "StoreError",
    "SystemClock",
    "TransportError",
    "UnauthorizedError",
    "UnknownSessionError",
    "Warmup",
    "WarmupAdvanced",
    "WarmupStatus",
    "__version__",
]

# A library logs and leaves the output to the application (Python's logging HOWTO): without
# this, Python's last-resort handler would print our warnings to stderr.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

