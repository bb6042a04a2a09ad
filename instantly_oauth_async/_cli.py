"""``instantly-oauth``: connect mailboxes from a terminal, look sessions up, run the demo, or
serve the simulator for local runs.

Configuration is read as ``OAuthManager.from_env`` reads it (``INSTANTLY_API_KEY``,
``INSTANTLY_BASE_URL``, ``INSTANTLY_WORKSPACE``, ``INSTANTLY_STORE``); the key never comes from an
argument that would land in shell history. The global options (``-v``, ``--log-format``,
``--base-url``, ``--api-key-file``) go before or after the command. Every failure is one line on
stderr and an exit code of its own. ``-v`` shows the library's log at INFO on stderr, ``-vv`` at
DEBUG; ``--log-format json`` makes each record one JSON object per line, with its structured
fields (``iox_event`` and the rest).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import signal
import statistics
import sys
import time
import webbrowser
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import anyio

from . import __version__
from ._manager import config as _config
from ._manager.manager import OAuthManager
from ._manager.outcome import ConnectResult
from ._wire.client import DEFAULT_BASE_URL, InstantlyClient, validate_api_key
from ._wire.exceptions import (
    ConfigurationError,
    EnvironmentVariableError,
    ForbiddenError,
    InstantlyError,
    IPBlockedError,
    NotFoundError,
    RateLimitedError,
    TransportError,
    UnauthorizedError,
)
from ._wire.models import OAuthSession, Provider, RetryPolicy

try:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
except ImportError:  # pragma: no cover - the message below says what to install
    Console = None  # type: ignore[assignment,misc]

#: Exit codes, one per kind of failure (documented in the README's CLI reference).
OK, NOT_ALL_CONNECTED, USAGE, NO_KEY, AUTH, UNREACHABLE, LIMITED, API, INTERRUPTED = (
    0, 1, 2, 3, 4, 5, 6, 7, 130)


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What the command line says over the environment: the key from --api-key-file, and
    --base-url. The rest comes from the environment, as ``OAuthManager.from_env`` reads it."""
    given: dict[str, Any] = {}
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _Fail(NO_KEY, f"cannot read --api-key-file: {exc.strerror}") from None
        if not key:
            raise _Fail(NO_KEY, "--api-key-file is empty")
        given["api_key"] = key
    if args.base_url:
        given["base_url"] = args.base_url
    return given


def _client(args: argparse.Namespace) -> InstantlyClient:
    """A client for the one-shot commands, configured as ``from_env`` configures a manager."""
    settings = _config.read_settings(**_overrides(args), store=False)
    return InstantlyClient(settings.api_key, base_url=settings.base_url or DEFAULT_BASE_URL)


def _explain(exc: BaseException) -> _Fail:
    """One line for an error, with its exit code; the key never appears (errors never hold it)."""
    if isinstance(exc, _Fail):
        return exc
    if isinstance(exc, EnvironmentVariableError) and exc.variable == _config.API_KEY:
        return _Fail(NO_KEY, f"{exc}, or pass --api-key-file")
    if isinstance(exc, (UnauthorizedError, ForbiddenError)):
        return _Fail(AUTH, f"the API key was refused ({exc})")
    if isinstance(exc, TransportError):
        return _Fail(UNREACHABLE, f"cannot reach the API: {exc}")
    if isinstance(exc, (RateLimitedError, IPBlockedError)):
        return _Fail(LIMITED, f"rate limited: {exc}")
    if isinstance(exc, ConfigurationError):
        return _Fail(USAGE, str(exc))
    if isinstance(exc, InstantlyError):
        return _Fail(API, f"{type(exc).__name__}: {exc}")
    raise exc


def _console() -> Any:
    if Console is None:
        raise _Fail(USAGE, "the CLI needs rich: pip install 'instantly-oauth-async[cli]'")
    return Console(stderr=True, highlight=False)


# -- connect and the demo share the live view ------------------------------------------------

_boards: list[_Board] = []  # the one running, so Ctrl-C can say what was pending


class _Board:
    """Live counts of pending / connected / denied / expired / failed, and the final table."""

    def __init__(self, total: int) -> None:
        _boards.append(self)
        self.total = total
        self.counts: Counter[str] = Counter()
        self.created = 0
        self.durations: list[float] = []

    def line(self) -> str:
        c = self.counts
        pending = self.created - sum(c.values())
        return (f"created {self.created}/{self.total}  pending {pending}  "  # rich markup
                f"[green]connected {c['connected']}[/]  [yellow]denied {c['denied']}[/]  "
                f"expired {c['expired']}  [red]failed {c['failed']}[/]")

    def record(self, result: ConnectResult, started: float | None) -> None:
        status = result.status.value
        key = {"success": "connected", "expired": "expired"}.get(status, "failed")
        if status == "error" and result.error == "access_denied":
            key = "denied"
        self.counts[key] += 1
        if key == "connected" and started is not None:
            self.durations.append(time.monotonic() - started)

    def summary(self) -> Any:
        table = Table(title="Summary")
        table.add_column("outcome")
        table.add_column("sessions", justify="right")
        for name in ("connected", "denied", "expired", "failed"):
            table.add_row(name, str(self.counts[name]))
        return table


def _result_json(result: ConnectResult) -> str:
    return json.dumps({
        "event": "result", "session_id": result.session.session_id,
        "status": result.status.value, "email": result.email, "error": result.error,
        "error_description": result.error_description,
        "email_mismatch": result.email_mismatch, "reconciled": result.reconciled,
    })


async def _run_connect(
    manager: OAuthManager, provider: Provider, count: int, emails: list[str] | None,
    *, as_json: bool, open_browser: bool, on_session: Any = None, console: Any,
) -> _Board:
    board = _Board(count)
    started: dict[str, float] = {}

    async def announce(session: OAuthSession) -> None:
        board.created += 1
        started[session.session_id] = time.monotonic()
        if as_json:
            print(json.dumps({"event": "session", "session_id": session.session_id,
                              "auth_url": session.auth_url}), flush=True)
        elif on_session is None:
            console.print(f"open to connect: {session.auth_url}", soft_wrap=True)
        if open_browser:
            webbrowser.open(session.auth_url)
        if on_session is not None:
            await on_session(session)

    live = None if as_json else Live(board.line(), console=console, transient=True,
                                     auto_refresh=False)
    with live or contextlib.nullcontext():
        async for result in manager.connect_many(
            provider, count, on_session=announce, expected_emails=emails,
            max_pending=min(count, 100),
        ):
            board.record(result, started.get(result.session.session_id))
            if live is None:
                print(_result_json(result), flush=True)
            else:
                live.update(board.line(), refresh=True)
    return board


async def _connect(args: argparse.Namespace) -> int:
    console = _console()
    provider = Provider(args.provider)
    emails = args.expected_email or None
    if emails is not None and len(emails) != args.count:
        raise _Fail(USAGE, f"give --expected-email {args.count} times, once per session")
    # A person at a terminal wants to hear about an unreachable API in seconds, not a minute.
    retry = RetryPolicy(attempts=3, base=0.5, cap=5.0)
    async with OAuthManager.from_env(**_overrides(args), retry=retry,
                                     poll_interval=args.poll_interval) as manager:
        board = await _run_connect(manager, provider, args.count, emails, as_json=args.json,
                                   open_browser=args.open, console=console)
    if not args.json:
        console.print(board.summary())
    return OK if board.counts["connected"] == args.count else NOT_ALL_CONNECTED


async def _status(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        try:
            status = await client.get_oauth_status(args.session_id)
        except NotFoundError:
            raise _Fail(API, "no such session: a finished session (success or error) is "
                        "deleted on its first read, which alone got its outcome (connect "
                        "reads it as it polls); another workspace's session, or a mistyped "
                        "id, is not found either") from None
    print(json.dumps({"status": status.status.value, "email": status.email,
                      "error": status.error, "error_description": status.error_description}))
    return OK


async def _account(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        try:
            account = await client.get_account(args.email)
        except NotFoundError:
            raise _Fail(API, f"no account {args.email} in this workspace: it was never "
                        "connected, or has been removed") from None
    print(json.dumps({"email": account.email, "status": account.status,
                      "provider_code": account.provider_code,
                      "first_name": account.first_name, "last_name": account.last_name,
                      "timestamp_created": account.timestamp_created.isoformat(),
                      "timestamp_updated": account.timestamp_updated.isoformat()}))
    return OK


# -- the demo ----------------------------------------------------------------------------------

DEMO_FACTOR = 40.0  # the simulator's minute lasts 1.5 s, a session 15 s


async def _demo(args: argparse.Namespace) -> int:
    # Only the demo needs the simulator (and aiohttp.web); the other commands skip the import.
    from .testing import Simulator, SimulatorLimits  # noqa: PLC0415

    console = _console()
    rng = random.Random(args.seed)  # noqa: S311 - simulated people, not security
    window = 60 / DEMO_FACTOR
    async with Simulator(limits=SimulatorLimits().compressed(DEMO_FACTOR)) as sim, \
            aiohttp.ClientSession() as browser:
        workspace = sim.add_workspace("demo")
        console.print(f"[bold]demo[/]: a simulated Instantly API at {sim.url}, its limits and "
                      f"lifetimes compressed {DEMO_FACTOR:g}x (a minute lasts {window:g} s); "
                      f"{args.mailboxes} simulated people, most allow, some deny, a few never "
                      "come.", soft_wrap=True)
        async def person(session: OAuthSession) -> None:
            choice = rng.choices(["allow", "deny", "away"], [80, 12, 8])[0]
            if choice == "away":
                return
            await anyio.sleep(rng.uniform(1.0, 5.0))  # reading the consent page
            email = f"user{rng.randrange(10**6)}@demo-company.io"
            data = {"action": choice, "email": email, "name": "Demo Person"}
            async with browser.post(session.auth_url, data=data) as response:
                await response.read()

        started = time.monotonic()
        async with OAuthManager(
            workspace.api_key, base_url=sim.url,
            **sim.limits.manager_limits(poll_interval=0.5, expiry_grace=1.5),
        ) as manager, anyio.create_task_group() as people:
            async def on_session(session: OAuthSession) -> None:
                people.start_soon(person, session)  # each person in their own time

            board = await _run_connect(manager, Provider.GOOGLE, args.mailboxes, None,
                                       as_json=False, open_browser=False,
                                       on_session=on_session, console=console)
            people.cancel_scope.cancel()
        took = time.monotonic() - started
    inits = sorted(t for ts in sim.init_times.values() for t in ts)
    rejected = sum(1 for r in sim.requests if r.status == 429)
    span_minutes = max(inits[-1] - inits[0], window) / window if inits else 1.0
    console.print(board.summary())
    durations = board.durations
    p50 = statistics.median(durations) if durations else 0.0
    p95 = (statistics.quantiles(durations, n=20)[-1] if len(durations) >= 2
           else (durations[0] if durations else 0.0))
    # Rates are per simulated minute (the limits' own unit); waits are real seconds, with
    # what they stand for in simulated time beside them.
    console.print(
        f"inits: {len(inits)} in {span_minutes:.1f} simulated minutes "
        f"({len(inits) / span_minutes:.0f}/simulated min against the limit of 75/min); "
        f"429s: {rejected}; time to connect p50 {p50:.1f} s, p95 {p95:.1f} s of real time "
        f"({p50 / window:.1f} and {p95 / window:.1f} simulated minutes); the demo took "
        f"{took:.0f} s of real time",
        soft_wrap=True)
    return OK


# -- logging -----------------------------------------------------------------------------------

#: A LogRecord's own attributes; anything else on a record came through ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class _Stderr:
    """Whatever ``sys.stderr`` is at each write: rich's live view swaps it for a proxy that
    prints above the view, so log lines and the view do not garble each other."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then the record's structured fields (``iox_event``, ``operation``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((key, value) for key, value in vars(record).items()
                   if key not in _RECORD_FIELDS and not key.startswith("_"))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _configure_logging(verbosity: int, log_format: str) -> None:
    """``-v``: the library's records at INFO on stderr; ``-vv``: at DEBUG. None without."""
    if verbosity <= 0:
        return
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    library = logging.getLogger("instantly_oauth_async")
    library.addHandler(handler)
    library.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)


# -- entry point -------------------------------------------------------------------------------

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


async def _simulate(args: argparse.Namespace) -> int:
    # Only this command and the demo need the simulator (and aiohttp.web).
    from .testing import Simulator, SimulatorLimits  # noqa: PLC0415

    if args.api_key is not None:
        try:
            validate_api_key(args.api_key)
        except ConfigurationError:
            raise _Fail(USAGE, "--api-key must be printable, with no spaces around it, "
                        "and not empty") from None
    if not 0 <= args.port < 65536:
        raise _Fail(USAGE, "--port must be from 0 to 65535")
    if not 1 <= args.compress < 1e6:
        raise _Fail(USAGE, "--compress must be at least 1")
    limits = SimulatorLimits()
    sim = Simulator(limits=limits.compressed(args.compress) if args.compress != 1 else limits,
                    port=args.port)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            await sim.start()
        except OSError as exc:
            await sim.aclose()
            raise _Fail(USAGE, f"cannot listen on 127.0.0.1:{args.port}: "
                        f"{exc.strerror or exc}") from None
        try:
            workspace = sim.add_workspace("local", api_key=args.api_key)
            print(f"INSTANTLY_BASE_URL={sim.url}", flush=True)
            if args.api_key is None:  # a made-up key the caller needs to know
                print(f"INSTANTLY_API_KEY={workspace.api_key}", flush=True)
            print(f"instantly-oauth: the simulator serves {sim.url} (limits and lifetimes "
                  f"{'real' if args.compress == 1 else f'compressed {args.compress:g}x'}); "
                  "each auth_url is a consent form: POST it action=allow&email=ADDRESS "
                  "(or action=deny). Ctrl-C or SIGTERM stops it.", file=sys.stderr, flush=True)
            async for _ in signals:
                break
        finally:
            with anyio.CancelScope(shield=True):
                await sim.aclose()
    return OK


_ACCESS = {"connect": True, "status": True, "account": True, "demo": False, "simulate": False}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "count", 1) < 1 or getattr(args, "mailboxes", 1) < 1:
        _die(USAGE, "--count and --mailboxes must be at least 1")
    if not _ACCESS[args.command] and (args.base_url or args.api_key_file):
        _die(USAGE, f"{args.command} serves its own simulator: --base-url and --api-key-file "
                    "do not apply")
    _configure_logging(args.verbose + getattr(args, "more_verbose", 0), args.log_format)
    command = {"connect": _connect, "status": _status, "account": _account,
               "demo": _demo, "simulate": _simulate}[args.command]
    try:
        return anyio.run(command, args)
    except KeyboardInterrupt:
        state = ""
        if _boards:
            board = _boards[-1]
            pending = board.created - sum(board.counts.values())
            state = (f"; {pending} sessions were pending (their links work until they expire), "
                     f"{board.counts['connected']} connected")
        print(f"instantly-oauth: interrupted{state}", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and a code
        failure = _explain(exc)
        _die(failure.code, str(failure))


def _die(code: int, message: str) -> NoReturn:
    print(f"instantly-oauth: {message}", file=sys.stderr)
    raise SystemExit(code)
