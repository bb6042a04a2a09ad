"""What a registry entry holds of a session: its records as registered, and its outcome with
the precedence that decides which outcome stands (an answer over an expiry over a loss)."""

from __future__ import annotations

import json

from .._stores.registry import ANSWER, EXPIRED, LOST, Data
from .._wire.convert import converter
from .._wire.models import Account, OAuthSession, SessionStatus
from .outcome import ConnectResult, OutcomeLostError

__all__ = ["decode_outcome", "decode_session", "encode_outcome", "encode_session",
           "session_data"]


def encode_session(session: OAuthSession, expected_email: str | None) -> str:
    return json.dumps({"session": converter.unstructure(session),
                       "expected_email": expected_email})


class _Encoded:
    """A session's registry data made when read: the in-process registry keeps this rather
    than a second, serialized copy of the records the manager holds anyway."""

    __slots__ = ("expected_email", "session")

    def __init__(self, session: OAuthSession, expected_email: str | None) -> None:
        self.session, self.expected_email = session, expected_email

    def _as_registered(self) -> str:
        return encode_session(self.session, self.expected_email)


def session_data(session: OAuthSession, expected_email: str | None, *, lazy: bool) -> Data:
    """The session as registered: made when read (``lazy``: the in-process registry), else
    its JSON."""
    return _Encoded(session, expected_email) if lazy else encode_session(session, expected_email)


def decode_session(data: str) -> tuple[OAuthSession, str | None]:
    raw = json.loads(data)
    return converter.structure(raw["session"], OAuthSession), raw.get("expected_email")


def encode_outcome(result: ConnectResult | None, error: BaseException | None
                   ) -> tuple[str, int] | None:
    """The outcome as the registry stores it, with its precedence; None: nothing to store (a
    cancellation, the manager closing, a bug: the lease lapses and another manager goes on)."""
    if result is not None:
        rank = EXPIRED if result.status is SessionStatus.EXPIRED else ANSWER
        return json.dumps({"result": converter.unstructure(result)}), rank
    if isinstance(error, OutcomeLostError):
        account = None if error.account is None else converter.unstructure(error.account)
        return json.dumps({"lost": error.detail, "account": account}), LOST
    return None


def decode_outcome(outcome: str, session_id: str) -> ConnectResult | OutcomeLostError:
    raw = json.loads(outcome)
    if "result" in raw:
        result: ConnectResult = converter.structure(raw["result"], ConnectResult)
        return result
    account = raw.get("account")
    return OutcomeLostError(
        session_id, raw.get("lost", "lost"),
        account=None if account is None else converter.structure(account, Account))
