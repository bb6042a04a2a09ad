"""The one ``cattrs`` converter that turns JSON into records and back.

Tolerant where servers drift: unknown fields are ignored, an unknown integer enum value is kept as
a bare ``int``, ``null`` is accepted wherever a field is optional. Strict where it matters: a
missing or mistyped required field (a session without ``session_id``) is a
:class:`~instantly_oauth_async.MalformedResponseError`, and strings are never coerced from numbers.
"""

from __future__ import annotations

import enum
import json
import math
import re
import types
import typing
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import cattrs

from .enums import AccountStatus, Provider, ProviderCode, SessionStatus, WarmupStatus
from .exceptions import ConfigurationError, MalformedResponseError

__all__ = ["coerce_provider", "converter", "from_json", "parse_datetime", "structure", "to_json"]

T = TypeVar("T")
E = TypeVar("E", bound=enum.IntEnum)

converter = cattrs.Converter(forbid_extra_keys=False)


def _fail(value: object, what: str) -> MalformedResponseError:
    # The value's type, never the value: a field may hold something the caller must not log.
    return MalformedResponseError(f"expected {what}, got {type(value).__name__}")


def _structure_str(value: object, _: object) -> str:
    if not isinstance(value, str):
        raise _fail(value, "a string")
    return value


def _structure_bool(value: object, _: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(value, "a boolean")
    return value


def _structure_float(value: object, _: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(value, "a number")
    result = float(value)
    if not math.isfinite(result):
        raise _fail(value, "a finite number")
    return result


def _structure_int(value: object, _: object) -> int:
    if isinstance(value, bool):
        raise _fail(value, "an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _fail(value, "an integer")


# RFC 3339 and the ISO 8601 extended forms around it, as ``datetime.fromisoformat`` reads them
# from Python 3.11 on: any number of fractional digits (after "." or ","), an offset written "Z",
# "z", "+HH", "+HHMM", "+HH:MM" or with seconds, "T", "t" or a space between date and time, and
# minutes or seconds left out. Python 3.10's fromisoformat takes only 3 or 6 fractional digits and
# "+HH:MM", so the common forms are parsed here, the same way on every Python.
_TIMESTAMP = re.compile(
    r"""
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    (?:[Tt ]
        (?P<hour>\d{2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?
        (?:(?P<utc>[Zz])
          |(?P<sign>[+-])(?P<off_h>\d{2})(?::?(?P<off_m>\d{2})(?::?(?P<off_s>\d{2}))?)?
        )?
    )?
    """,
    re.VERBOSE | re.ASCII,
)
# The same in ISO 8601's basic form (``20260114T123000+0100``), which Python 3.10's fromisoformat
# does not read at all and 3.11's does.
_BASIC = re.compile(
    r"""
    (?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})
    (?:[Tt]
        (?P<hour>\d{2})(?:(?P<minute>\d{2})(?:(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?
        (?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<off_h>\d{2})(?:(?P<off_m>\d{2})(?P<off_s>\d{2})?)?)?
    )?
    """,
    re.VERBOSE | re.ASCII,
)


def parse_datetime(value: str) -> datetime:
    """Parse an ISO 8601 / RFC 3339 timestamp into an aware datetime (naive ones are UTC).

    Reads every form the API writes (``2026-01-14T12:30:00.000Z``) and its relatives (``.12Z``,
    ``.1234567+00:00``, ``+0000``, ``z``) alike on Python 3.10 to 3.13; fractional digits past
    the sixth are dropped, as ``datetime.fromisoformat`` does. Raises ``ValueError`` otherwise.
    """
    text = value.strip()
    match = _TIMESTAMP.fullmatch(text) or _BASIC.fullmatch(text)
    if match is None:  # another ISO 8601 form (week dates, say): what this Python can read
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
    part = match.group
    tz = timezone.utc
    if part("sign"):
        minutes, seconds = int(part("off_m") or 0), int(part("off_s") or 0)
        if minutes > 59 or seconds > 59:
            raise ValueError("offset minutes and seconds run from 0 to 59")
        offset = timedelta(hours=int(part("off_h")), minutes=minutes, seconds=seconds)
        tz = timezone(-offset if part("sign") == "-" else offset)  # ValueError past 24 h
    fraction = (part("fraction") or "")[:6]
    return datetime(
        int(part("year")), int(part("month")), int(part("day")),
        int(part("hour") or 0), int(part("minute") or 0), int(part("second") or 0),
        int(fraction.ljust(6, "0")),  # "" -> "000000"
        tzinfo=tz,
    )


def _structure_datetime(value: object, _: object) -> datetime:
    if not isinstance(value, str):
        raise _fail(value, "an ISO 8601 timestamp")
    try:
        return parse_datetime(value)
    except (ValueError, OverflowError):
        raise MalformedResponseError("expected an ISO 8601 timestamp") from None


def _unstructure_datetime(value: datetime) -> str:
    return value.isoformat()


def _lenient_int_enum(cls: type[E]) -> Callable[[object, object], E | int]:
    def hook(value: object, _: object) -> E | int:
        number = _structure_int(value, None)
        try:
            return cls(number)
        except ValueError:
            return number

    return hook


def coerce_provider(value: object) -> Provider:
    """``Provider`` from a member or its string value, case-insensitively."""
    if isinstance(value, Provider):
        return value
    if isinstance(value, str):
        try:
            return Provider(value.strip().lower())
        except ValueError:
            pass
    raise ConfigurationError(
        f"unknown provider {value!r}: expected one of {', '.join(p.value for p in Provider)}"
    )


def _structure_session_status(value: object, _: object) -> SessionStatus:
    # The status drives polling; an unknown one is not something to guess about.
    if not isinstance(value, str):
        raise _fail(value, "a session status string")
    try:
        return SessionStatus(value)
    except ValueError:
        raise MalformedResponseError("unknown session status") from None


converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook(float, _structure_float)
converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(datetime, _structure_datetime)
converter.register_unstructure_hook(datetime, _unstructure_datetime)
converter.register_structure_hook(SessionStatus, _structure_session_status)
converter.register_structure_hook(Provider, lambda value, _: coerce_provider(value))
_LENIENT_ENUMS = (AccountStatus, WarmupStatus, ProviderCode)


def _lenient_enum_of(tp: Any) -> type[enum.IntEnum] | None:
    """The IntEnum of a ``E | int`` or ``E | int | None`` annotation, else None."""
    args = set(typing.get_args(tp))
    if typing.get_origin(tp) not in (typing.Union, types.UnionType) or int not in args:
        return None
    rest = args - {int, type(None)}
    found = next(iter(rest)) if len(rest) == 1 else None
    return found if found in _LENIENT_ENUMS else None


def _lenient_enum_factory(tp: Any) -> Callable[[object, object], object]:
    hook = _lenient_int_enum(typing.cast("type[enum.IntEnum]", _lenient_enum_of(tp)))
    if type(None) not in typing.get_args(tp):
        return hook
    return lambda value, cl: None if value is None else hook(value, cl)


converter.register_structure_hook_factory(
    lambda tp: _lenient_enum_of(tp) is not None, _lenient_enum_factory
)

def _leaf_message(exc: BaseException) -> str:
    """A short description of the first failure inside a cattrs error group."""
    if isinstance(exc, MalformedResponseError):
        return str(exc)
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    if isinstance(exc, cattrs.BaseValidationError):
        for inner in exc.exceptions:
            message = _leaf_message(inner)
            notes = [n for n in getattr(inner, "__notes__", ()) if isinstance(n, str)]
            # cattrs notes where: "Structuring class Account @ attribute email"
            where = notes[0].partition("@ attribute ")[2] if notes else ""
            # Named once: a missing field's message names it already. (Not "the name appears
            # in the message": "unknown session status" must still say "at status".)
            if where and message != f"missing field {where!r}":
                return f"{message} at {where}"
            return message
    return type(exc).__name__


def structure(data: Any, cls: type[T], *, status: int | None = None) -> T:
    """Turn decoded JSON into ``cls``; any failure is a :class:`MalformedResponseError`.

    ``status`` is the HTTP status of the answer the JSON came in, kept on the error: an answer
    that arrived but cannot be read is not one that was lost.
    """
    if not isinstance(data, dict):
        raise MalformedResponseError(f"expected a JSON object for {cls.__name__}", status=status)
    try:
        return converter.structure(data, cls)
    except MalformedResponseError as exc:  # a hook's own, outside any record (no status)
        raise MalformedResponseError(str(exc), status=status) from None
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError, AttributeError,
            OverflowError) as exc:
        raise MalformedResponseError(
            f"malformed {cls.__name__}: {_leaf_message(exc)}", status=status
        ) from None


def to_json(record: object) -> str:
    """``record`` (an ``OAuthSession``, a ``ConnectResult``, ...) as compact JSON text, which
    :func:`from_json` turns back into an equal record: timestamps as ISO 8601 with their offset
    and microseconds, enums as their values, every field present.

    A number JSON cannot carry (NaN, infinity: never in a record the API gave) raises
    :class:`~instantly_oauth_async.ConfigurationError`.
    """
    try:
        return json.dumps(converter.unstructure(record), allow_nan=False,
                          separators=(",", ":"))
    except ValueError:
        raise ConfigurationError(
            f"{type(record).__name__} holds a number JSON cannot carry (NaN or infinity)"
        ) from None


def from_json(text: str | bytes | bytearray, cls: type[T]) -> T:
    """The ``cls`` record that :func:`to_json` wrote as ``text``.

    Unknown fields are ignored, as in an API answer. Text that is not JSON, or not a ``cls``
    (a missing or mistyped field), raises :class:`~instantly_oauth_async.ConfigurationError`
    (a ``ValueError``), whose message names the field and the type found, never a value.
    """
    name = cls.__name__
    if not isinstance(text, (str, bytes, bytearray)):
        raise ConfigurationError(
            f"{name}.from_json takes JSON text (str or bytes), not {type(text).__name__}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, absurd nesting
        raise ConfigurationError(f"{name}.from_json: the text is not JSON") from None
    try:
        return structure(data, cls)
    except MalformedResponseError as exc:
        raise ConfigurationError(f"{name}.from_json: {exc}") from None

