"""``status`` and ``account``: one read each, printed as one JSON object; what a 404 means for
each, said in plain words."""


from __future__ import annotations

import argparse
import json

from .._wire.exceptions import NotFoundError
from .config import client
from .failures import API, OK, Fail


async def status(args: argparse.Namespace) -> int:
    async with client(args) as instantly:
        try:
            status = await instantly.get_oauth_status(args.session_id)
        except NotFoundError:
            raise Fail(API, "no such session: a finished session (success or error) is "
                       "deleted on its first read, which alone got its outcome (connect "
                       "reads it as it polls); another workspace's session, or a mistyped "
                       "id, is not found either") from None
    print(json.dumps({"status": status.status.value, "email": status.email,
                      "error": status.error, "error_description": status.error_description}))
    return OK


async def account(args: argparse.Namespace) -> int:
    async with client(args) as instantly:
        try:
            account = await instantly.get_account(args.email)
        except NotFoundError:
            raise Fail(API, f"no account {args.email} in this workspace: it was never "
                       "connected, or has been removed") from None
    print(json.dumps({"email": account.email, "status": account.status,
                      "provider_code": account.provider_code,
                      "first_name": account.first_name, "last_name": account.last_name,
                      "timestamp_created": account.timestamp_created.isoformat(),
                      "timestamp_updated": account.timestamp_updated.isoformat()}))
    return OK
