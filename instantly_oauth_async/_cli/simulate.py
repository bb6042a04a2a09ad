"""``simulate``: serve the simulator on loopback for the CLI, the examples and your own tools,
print where it serves and its key, and stop it on Ctrl-C or SIGTERM."""


from __future__ import annotations

import argparse
import signal
import sys

import anyio

from .._wire.endpoint import validate_api_key
from .._wire.exceptions import ConfigurationError
from .failures import OK, USAGE, Fail


async def simulate(args: argparse.Namespace) -> int:
    # Only this command and the demo need the simulator (and aiohttp.web).
    from ..testing import Simulator, SimulatorLimits  # noqa: PLC0415

    if args.api_key is not None:
        try:
            validate_api_key(args.api_key)
        except ConfigurationError:
            raise Fail(USAGE, "--api-key must be printable, with no spaces around it, "
                       "and not empty") from None
    if not 0 <= args.port < 65536:
        raise Fail(USAGE, "--port must be from 0 to 65535")
    if not 1 <= args.compress < 1e6:
        raise Fail(USAGE, "--compress must be at least 1")
    limits = SimulatorLimits()
    sim = Simulator(limits=limits.compressed(args.compress) if args.compress != 1 else limits,
                    port=args.port)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            await sim.start()
        except OSError as exc:
            await sim.aclose()
            raise Fail(USAGE, f"cannot listen on 127.0.0.1:{args.port}: "
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
