"""What a failure of the command line becomes: its exit code (one per kind) and its one line on
stderr. The API key never appears: errors never hold it."""


from __future__ import annotations

import sys
from typing import NoReturn

from .._manager import config as _config
from .._wire.exceptions import (
    ConfigurationError,
    EnvironmentVariableError,
    ForbiddenError,
    InstantlyError,
    IPBlockedError,
    RateLimitedError,
    TransportError,
    UnauthorizedError,
)

#: Exit codes, one per kind of failure (documented in docs/reference/cli.md).
OK, NOT_ALL_CONNECTED, USAGE, NO_KEY, AUTH, UNREACHABLE, LIMITED, API, INTERRUPTED = (
    0, 1, 2, 3, 4, 5, 6, 7, 130)


class Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def explain(exc: BaseException) -> Fail:
    """One line for an error, with its exit code; the key never appears (errors never hold it)."""
    if isinstance(exc, Fail):
        return exc
    if isinstance(exc, EnvironmentVariableError) and exc.variable == _config.API_KEY:
        return Fail(NO_KEY, f"{exc}, or pass --api-key-file")
    if isinstance(exc, (UnauthorizedError, ForbiddenError)):
        return Fail(AUTH, f"the API key was refused ({exc})")
    if isinstance(exc, TransportError):
        return Fail(UNREACHABLE, f"cannot reach the API: {exc}")
    if isinstance(exc, (RateLimitedError, IPBlockedError)):
        return Fail(LIMITED, f"rate limited: {exc}")
    if isinstance(exc, ConfigurationError):
        return Fail(USAGE, str(exc))
    if isinstance(exc, InstantlyError):
        return Fail(API, f"{type(exc).__name__}: {exc}")
    raise exc


def die(code: int, message: str) -> NoReturn:
    print(f"instantly-oauth: {message}", file=sys.stderr)
    raise SystemExit(code)
