"""Configuration from the environment: the one way the library, the CLI and the examples read it.

``OAuthManager.from_env(environ=None, **overrides)`` reads these variables (an empty value counts
as unset):

=====================  ===========================================================================
``INSTANTLY_API_KEY``  required: the workspace's API key
``INSTANTLY_BASE_URL`` the API root (default ``https://api.instantly.ai``; plain http only for a
                       loopback host, such as ``instantly-oauth simulate``)
``INSTANTLY_WORKSPACE`` the name budgets, blocks, breakers and sessions are shared under (every key
                       of one workspace must use the same); default: derived from the key
``INSTANTLY_STORE``    where they live: ``memory`` (the default, this process),
                       ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` or ``rediss://...`` (a
                       ``RedisStore``; needs the ``redis`` extra), ``sqlite:///ABSOLUTE/PATH`` or a
                       file path holding a ``/`` (``./instantly.db``, ``~/instantly.db``: a
                       ``SQLiteStore``, whose directory must exist)
=====================  ===========================================================================

``overrides`` are ``OAuthManager`` keyword arguments (and ``api_key``); each one given wins over
its variable, which is then not read at all. A store built from ``INSTANTLY_STORE`` belongs to the
manager: its ``aclose()`` closes it. A ``store=`` passed in stays the caller's to close.

Other ``INSTANTLY_*`` variables are ignored, with one WARNING naming them (names only, never
values) and the known name each one resembles: a typo such as ``INSTANTLY_BASEURL`` would
otherwise send the requests to the production API unnoticed, and refusing to start would break
applications that keep settings of their own under the same prefix.

Every problem raises :class:`EnvironmentVariableError` naming the variable and what is expected.
No message holds the API key, nor the user, password or query values of a URL.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
from yarl import URL

from .._stores.store import Store
from .._wire.endpoint import validate_api_key, validate_base_url
from .._wire.exceptions import ConfigurationError, EnvironmentVariableError, redact_url

__all__ = ["API_KEY", "BASE_URL", "STORE", "WORKSPACE", "Settings", "configured",
           "read_settings"]

logger = logging.getLogger("instantly_oauth_async")

API_KEY: Final = "INSTANTLY_API_KEY"
BASE_URL: Final = "INSTANTLY_BASE_URL"
WORKSPACE: Final = "INSTANTLY_WORKSPACE"
STORE: Final = "INSTANTLY_STORE"
KNOWN: Final = (API_KEY, BASE_URL, WORKSPACE, STORE)

_STORE_FORMS = ("memory, redis://HOST[:PORT][/DB], rediss://..., sqlite:///ABSOLUTE/PATH, "
                "or a file path holding a '/'")


@attrs.frozen
class StoreSpec:
    """Where ``INSTANTLY_STORE`` says the shared state lives: ``kind`` and its URL or path."""

    kind: str  # "memory", "redis" or "sqlite"
    target: str = attrs.field(default="", repr=False)  # a Redis URL may hold a password

    def describe(self) -> str:
        """The store for a message: a Redis URL without its password or query values."""
        if self.kind == "redis":
            return f"redis at {shown_url(self.target)}"
        return f"sqlite at {self.target}" if self.kind == "sqlite" else "memory"


@attrs.frozen
class Settings:
    """What the environment (and the caller's overrides) said, checked."""

    api_key: str = attrs.field(repr=False)
    base_url: str | None  # None: the library's default
    workspace: str | None
    store: StoreSpec | None  # None: not read (the caller passed its own, or did not ask)


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def read_settings(
    environ: Mapping[str, str] | None = None,
    *,
    api_key: str | None = None,
    base_url: str | URL | None = None,
    workspace: str | None = None,
    store: bool = True,
) -> Settings:
    """The settings from ``environ`` (default ``os.environ``); an argument given wins over its
    variable, which is then not read. ``store=False``: ``INSTANTLY_STORE`` is not read."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    _warn_unknown(env)
    if api_key is None:
        raw = _get(env, API_KEY)
        if raw is None:
            raise EnvironmentVariableError(
                API_KEY, f"{API_KEY} is not set: set it to the workspace's API key")
        try:
            key = validate_api_key(raw)
        except ConfigurationError:
            raise EnvironmentVariableError(
                API_KEY, f"{API_KEY} holds characters that cannot go in an HTTP header "
                "(a line break, a control character): it must hold the API key alone") from None
    else:
        key = api_key
    url: str | None = None if base_url is None else str(base_url)
    if base_url is None and (raw_url := _get(env, BASE_URL)) is not None:
        try:
            url = str(validate_base_url(raw_url))
        except (ConfigurationError, ValueError) as exc:  # yarl reads a bad port lazily
            reason = (str(exc).split(", got ", 1)[0].removeprefix("base_url ")
                      if isinstance(exc, ConfigurationError) else "is not a URL")
            raise EnvironmentVariableError(
                BASE_URL, f"{BASE_URL} {reason}: got {shown_url(raw_url)!r}") from None
    name = workspace if workspace is not None else _get(env, WORKSPACE)
    spec = parse_store(_get(env, STORE)) if store else None
    return Settings(api_key=key, base_url=url, workspace=name, store=spec)


def parse_store(value: str | None) -> StoreSpec:
    """``INSTANTLY_STORE``'s value as a :class:`StoreSpec`; checks it without connecting."""
    if value is None or value.lower() == "memory":
        return StoreSpec("memory")
    if "://" in value:
        scheme = value.split("://", 1)[0].lower()
        if scheme in ("redis", "rediss"):
            return StoreSpec("redis", _check_redis_url(value))
        if scheme == "sqlite":
            path = value[len("sqlite://"):]
            if not path.startswith("/") or path == "/":
                raise EnvironmentVariableError(
                    STORE, f"{STORE} must name a file as sqlite:///ABSOLUTE/PATH (three "
                    "slashes, then the path from the root); for a relative path, give the "
                    "path alone: ./instantly.db")
            return StoreSpec("sqlite", _check_sqlite_path(path))
        shown = scheme if scheme.isidentifier() and len(scheme) < 20 else "that scheme"
        raise EnvironmentVariableError(
            STORE, f"{STORE} must be {_STORE_FORMS}: {shown}:// is none of them")
    if "/" in value or value.startswith("~"):
        return StoreSpec("sqlite", _check_sqlite_path(value))
    shown = repr(value) if len(value) <= 40 and value.isprintable() else "that value"
    raise EnvironmentVariableError(
        STORE, f"{STORE} must be {_STORE_FORMS}: got {shown} (a SQLite file in this directory "
        "is ./NAME)")


def shown_url(value: str) -> str:
    """``value`` fit for a message: no user, password, query values or fragment, even when it
    is too malformed to parse."""
    return redact_url(value) or ""


def _check_redis_url(value: str) -> str:
    shown = shown_url(value)
    try:
        url = URL(value)
        host, port, path = url.host, url.port, url.path
    except (TypeError, ValueError):
        raise EnvironmentVariableError(
            STORE, f"{STORE} is not a readable Redis URL ({shown}): expected "
            "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]") from None
    if not host:
        raise EnvironmentVariableError(
            STORE, f"{STORE} names no Redis host ({shown}): expected "
            "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]")
    if port is not None and not 0 < port < 65536:
        raise EnvironmentVariableError(STORE, f"{STORE} has a port out of range ({shown})")
    if path not in ("", "/") and not path.lstrip("/").isdigit():
        raise EnvironmentVariableError(
            STORE, f"{STORE}'s path must be a database number, as in redis://HOST:6379/0 "
            f"({shown})")
    return value


def _check_sqlite_path(value: str) -> str:
    path = Path(value).expanduser()
    if path.is_dir():
        raise EnvironmentVariableError(
            STORE, f"{STORE} names a directory ({path}): it must name the SQLite file, as in "
            f"{path / 'instantly.db'}")
    if not path.parent.is_dir():
        raise EnvironmentVariableError(
            STORE, f"{STORE} names a file in a directory that does not exist ({path.parent}): "
            "the file is made when missing, its directory is not")
    return str(path)


def build_store(spec: StoreSpec) -> Store | None:
    """A store for ``spec`` (None for memory: the manager's default); it connects at first
    use, so nothing needs closing until then."""
    if spec.kind == "redis":
        try:
            from ..redis import RedisStore  # noqa: PLC0415 - an optional extra
        except ModuleNotFoundError as exc:
            if exc.name != "redis" and "instantly-oauth-async[redis]" not in str(exc):
                raise
            raise EnvironmentVariableError(
                STORE, f"{STORE} names a Redis store, which needs the redis extra: "
                "pip install 'instantly-oauth-async[redis]'") from None
        try:
            return RedisStore.from_url(spec.target)
        except ValueError:
            raise EnvironmentVariableError(
                STORE, f"{STORE} is not a Redis URL the client accepts ({spec.describe()})"
            ) from None
    if spec.kind == "sqlite":
        from ..sqlite import SQLiteStore  # noqa: PLC0415 - imported when used

        return SQLiteStore(spec.target)
    return None


def _warn_unknown(environ: Mapping[str, str]) -> None:
    unknown = sorted(name for name in environ
                     if name.upper().startswith("INSTANTLY_") and name not in KNOWN)
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper(), KNOWN, n=1, cutoff=0.8)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    logger.warning("ignored environment variables: %s; known: %s", ", ".join(hints),
                   ", ".join(KNOWN), extra={"iox_event": "config_unknown_variables"})


def configured(environ: Mapping[str, str] | None, overrides: dict[str, Any]
               ) -> tuple[str, dict[str, Any], Store | None]:
    """The API key and the ``OAuthManager`` keyword arguments that ``environ`` and
    ``overrides`` say (see the module), and the store built for them (None when none was):
    the manager's own, for its ``aclose()`` to close."""
    options = dict(overrides)
    given_store = "store" in options
    settings = read_settings(
        environ, api_key=options.pop("api_key", None), base_url=options.get("base_url"),
        workspace=options.get("workspace"), store=not given_store)
    if settings.base_url is not None:
        options["base_url"] = settings.base_url
    if settings.workspace is not None:
        options["workspace"] = settings.workspace
    owned = None if settings.store is None else build_store(settings.store)
    if owned is not None:
        options["store"] = owned
    return settings.api_key, options, owned
