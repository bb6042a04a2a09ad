"""The run as the checker sees it: worker incarnations and their fates, the faults, and each
session with its ground truth, its awaiters' results and its status reads on the server.

Every time is ``time.monotonic()`` of the host, which is also the simulator's clock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import attrs

from ._config import Config
from ._harness import RunData
from ._history import Event

#: result kinds that are outcomes of a session (the rest end only a handle)
OUTCOMES = frozenset({"success", "error", "expired", "lost"})
#: how soon after a pause a read begun before it reaches the server: the loop's first turns on
#: waking (0.01 s in the two runs that found it: seed 50 on SQLite, seed 3 in stop 32's CI)
WAKE_SEND = 0.25


@attrs.define(eq=False)
class Incarnation:
    worker: str
    inc: int
    ip: str
    pid: int
    opened: float
    ended: float = math.inf
    how: str = "lived"  #: "kill9", "term", "close", or "lived" (to the run's end)
    closing: float | None = None  #: when its graceful close began
    pauses: list[tuple[float, float]] = attrs.Factory(list)

    @property
    def label(self) -> str:
        return f"{self.worker}#{self.inc}"

    def alive(self, t: float) -> bool:
        return self.opened <= t < self.ended and (self.closing is None or t < self.closing)

    def paused(self, t0: float, t1: float) -> bool:
        return any(p0 <= t1 and p1 >= t0 for p0, p1 in self.pauses)


@attrs.frozen
class Fault:
    kind: str
    target: str
    t0: float
    t1: float
    details: dict[str, Any]

    @property
    def store_down(self) -> bool:
        """The store unreachable (or slower than its timeout) from t0 to t1."""
        return self.kind.startswith(("redis-kill", "redis-stop-long"))

    def budget_gone(self, config: Config) -> tuple[float, float] | None:
        """When the budgets gave no slot because of this fault, as documented: nothing while
        Redis is away (``fallback_share`` 0), then one more window on the local share (README,
        "Fleet mode"); after a data loss, the longest window plus the longest hold on top
        (docs/FLEET.md, "Budgets across a data loss")."""
        if not self.store_down:
            return None
        limits = config.limits()
        window = max(limits.init_window, limits.api_minute_window)
        hold = max(config.request_timeout, config.status_timeout) + 5.0
        return (self.t0, self.t1 + window + (hold if self.kind == "redis-kill-empty" else 0.0))


@attrs.frozen
class Read:
    at: float
    received: float
    answered: float
    status: int
    outcome: str
    ip: str


@attrs.define
class Session:
    sid: str
    starter: str  #: the incarnation's label
    started: float
    expected_email: str | None
    person: dict[str, Any] | None
    reads: list[Read] = attrs.Factory(list)
    results: list[Event] = attrs.Factory(list)  #: "result" events of every awaiter
    attach_errors: list[Event] = attrs.Factory(list)
    handles: list[Event] = attrs.Factory(list)  #: "start" and "attach" events
    cancels: list[Event] = attrs.Factory(list)
    causes: list[str] = attrs.Factory(list)  #: faults that may cost it its answer

    @property
    def created(self) -> float:
        return float(self.person["created"]) if self.person else self.started

    @property
    def terminal(self) -> Read | None:
        """The read that was served the one-time answer (success or error), if any was."""
        person = self.person
        if not person or person.get("state") not in ("success", "error"):
            return None
        return next((r for r in self.reads if r.at > person["acted"] and r.status == 200), None)

    def outcomes(self) -> list[Event]:
        return [e for e in self.results if e["kind"] in OUTCOMES]


@attrs.define
class Model:
    config: Config
    t0: float
    incarnations: dict[str, Incarnation]
    by_ip: dict[str, Incarnation]
    faults: list[Fault]
    sessions: dict[str, Session]
    events: list[Event]
    requests: list[dict[str, Any]]
    people: dict[str, dict[str, Any]]

    def rel(self, t: float | None) -> str:
        return "never" if t is None or math.isinf(t) else f"+{t - self.t0:.2f}s"

    def who(self, ip: str) -> str:
        found = self.by_ip.get(ip)
        return found.label if found else ip

    def faults_of(self, *kinds: str) -> list[Fault]:
        return [f for f in self.faults if f.kind.startswith(kinds)]

    def near(self, t0: float, t1: float) -> str:
        """The faults that overlap ``[t0, t1]``, for a violation's message."""
        found = [f"{f.kind}({f.target}) {self.rel(f.t0)}..{self.rel(f.t1)}"
                 for f in self.faults if f.t0 <= t1 and f.t1 >= t0]
        return "; ".join(found) or "none"


def build(data: RunData) -> Model:
    incarnations: dict[str, Incarnation] = {}
    faults: list[Fault] = []
    for e in data.events:
        if e["ev"] == "open":
            inc = Incarnation(e["w"], e["inc"], e["ip"], e["pid"], e["t"])
            incarnations[inc.label] = inc
        elif e["ev"] == "fault":
            details = {k: v for k, v in e.items()
                       if k not in ("t", "w", "inc", "ev", "kind", "target", "t0", "t1")}
            faults.append(Fault(e["kind"], e["target"], e["t0"], e["t1"], details))
    for e in data.events:
        closing = incarnations.get(f"{e['w']}#{e['inc']}")
        if closing is not None and e["ev"] == "closing":
            closing.closing = e["t"]
    for fault in faults:
        victim = incarnations.get(f"{fault.target}#{fault.details.get('incarnation')}")
        if victim is None:
            continue
        if fault.kind == "kill9":
            victim.ended, victim.how = fault.t0, "kill9"
        elif fault.kind in ("term", "close"):
            victim.ended, victim.how = fault.t1, fault.kind
        elif fault.kind.startswith("pause"):
            victim.pauses.append((fault.t0, fault.t1))
    people = {p["sid"]: p for p in data.truth}
    sessions = _sessions(data.events, incarnations, people)
    reads: dict[str, list[Read]] = defaultdict(list)
    for r in data.log:
        if r["kind"] == "status":
            sid = r["path"].rsplit("/", 1)[-1]
            received = r["received"] if r["received"] is not None else r["at"]
            answered = r["answered"] if r["answered"] is not None else r["at"]
            reads[sid].append(Read(r["at"], received, answered, r["status"], r["outcome"],
                                   r["ip"]))
    for sid, session in sessions.items():
        session.reads = sorted(reads.get(sid, []), key=lambda r: r.received)
    model = Model(data.config, data.t0, incarnations,
                  {i.ip: i for i in incarnations.values()}, sorted(faults, key=lambda f: f.t0),
                  sessions, data.events, data.log, people)
    for session in sessions.values():
        session.causes = causes(model, session)
    return model


def _sessions(events: list[Event], incarnations: dict[str, Incarnation],
              people: dict[str, dict[str, Any]]) -> dict[str, Session]:
    sessions: dict[str, Session] = {}
    for e in events:
        if e["ev"] == "start":
            sessions[e["sid"]] = Session(e["sid"], f"{e['w']}#{e['inc']}", e["t"],
                                         e.get("expected_email"), people.get(e["sid"]))
    for e in events:
        session = sessions.get(e.get("sid", ""))
        if session is None:
            continue
        if e["ev"] == "result":
            session.results.append(e)
        elif e["ev"] == "attach_err":
            session.attach_errors.append(e)
        elif e["ev"] in ("start", "attach"):
            session.handles.append(e)
        elif e["ev"] == "cancel":
            session.cancels.append(e)
    return sessions


def causes(model: Model, s: Session) -> list[str]:
    """The faults that may have cost ``s`` its one-time answer (docs/FLEET.md's table), each by
    name, up to the session's first ``OutcomeLostError`` (or its last read).
    ``owner-closed-after-read`` is no excuse the table gives: the checker flags it."""
    found: list[str] = []
    config = model.config
    lost = [e for e in s.outcomes() if e["kind"] == "lost"]
    t_end = min((e["t"] for e in lost), default=s.reads[-1].at if s.reads else s.started)
    terminal = s.terminal
    if terminal is not None:
        # after a success read the account is fetched before the outcome is written
        window = (terminal.received, terminal.answered + 2 * config.request_timeout + 1.0)
        if terminal.outcome == "acted-then-reset":
            found.append("wire-loss")
        consumer = model.by_ip.get(terminal.ip)
        # another process had the answer before any loss; not what the reader itself wrote
        # late, on waking from a pause it took between reading and storing
        stored = any(e["kind"] in ("success", "error") and terminal.answered <= e["t"] <= t_end
                     and (e["w"], e["inc"]) != (getattr(consumer, "worker", None),
                                                getattr(consumer, "inc", None))
                     and not (consumer is not None
                              and consumer.paused(terminal.answered, e["t"]))
                     for e in s.results)
        if consumer is not None and not stored:  # else the answer reached the registry
            # its own awaiter's outcome came after the write was tried: its fate is moot then
            # (a handle of it that ended before the answer came, cancelled say, tells nothing)
            mine = [e["t"] for e in s.results
                    if (e["w"], e["inc"]) == (consumer.worker, consumer.inc)
                    and e["t"] >= terminal.answered]
            window = (window[0], min([window[1], *mine]))
            found += consumer_fate(model, consumer, window)
        if any(sent_on_waking(model, s, r) for r in s.reads if r.received >= terminal.received):
            found.append("paused-before-send")  # one of its reader and the adopter reads 404
        for fault in model.faults_of("redis-kill-everysec"):
            if fault.details["t_everysec"] - 1.0 <= terminal.answered <= fault.details["t_kill"]:
                found.append("everysec-loss")
    readers = {model.by_ip[r.ip] for r in s.reads if r.ip in model.by_ip}
    readers |= {model.incarnations[s.starter]} if s.starter in model.incarnations else set()
    for fault in model.faults_of("redis-kill-empty"):
        wiped = fault.details["t_kill"]
        if s.started - 1.0 <= wiped <= t_end:
            found.append("registry-wipe")
            if any(i.paused(wiped - config.lease, wiped + config.lease) for i in readers):
                found.append("wipe-while-paused")
    deadline = (s.created + config.ttl, t_end)  # from expiry to giving up: no read
    gone = [span for f in model.faults if (span := f.budget_gone(config)) is not None]
    # a slow store gives its slots slowly: no read may come before the deadline either
    gone += [(f.t0, f.t1) for f in model.faults_of("redis-latency")]
    unread = any(why in str(e.get("msg")) for e in lost
                 for why in ("no status read could be made", "no answer from the server",
                             "got no clear answer"))
    if unread and (any(a <= deadline[1] and b >= deadline[0] for a, b in gone)
                   or any(i.paused(*deadline) for i in readers)):
        found.append("no-read-before-deadline")
    if unread and any(r.outcome == "acted-then-reset" and deadline[0] <= r.at <= deadline[1]
                      for r in s.reads):  # its answers after expiry lost on the wire
        found.append("wire-loss-at-deadline")
    return found


def sent_on_waking(model: Model, s: Session, read: Read) -> bool:
    """docs/FLEET.md: a process paused between the lease check that allowed a read and handing
    the read to the kernel sends it on waking, with its lease perhaps lapsed and ``s`` adopted
    meanwhile. Seen from outside: the read reached the server within ``WAKE_SEND`` of the end
    of its reader's pause, one longer than the read margin (a tenth of a lease: a shorter pause
    cannot outlast the time a lease check leaves), and another process read ``s`` after that
    pause began. A read the woken process decided afresh would be refused by its lapsed lease
    (tests/test_fleet_processes.py's SIGSTOP test holds the library to that)."""
    reader = model.by_ip.get(read.ip)
    margin = model.config.lease / 10
    return reader is not None and any(
        p1 - p0 > margin and p1 <= read.received <= p1 + WAKE_SEND
        and any(other.ip != read.ip and other.received >= p0 for other in s.reads)
        for p0, p1 in reader.pauses)


def consumer_fate(model: Model, consumer: Incarnation, window: tuple[float, float]
                   ) -> list[str]:
    """What befell the incarnation that read the one-time answer, while it had to store it."""
    found = []
    if consumer.how == "kill9" and window[0] <= consumer.ended <= window[1]:
        found.append("owner-killed-after-read")
    if consumer.paused(*window):
        found.append("owner-paused-after-read")
    if consumer.closing is not None and window[0] <= consumer.closing <= window[1]:
        found.append("owner-closed-after-read")
    gone = min(consumer.ended, consumer.closing or math.inf)
    if any(f.store_down and f.t1 >= window[0] and f.t0 <= gone <= f.t1 for f in model.faults):
        found.append("registry-unreachable-owner-gone")
    return found
