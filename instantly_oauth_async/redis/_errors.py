"""How the Redis parts of the library sort what Redis raises: an outage (carry on without it,
or retry) or an error that waiting will not cure (:class:`StoreError`). Imported by ``redis``
(which checks first that the ``redis`` extra is installed) and the modules beside it."""

from __future__ import annotations

import asyncio

from redis.exceptions import (
    AuthenticationError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._stores.store import StoreError

__all__ = ["FAILURES", "outage", "store_error"]

#: Everything a Redis call may raise that the store looks at; :func:`outage` sorts it.
#: (A cluster client raises ``RedisClusterException``, no ``RedisError``, when it reaches no
#: node or finds a slot uncovered.)
FAILURES = (RedisError, RedisClusterException, OSError, TimeoutError, asyncio.TimeoutError)
#: Error replies that mean "not now" rather than "never": a script of someone else's runs too
#: long, the server loads its data, a replica lost its master, a cluster slot moves, a cluster
#: has lost a master (or its majority).
_TRANSIENT = frozenset({"BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"})
#: The code of a reply redis-py maps to its own class, for versions whose errors carry no
#: ``status_code`` (it strips the code from the message).
_CODES: tuple[tuple[type[RedisError], str], ...] = (
    (NoPermissionError, "NOPERM"), (ReadOnlyError, "READONLY"), (OutOfMemoryError, "OOM"),
    (NoScriptError, "NOSCRIPT"), (MasterDownError, "MASTERDOWN"), (TryAgainError, "TRYAGAIN"),
)


def _code(exc: BaseException) -> str | None:
    """Redis's error code (``NOPERM``, ``WRONGTYPE``, ``ERR``...) of a reply, when known."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    first = str(exc).split(" ", 1)[0]
    if first.isalpha() and first.isupper():
        return first
    return next((name for kind, name in _CODES if isinstance(exc, kind)), None)


def outage(exc: BaseException) -> bool:
    """True: Redis is away or busy for now (carry on without it); False: an error to raise."""
    if isinstance(exc, AuthenticationError):
        return False  # a wrong password or user (redis-py files it under connection errors)
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError,
                        asyncio.TimeoutError)):
        return True
    if isinstance(exc, RedisClusterException):
        # No node reached (the cause says why), or slots no master holds for now (a master
        # down); others, such as keys of several slots in one script, are errors to raise.
        return isinstance(exc, SlotNotCoveredError) or str(exc).startswith(
            "All slots are not covered") or (exc.__cause__ is not None and outage(exc.__cause__))
    if isinstance(exc, NoScriptError):
        return True  # flushed again right after redis-py reloaded it: the next try reloads
    return _code(exc) in _TRANSIENT


def store_error(what: str, exc: BaseException) -> StoreError:
    """The error to raise for a reply that is not an outage. Redis never echoes a password."""
    code = _code(exc)
    detail = " ".join(str(exc).split())[:300] or type(exc).__name__
    if code and not detail.startswith(code):
        detail = f"{code} {detail}"
    return StoreError(
        f"Redis answered {what} with an error, which waiting will not cure: {detail}", code=code)
