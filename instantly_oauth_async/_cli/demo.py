"""``demo``: the whole job against a built-in simulator, no key: simulated people (most allow,
some deny, a few never come) on a simulator whose limits and lifetimes are compressed, and the
figures that say how it went (inits per simulated minute against the limit, 429s, time to
connect)."""

from __future__ import annotations

import argparse
import random
import statistics
import time

import aiohttp
import anyio

from .._manager.manager import OAuthManager
from .._wire.models import OAuthSession, Provider
from .board import open_console, run_connect
from .failures import OK

DEMO_FACTOR = 40.0  # the simulator's minute lasts 1.5 s, a session 15 s


async def demo(args: argparse.Namespace) -> int:
    # Only the demo needs the simulator (and aiohttp.web); the other commands skip the import.
    from ..testing import Simulator, SimulatorLimits  # noqa: PLC0415

    console = open_console()
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

            board = await run_connect(manager, Provider.GOOGLE, args.mailboxes, None,
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
