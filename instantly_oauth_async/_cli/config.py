"""What the command line says over the environment: the API key from ``--api-key-file`` and
``--base-url``; the rest comes from the environment, as ``OAuthManager.from_env`` reads it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._manager import config as _config
from .._wire.client import DEFAULT_BASE_URL, InstantlyClient
from .failures import NO_KEY, Fail


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What the command line says over the environment: the key from --api-key-file, and
    --base-url. The rest comes from the environment, as ``OAuthManager.from_env`` reads it."""
    given: dict[str, Any] = {}
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise Fail(NO_KEY, f"cannot read --api-key-file: {exc.strerror}") from None
        if not key:
            raise Fail(NO_KEY, "--api-key-file is empty")
        given["api_key"] = key
    if args.base_url:
        given["base_url"] = args.base_url
    return given


def client(args: argparse.Namespace) -> InstantlyClient:
    """A client for the one-shot commands, configured as ``from_env`` configures a manager."""
    settings = _config.read_settings(**overrides(args), store=False)
    return InstantlyClient(settings.api_key, base_url=settings.base_url or DEFAULT_BASE_URL)
