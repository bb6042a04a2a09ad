"""The knobs of one run, shared by the harness, the worker processes and the simulator's process
(each gets them as one JSON argument), and the bounds the checker holds the run to."""

from __future__ import annotations

import json
from typing import Any

import attrs

from instantly_oauth_async.testing import SimulatorLimits

API_KEY = "chaos_key_not_a_secret"


@attrs.frozen
class StoreSpec:
    """What a store allows: whether processes can share it, and the faults the nemesis can
    inject into it (the store's own server: killed, paused, slowed)."""

    shared_across_processes: bool
    faults: tuple[str, ...] = ()


#: The stores a run can use (``--store``). To add one (say sqlite): an entry here, a branch in
#: ``_worker.open_store`` (the URL it gets is a path in the run's folder unless the harness
#: starts a server for it, as for redis), and, if the nemesis can fault it, its faults.
STORES: dict[str, StoreSpec] = {
    "memory": StoreSpec(shared_across_processes=False),
    "redis": StoreSpec(shared_across_processes=True, faults=(
        "redis-kill-always", "redis-kill-everysec", "redis-kill-empty", "redis-stop-short",
        "redis-stop-long", "redis-latency")),
    # one file on this host: the workers' own faults (a SIGSTOP may hold its write lock)
    "sqlite": StoreSpec(shared_across_processes=True),
}


@attrs.frozen
class Config:
    seed: int
    seconds: float
    store: str
    workers: int = 3
    #: the simulator's limits: documented counts, every duration divided by ``factor`` (a 60 s
    #: window lasts 3 s); but the workspace's init limit tightened, the standard "per second"
    #: limit made 10 per 0.5 s, and polling allowed the whole standard budget, so that the
    #: fleet runs at the server's limits and any slot it forgets (say across an empty Redis
    #: restart) shows as a 429
    factor: float = 20.0
    init_per_workspace: int = 6
    api_per_second: int = 10
    api_second_window: float = 0.5
    ttl: float = 12.0  #: a session's lifetime on the server
    poll_interval: float = 0.3
    lease: float = 3.0
    status_timeout: float = 1.0
    request_timeout: float = 2.0
    expiry_grace: float = 3.0
    start_timeout: float = 5.0
    #: mean seconds between one worker's starts: together more than the init limit allows
    start_every: float = 1.2
    attach_p: float = 0.4  #: chance that each other worker attaches to a session, too
    expected_p: float = 0.6  #: share of sessions started with ``expected_email``
    microsoft_p: float = 0.2
    wire_loss: float = 0.03  #: status answers acted on by the server, then lost on the wire
    close_wait: float = 3.0  #: how long handles may take to resolve after ``aclose()``

    def limits(self) -> SimulatorLimits:
        base = SimulatorLimits(init_per_workspace=self.init_per_workspace,
                               api_per_second=self.api_per_second).compressed(self.factor)
        return attrs.evolve(base, api_second_window=self.api_second_window,
                            session_ttl=self.ttl, purge_after=3 * self.ttl)

    def manager_kwargs(self) -> dict[str, Any]:
        return {**self.limits().manager_limits(status_share=1.0),
                "poll_interval": self.poll_interval,
                "session_lease": self.lease, "status_timeout": self.status_timeout,
                "request_timeout": self.request_timeout, "expiry_grace": self.expiry_grace,
                "start_timeout": self.start_timeout, "fetch_account": True}

    @property
    def end_bound(self) -> float:
        """Seconds from a session's creation by which some awaiter must know how it ended.

        docs/FLEET.md and the README: the server answers ``expired`` from ``ttl`` on; the
        manager gives up ``expiry_grace`` past it whatever the store does; after a kill -9,
        another manager adopts within one lease plus one adoption period (about 1.67 x lease);
        a watcher re-reads the registry at least every poll interval. Plus 2 s for reads and
        wake-ups.
        """
        return self.ttl + self.expiry_grace + 2 * self.lease + 2.0

    @property
    def react_bound(self) -> float:
        """Seconds from the person's answer to its outcome at a live awaiter, when no fault
        that stops a manager or the store came near: the owner reads every poll interval
        (each read bounded by status_timeout), fetches the account, writes the outcome; a
        watcher re-reads the registry every poll interval. One lease of slack (a hand-over),
        plus 2 s."""
        return 2 * self.poll_interval + self.lease + 2.0

    @property
    def drain(self) -> float:
        """How long the run waits, once the nemesis stopped, for every session to end."""
        return self.end_bound + self.lease + 2.0

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls(**json.loads(text))


def ip_for(index: int, incarnation: int) -> str:
    """The loopback address a worker incarnation sends from, so the simulator's log tells whose
    request each was (Linux routes all of 127.0.0.0/8 to the loopback)."""
    return f"127.{10 + index}.{incarnation // 250}.{incarnation % 250 + 1}"


AUDIT_INDEX = 90  #: the audit's manager, at the end
