"""The closed sets of values the API speaks in: providers, session statuses, and the account
fields' codes. Below the records (``models``) and their converter (``convert``), which both use
them."""

from __future__ import annotations

import enum

__all__ = ["AccountStatus", "Provider", "ProviderCode", "SessionStatus", "WarmupStatus"]


class Provider(str, enum.Enum):
    """The mailbox provider an OAuth session connects; its value is the URL segment of init."""

    GOOGLE = "google"
    MICROSOFT = "microsoft"

    def __str__(self) -> str:
        return self.value


class SessionStatus(str, enum.Enum):
    """``status`` of ``GET /api/v2/oauth/session/status/{id}``."""

    PENDING = "pending"
    SUCCESS = "success"
    ERROR = "error"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        """Whether the session has ended (the server deletes SUCCESS and ERROR on first read)."""
        return self is not SessionStatus.PENDING

    def __str__(self) -> str:
        return self.value


class AccountStatus(enum.IntEnum):
    """``Account.status``, with the meanings the API documents."""

    ACTIVE = 1
    PAUSED = 2
    MAINTENANCE = 3  #: temporarily paused for maintenance; resumes by itself shortly
    CONNECTION_ERROR = -1
    SOFT_BOUNCE_ERROR = -2
    SENDING_ERROR = -3


class WarmupStatus(enum.IntEnum):
    """``Account.warmup_status``."""

    PAUSED = 0
    ACTIVE = 1
    BANNED = -1
    SPAM_FOLDER_UNKNOWN = -2
    PERMANENT_SUSPENSION = -3


class ProviderCode(enum.IntEnum):
    """``Account.provider_code``."""

    CUSTOM_IMAP_SMTP = 1
    GOOGLE = 2
    MICROSOFT = 3
    AWS = 4
    AIRMAIL = 8
