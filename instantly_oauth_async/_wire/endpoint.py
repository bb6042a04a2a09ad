"""Where a client is pointed, checked before any request: the API root (its path prefix kept
for every request) and the API key."""

from __future__ import annotations

import ipaddress

from yarl import URL

from .exceptions import ConfigurationError

__all__ = ["is_loopback", "path_prefix", "validate_api_key", "validate_base_url"]


def is_loopback(host: str | None) -> bool:
    """``localhost`` or a loopback address: where plain http may go (the simulator)."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_base_url(base_url: str | URL) -> URL:
    """The API root, checked: absolute http(s), https unless on loopback (the key would go in
    clear text), no credentials, query or fragment; without a trailing slash."""
    try:
        url = URL(str(base_url))
    except (TypeError, ValueError):
        raise ConfigurationError("base_url is not a URL") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise ConfigurationError(f"base_url must be an absolute http(s) URL, got {str(url)!r}")
    if url.explicit_port == 0:
        raise ConfigurationError("base_url's port must be 1 to 65535, got 0")
    if url.scheme == "http" and not is_loopback(url.host):
        raise ConfigurationError(
            "base_url must use https: plain http would send the API key in clear text "
            "(http is allowed only for loopback hosts, such as the simulator)"
        )
    if url.user or url.password or url.query_string or url.fragment:
        raise ConfigurationError("base_url must not hold credentials, a query or a fragment")
    return url.with_path(url.path.rstrip("/"))


def path_prefix(base: URL) -> str:
    """What every request path goes below: a request's URL is ``base.with_path(prefix +
    path)``, never a string parsed anew (yarl caches a few parses, which a manager reading
    thousands of sessions missed: 2 us a URL)."""
    return "" if base.raw_path == "/" else base.raw_path.rstrip("/")


def validate_api_key(api_key: object) -> str:
    """The key, stripped; a clear error for one that is empty or cannot go in a header."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise ConfigurationError("api_key must be a non-empty string")
    if any(ch in api_key for ch in "\r\n\x00") or not api_key.isprintable():
        raise ConfigurationError("api_key holds characters that cannot go in a header")
    return api_key.strip()
