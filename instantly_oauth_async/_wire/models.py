"""Records the API returns and the values callers pass in.

Every record is an ``attrs`` class, frozen and slotted. JSON goes in and out through the one
converter in :mod:`instantly_oauth_async._wire.convert`, which knows the enums (``enums``) and
the generic shapes; what is particular to a record (a field renamed on the wire) is said here,
below it. Nothing here does I/O.
"""

from __future__ import annotations

import random
from datetime import datetime

import attrs
import cattrs

from .convert import converter, from_json, to_json
from .enums import AccountStatus, Provider, ProviderCode, SessionStatus, WarmupStatus
from .exceptions import ConfigurationError

__all__ = [
    "Account",
    "AccountStatus",
    "OAuthSession",
    "OAuthStatus",
    "Provider",
    "ProviderCode",
    "RateLimit",
    "RetryPolicy",
    "SessionStatus",
    "StatusMessage",
    "Warmup",
    "WarmupAdvanced",
    "WarmupStatus",
]


def _number(value: object) -> float | None:
    """``value`` as a float when it is a real number (bools are not), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _integer(value: object) -> int | None:
    """``value`` when it is an int (bools are not), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@attrs.frozen
class RateLimit:
    """At most ``count`` requests in any window of ``per`` seconds, as the server counts them.

    The limiter keeps ``count`` slots; a slot comes back ``per + margin`` seconds after the
    request that spent it ended (see ``_limiter``), so nothing the network does can squeeze two
    windows' worth into one. ``margin`` (default ``per / 200``) covers how the server rounds its
    own clock; it costs ``margin / (per + margin)`` of the rate.
    """

    count: int
    per: float
    margin: float = attrs.field(
        default=attrs.Factory(lambda self: self.per / 200, takes_self=True)
    )

    def __attrs_post_init__(self) -> None:
        count, per, margin = _integer(self.count), _number(self.per), _number(self.margin)
        if count is None or count < 1:
            raise ConfigurationError(
                f"RateLimit.count must be a positive integer, got {self.count!r}")
        if per is None or not 0 < per < float("inf"):
            raise ConfigurationError(
                f"RateLimit.per must be a positive number of seconds, got {self.per!r}"
            )
        if margin is None or not 0 <= margin <= per:
            raise ConfigurationError(
                f"RateLimit.margin must be a number of seconds from 0 to per, got {self.margin!r}"
            )

    @property
    def window(self) -> float:
        """Seconds a spent slot stays spent after its request ended: ``per + margin``."""
        return self.per + self.margin


@attrs.frozen
class RetryPolicy:
    """Jittered exponential backoff for transient failures, bounded in attempts and time:
    ``OAuthManager(retry=RetryPolicy(...))``.

    Attributes:
        attempts: tries in all, the first included (default 5), for one init (after a 503, a
            5xx, no answer, or a short 429, within ``start()``'s deadline), and for one
            account read; a session's status reads fail that many times in a row past its
            expiry before its outcome is given up as lost. 1 means no retry.
        base: seconds (default 0.5) of the first retry's ceiling, doubled at each retry.
        cap: seconds (default 30.0): no ceiling, and no ``Retry-After`` honoured here, goes
            past it.

    The n-th retry waits a random time between half and all of ``min(cap, base * 2**(n-1))``
    (``delay``), and at least the server's ``Retry-After`` (up to ``cap``) when it sent one; a
    status read waits at most ``poll_interval``. Raises
    :class:`~instantly_oauth_async.ConfigurationError` for a count below 1 or a time that is
    not a finite number of seconds (negative, or a ``cap`` under ``base``).
    """

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def __attrs_post_init__(self) -> None:
        attempts, base, cap = _integer(self.attempts), _number(self.base), _number(self.cap)
        if attempts is None or attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.attempts must be a positive integer, got {self.attempts!r}")
        if base is None or cap is None or not 0 <= base <= cap < float("inf"):
            raise ConfigurationError(
                "RetryPolicy.base and cap must be seconds with 0 <= base <= cap < inf, "
                f"got base={self.base!r}, cap={self.cap!r}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (from 1), drawn with ``rng``."""
        ceiling = min(self.cap, self.base * (2.0 ** min(max(attempt - 1, 0), 30)))
        return max(ceiling * rng.uniform(0.5, 1.0), min(retry_after or 0.0, self.cap))


@attrs.frozen
class OAuthSession:
    """What ``POST /api/v2/oauth/{provider}/init`` returns.

    ``server_date`` is the response's ``Date`` header, when it had one: with ``expires_at`` it
    tells how long the session lives by the server's own clock, whatever ours says.
    """

    session_id: str
    auth_url: str = attrs.field(repr=False)  # long and single-use; kept out of log lines
    expires_at: datetime
    provider: Provider
    server_date: datetime | None = None

    def to_json(self) -> str:
        """This session as JSON text, to store it and :meth:`OAuthManager.resume` it later
        (from another process too): ``OAuthSession.from_json(session.to_json()) == session``.

        The text holds the ``auth_url``, the person's single-use consent link: keep it where
        you would keep that link, not in a log.
        """
        return to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes | bytearray) -> OAuthSession:
        """The session :meth:`to_json` wrote. Raises
        :class:`~instantly_oauth_async.ConfigurationError` (a ``ValueError``) for text that is
        not JSON or not a session; its message names the faulty field, never a value."""
        return from_json(text, cls)


@attrs.frozen
class OAuthStatus:
    """What ``GET /api/v2/oauth/session/status/{id}`` returns (``server_date`` from ``Date``)."""

    status: SessionStatus
    email: str | None = None
    name: str | None = None
    error: str | None = None
    error_description: str | None = None
    server_date: datetime | None = None


@attrs.frozen
class WarmupAdvanced:
    """The advanced warmup settings of an account (:class:`Warmup`'s ``advanced``); a field the
    API left out is None.
    """
    warm_ctd: bool | None = None
    open_rate: float | None = None
    important_rate: float | None = None
    read_emulation: bool | None = None
    spam_save_rate: float | None = None
    weekday_only: bool | None = None


@attrs.frozen
class Warmup:
    """An account's warmup settings, as the API sends them; a field the API left out is None."""
    limit: float | None = None
    advanced: WarmupAdvanced | None = None
    warmup_custom_ftag: str | None = None
    increment: str | None = None  #: ``"disabled"`` or ``"0"`` to ``"4"``
    reply_rate: float | None = None


@attrs.frozen
class StatusMessage:
    """An account's status message, as the API sends it: ``code``, ``command``, ``response``
    and ``e_message`` when present (any may be None).
    """
    code: str | None = None
    command: str | None = None
    response: str | None = None
    e_message: str | None = None
    response_code: float | None = None  #: ``responseCode`` on the wire


@attrs.frozen
class Account:
    """``GET /api/v2/accounts/{email}``: every field the API documents.

    Enum fields hold the enum member when the value is known and the bare integer otherwise, so a
    status the server adds tomorrow does not break parsing today.
    """

    email: str
    timestamp_created: datetime
    timestamp_updated: datetime
    first_name: str
    last_name: str
    organization: str
    warmup_status: WarmupStatus | int
    provider_code: ProviderCode | int
    setup_pending: bool
    is_managed_account: bool
    warmup: Warmup | None = None
    added_by: str | None = None
    daily_limit: float | None = None
    modified_by: str | None = None
    tracking_domain_name: str | None = None
    tracking_domain_status: str | None = None
    status: AccountStatus | int | None = None
    enable_slow_ramp: bool | None = None
    inbox_placement_test_limit: float | None = None
    timestamp_last_used: datetime | None = None
    status_message: StatusMessage | None = None
    timestamp_warmup_start: datetime | None = None
    warmup_pool_id: str | None = None
    dfy_password_changed: bool | None = None
    stat_warmup_score: float | None = None
    sending_gap: float | None = None
    signature: str | None = None
    autofix_failed: bool | None = None


# ``responseCode`` on the wire, ``response_code`` in Python.
converter.register_structure_hook(
    StatusMessage,
    cattrs.gen.make_dict_structure_fn(
        StatusMessage, converter, response_code=cattrs.gen.override(rename="responseCode")
    ),
)
converter.register_unstructure_hook(
    StatusMessage,
    cattrs.gen.make_dict_unstructure_fn(
        StatusMessage, converter, response_code=cattrs.gen.override(rename="responseCode")
    ),
)
# Touch the generated hooks once so a broken record definition fails at import, not in production.
for _record in (OAuthSession, OAuthStatus, Account):
    converter.get_structure_hook(_record)
