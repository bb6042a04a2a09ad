"""The command line's grammar: the commands, their options and help, and the global options that
go before or after a command."""

from __future__ import annotations

import argparse
from typing import Any

from .. import __version__
from .._wire.client import DEFAULT_BASE_URL
from .._wire.models import Provider

_DESCRIPTION = """\
Connect mailboxes to an Instantly workspace from a terminal, look sessions up, run the demo,
or serve the simulator for local runs.

Configuration comes from the environment, as OAuthManager.from_env reads it: INSTANTLY_API_KEY
(required by connect, status and account), INSTANTLY_BASE_URL, INSTANTLY_WORKSPACE and
INSTANTLY_STORE. The key never comes from an argument, which would land in shell history: use
INSTANTLY_API_KEY or --api-key-file. The global options (-v, --log-format, --base-url,
--api-key-file) go before or after the command."""

_EPILOG = """\
exit codes: 0 all connected, 1 some not connected, 2 bad usage, 3 no API key, 4 key refused,
5 API unreachable, 6 rate limited or blocked, 7 another API error, 130 interrupted."""

#: The global options: (flags, keyword arguments) for the main parser, and again (each default
#: SUPPRESS) for every command, so they go before or after it. After it, -v adds to what came
#: before (its own dest) and the others replace it.
_GLOBAL_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("-v", "--verbose"), {"action": "count", "default": 0,
                           "help": "the library's log on stderr: -v INFO, -vv DEBUG"}),
    (("--log-format",), {"choices": ["text", "json"], "default": "text",
                         "help": "json: one object per line with the structured fields"}),
    (("--base-url",), {"metavar": "URL", "default": None,
                       "help": "the API root (else INSTANTLY_BASE_URL, else "
                               f"{DEFAULT_BASE_URL}); plain http only for a loopback host"}),
    (("--api-key-file",), {"metavar": "FILE", "default": None,
                           "help": "read the API key from this file (else INSTANTLY_API_KEY)"}),
]


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    # No abbreviations: ``connect --api-key KEY`` must not be taken for --api-key-file.
    parser = argparse.ArgumentParser(prog="instantly-oauth", description=_DESCRIPTION,
                                     epilog=_EPILOG, formatter_class=formatter,
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flags, options in _GLOBAL_OPTIONS:
        parser.add_argument(*flags, **options)
        after = {**options, "default": argparse.SUPPRESS}
        if flags[0] == "-v":
            after["dest"] = "more_verbose"
        common.add_argument(*flags, **after)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_parser = sub.add_parser

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], help=summary, description=summary,
                          allow_abbrev=False)

    connect = command("connect", "create sessions and follow them to the end")
    connect.add_argument("--provider", required=True, choices=[p.value for p in Provider],
                         help="the mailboxes' provider: google (Google Workspace) or microsoft")
    connect.add_argument("--count", type=int, default=1, metavar="N",
                         help="how many sessions (mailboxes) to create (default 1)")
    connect.add_argument("--expected-email", action="append", metavar="EMAIL",
                         help="the mailbox each session is for, once per session in order: an "
                              "outcome for another mailbox is flagged")
    connect.add_argument("--poll-interval", type=float, default=5.0, metavar="SECONDS",
                         help="seconds between two status reads of a session (default 5, the "
                              "documented pace; every read spends the workspace's budget)")
    connect.add_argument("--open", action="store_true", help="open each auth URL in a browser")
    connect.add_argument("--json", action="store_true", help="one JSON object per line")
    status = command("status", "one status read (a final answer is given once)")
    status.add_argument("session_id", metavar="SESSION_ID", help="the session to read")
    account = command("account", "look a connected mailbox up")
    account.add_argument("email", metavar="EMAIL", help="the connected mailbox's address")
    demo = command("demo", "the whole job against a built-in simulator, no key")
    demo.add_argument("--mailboxes", type=int, default=150, metavar="N",
                      help="how many simulated people to connect (default 150)")
    demo.add_argument("--seed", type=int, default=1,
                      help="seed of the simulated people's choices (default 1)")
    simulate = command("simulate", "serve the simulator on loopback, for the CLI, the "
                                   "examples and your own tools")
    simulate.add_argument("--port", type=int, default=0,
                          help="port on 127.0.0.1 (default 0: a free one, printed)")
    simulate.add_argument("--api-key", metavar="KEY",
                          help="the simulated workspace's API key (default: a random one, "
                               "printed); a made-up key, not your real one")
    simulate.add_argument("--compress", type=float, default=1.0, metavar="FACTOR",
                          help="divide every window and lifetime by FACTOR (a minute lasts "
                               "60/FACTOR s); default 1, the real ones")
    return parser
