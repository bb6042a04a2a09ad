"""``instantly-oauth``: connect mailboxes from a terminal, look sessions up, run the demo, or
serve the simulator for local runs. This module is its entry point: it parses the command line,
runs the command, and turns how it ended into an exit code; each command, the parser, the live
board, the log's format and the failures' codes have a module of their own beside it.

Configuration is read as ``OAuthManager.from_env`` reads it (``INSTANTLY_API_KEY``,
``INSTANTLY_BASE_URL``, ``INSTANTLY_WORKSPACE``, ``INSTANTLY_STORE``); the key never comes from an
argument that would land in shell history. The global options (``-v``, ``--log-format``,
``--base-url``, ``--api-key-file``) go before or after the command. Every failure is one line on
stderr and an exit code of its own. ``-v`` shows the library's log at INFO on stderr, ``-vv`` at
DEBUG; ``--log-format json`` makes each record one JSON object per line, with its structured
fields (``iox_event`` and the rest).
"""


from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import anyio

from .board import interrupted_state
from .connect import connect
from .demo import demo
from .failures import INTERRUPTED, USAGE, die, explain
from .logs import configure_logging
from .parser import _parser as _parser  # re-exported: the tests read every command's help
from .reads import account, status
from .simulate import simulate

__all__ = ["main"]


_ACCESS = {"connect": True, "status": True, "account": True, "demo": False, "simulate": False}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "count", 1) < 1 or getattr(args, "mailboxes", 1) < 1:
        die(USAGE, "--count and --mailboxes must be at least 1")
    if not _ACCESS[args.command] and (args.base_url or args.api_key_file):
        die(USAGE, f"{args.command} serves its own simulator: --base-url and --api-key-file "
                    "do not apply")
    configure_logging(args.verbose + getattr(args, "more_verbose", 0), args.log_format)
    command = {"connect": connect, "status": status, "account": account,
               "demo": demo, "simulate": simulate}[args.command]
    try:
        return anyio.run(command, args)
    except KeyboardInterrupt:
        print(f"instantly-oauth: interrupted{interrupted_state()}", file=sys.stderr)
        return INTERRUPTED
    except asyncio.CancelledError:
        # Python 3.10: at Ctrl-C the runner (anyio's backport of 3.11's asyncio.Runner) cancels
        # the command's task as on 3.11, but without Task.uncancel it cannot tell that from any
        # other cancellation, so it raises CancelledError where 3.11 raises KeyboardInterrupt.
        # Nothing else cancels the command's task.
        if sys.version_info >= (3, 11):
            raise
        print(f"instantly-oauth: interrupted{interrupted_state()}", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and a code
        failure = explain(exc)
        die(failure.code, str(failure))
