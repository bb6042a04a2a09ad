"""Rules 6-9 (see ``_checker``): no 429, every session and handle ends within its bound, memory
stays bounded, ``start()`` and ``attach()`` raise only documented errors."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from ._history import Event
from ._model import Model, Session
from ._verdict import DEFECTS, Violation, by, terminal_text

RSS_FACTOR, RSS_SLACK_KIB, RSS_WARM = 1.5, 32 * 1024, 10.0


def rule6(model: Model) -> list[Violation]:
    limited = sorted((r for r in model.requests if r["status"] == 429), key=lambda r: r["at"])
    clusters: list[list[dict[str, Any]]] = []
    for r in limited:
        if clusters and r["at"] - clusters[-1][-1]["at"] <= 2.0:
            clusters[-1].append(r)
        else:
            clusters.append([r])
    found = []
    for cluster in clusters:
        first, last = float(cluster[0]["at"]), float(cluster[-1]["at"])
        kinds = Counter(f"{r['kind']}/{r['outcome'] or 'limit'}" for r in cluster)
        wiped = [f for f in model.faults_of("redis-kill-empty") if f.t0 <= first <= f.t1 + 10]
        found.append(Violation("6", None, first, (
            f"{len(cluster)} x 429 from {model.rel(first)} to {model.rel(last)} "
            f"({dict(kinds)}); faults in the 10 s before: {model.near(first - 10, last)}"),
            DEFECTS["empty-429"] if wiped else None))
    return found


def _unknown_ok(model: Model, s: Session, t: float) -> bool:
    """docs/FLEET.md: after a registry wipe (or a crash losing the last writes), a session
    whose poller was gone (dead, closed, or paused through the lease in which it would have
    registered it again), or that was decided before, is unknown; ``attach()`` between the wipe
    and the holder's next heartbeat finds nothing; and a session started while the registry was
    unreachable is unknown until its owner's first heartbeat that reaches it."""
    lease = model.config.lease
    # start() registers the session between the init's answer (``created``) and its return
    # (``started``); a pause of the starter can put seconds between the two (seed 2 on Redis,
    # stop 35's CI: init answered, the starter paused 5.5 s, Redis wiped meanwhile).
    for fault in model.faults_of("redis-kill", "redis-stop-long"):
        if s.created <= fault.t1 + 0.5 and s.started >= fault.t0 and t <= fault.t1 + lease:
            return True  # registered while away: by a heartbeat after the return
    for fault in model.faults_of("redis-kill-empty", "redis-kill-everysec"):
        wiped = fault.details["t_kill"]
        if not min(s.created, s.started - 2.0) <= wiped <= t:
            continue
        terminal, expires = s.terminal, (s.person or {}).get("expires", math.inf)
        if any(e["t"] <= wiped for e in s.outcomes()) or (
                terminal is not None and terminal.answered <= wiped) or any(
                expires <= r.at <= wiped for r in s.reads):
            return True  # decided before the wipe: its stored outcome went with it
        before = [r for r in s.reads if r.at <= wiped]
        holder = model.by_ip.get(before[-1].ip) if before else model.incarnations.get(s.starter)
        if holder is None or not holder.alive(wiped) or not holder.alive(fault.t1 + lease) \
                or holder.paused(wiped - 1, fault.t1 + lease):
            return True
        if t <= fault.t1 + lease:
            return True  # before the holder's next heartbeat registered it again
        if fault.kind == "redis-kill-everysec":
            return True
    return False


def rule7(model: Model, s: Session) -> list[Violation]:
    found = []
    unknown = [e for e in s.results + s.attach_errors if e["kind"] == "unknown"]
    ok_unknown = [e for e in unknown if _unknown_ok(model, s, e["t"])]
    for e in unknown:
        if e not in ok_unknown:
            found.append(Violation("7", s.sid, e["t"], (
                f"UnknownSessionError ({by(model, e)}) where docs/FLEET.md promises the "
                f"session (its poller lived through the wipe); person: "
                f"{(s.person or {}).get('state') or 'nothing'}; cancelled: "
                f"{[by(model, c) for c in s.cancels] or 'no'}; readers: "
                f"{', '.join(sorted({model.who(r.ip) for r in s.reads})) or 'none'}; faults "
                f"{model.near(s.started, e['t'])}"),
                DEFECTS["wipe"] if "registry-wipe" in s.causes and not s.cancels else None))
            return found  # what follows (no end within the bound) is its consequence
    ends = [e["t"] for e in s.outcomes() + ok_unknown]
    bound = _end_bound(model, s)
    first = min(ends, default=math.inf)
    if first <= bound:
        return found
    watching = [h for h in s.handles if h["t"] <= bound and _live(model, s, h, bound)]
    terminal = s.terminal
    if not watching and terminal is not None and terminal.answered <= bound:
        return found  # decided on the server in time, and nobody was there to see it sooner
    if not watching and math.isfinite(first):
        return found
    if not watching and not any(i.alive(bound) for i in model.incarnations.values()
                                if i.worker != "audit"):
        return found  # the whole fleet had stopped (the run's end): nobody left to poll it
    hint = DEFECTS["cancel"] if s.cancels else None
    person = s.person or {}
    found.append(Violation("7", s.sid, bound, (
        f"no outcome within {model.config.end_bound:g}s of its creation "
        f"({model.rel(s.created)}); first at {model.rel(first)}; person: "
        f"{person.get('plan')} {person.get('state') or ''} at {model.rel(person.get('acted'))}; "
        f"awaiters then: {', '.join(by(model, h) for h in watching) or 'none'}; readers: "
        f"{', '.join(sorted({model.who(r.ip) for r in s.reads})) or 'none'}; "
        f"cancelled: {[by(model, c) for c in s.cancels]}; faults: "
        f"{model.near(s.created, bound)}"), hint))
    return found


def _end_bound(model: Model, s: Session) -> float:
    """``end_bound`` after the creation, pushed later by every fault that stops the session's
    progress meanwhile (README, "Deadlines": the holder decides by the deadline; one paused or
    cut off from the store decides nothing, and the session ends once the store is back and a
    holder reads it): the store away, or its budgets waiting (``Fault.budget_gone``), and a
    pause of a manager that read it. Found again until it stops moving (at most 5 times)."""
    config = model.config
    readers = {model.by_ip[r.ip] for r in s.reads if r.ip in model.by_ip}
    bound = s.created + config.end_bound
    for _ in range(5):
        spans = [span for f in model.faults if (span := f.budget_gone(config)) is not None]
        spans += [p for i in readers for p in i.pauses]
        extra = sum(min(b, bound) - max(a, s.created) for a, b in spans
                    if a <= bound and b >= s.created)
        moved = s.created + config.end_bound + extra
        if moved <= bound:
            break
        bound = moved
    return bound


#: faults that stop a manager or the store for a while: near them, rule 7's reaction bound
#: does not apply (its end bound still does)
HEAVY = ("kill9", "term", "close", "pause", "redis-kill", "redis-stop-long", "redis-latency")


def rule7_react(model: Model, s: Session) -> list[Violation]:
    """Once the person answered, a live awaiter learns the outcome within ``react_bound``."""
    person, config = s.person or {}, model.config
    acted = person.get("acted")
    if acted is None:
        return []
    bound = acted + config.react_bound
    if any(f.kind.startswith(HEAVY) and f.t0 <= bound and f.t1 >= acted - config.lease
           for f in model.faults):
        return []
    first = min((e["t"] for e in s.outcomes()), default=math.inf)
    watching = [h for h in s.handles if h["t"] <= acted and _live(model, s, h, bound)]
    if first <= bound or not watching:
        return []
    return [Violation("7", s.sid, bound, (
        f"the person answered ({person['state']}) at {model.rel(acted)} and no fault stopped "
        f"a manager or the store, yet no awaiter had the outcome {config.react_bound:g}s later "
        f"(first at {model.rel(first)}); awaiters: "
        f"{', '.join(by(model, h) for h in watching)}; {terminal_text(model, s)}; "
        f"cancelled: {[by(model, c) for c in s.cancels]}"),
        DEFECTS["cancel"] if s.cancels else None)]


def _live(model: Model, s: Session, handle: Event, t: float) -> bool:
    """A handle that could have seen the outcome at ``t``: its process alive and running, and
    the handle not ended otherwise (closed, cancelled) by then."""
    inc = model.incarnations.get(f"{handle['w']}#{handle['inc']}")
    if inc is None or not inc.alive(t) or inc.paused(t - model.config.lease, t):
        return False
    via = "start" if handle["ev"] == "start" else "attach"
    return not any(e["w"] == handle["w"] and e["inc"] == handle["inc"] and e["via"] == via
                   and e["t"] <= t for e in s.results)


def rule7_closes(model: Model) -> list[Violation]:
    found = []
    unresolved: dict[tuple[str, int], list[Event]] = defaultdict(list)
    starts_late = {(e["w"], e["inc"], e["sid"]) for e in model.events
                   if e["ev"] == "start" and e.get("closing")}
    for e in model.events:
        if e["ev"] == "unresolved":
            unresolved[(e["w"], e["inc"])].append(e)
        elif e["ev"] == "closed" and e.get("hung"):
            found.append(Violation("7", None, e["t"], (
                f"{e['w']}#{e['inc']}: aclose() had not returned after 10 s")))
    exits = {(e["w"], e["inc"]) for e in model.events if e["ev"] == "exit"}
    crashes = {(e["w"], e["inc"]): e for e in model.events if e["ev"] == "crash"}
    for one in model.incarnations.values():
        key = (one.worker, one.inc)
        if key in crashes or (one.how != "kill9" and key not in exits and one.worker != "audit"):
            crash = crashes.get(key)
            found.append(Violation("7", None, one.opened, (
                f"{one.label} (pid {one.pid}) ended without closing: "
                + (f"{crash['exc']}: {crash['msg']}" if crash else "no exit recorded")
                + f"; see {one.label.replace('#', '.')}.err in the run's logs/")))
    for (w, inc), events in unresolved.items():
        via = Counter(str(e["via"]) for e in events)
        late = [e for e in events if (w, inc, e["sid"]) in starts_late]
        hint = DEFECTS["attach-close"] if via["attach"] else DEFECTS["start-close"]
        found.append(Violation("7", events[0]["sid"], events[0]["t"], (
            f"{w}#{inc}: {len(events)} handles unresolved {model.config.close_wait:g}s after "
            f"aclose() returned ({dict(via)}; {len(late)} from a start() that returned after "
            f"the close began): {', '.join(str(e['sid'])[:12] for e in events[:8])}"), hint))
    return found


def rule8(model: Model) -> list[Violation]:
    found = []
    for pid, (_, warm, end) in rss_by_pid(model).items():
        if end[1] > RSS_FACTOR * warm[1] + RSS_SLACK_KIB:
            found.append(Violation("8", None, end[0], (
                f"pid {pid}: RSS {end[1] / 1024:.1f} MiB at the end, "
                f"{warm[1] / 1024:.1f} MiB after warm-up (bound {RSS_FACTOR} x + "
                f"{RSS_SLACK_KIB // 1024} MiB)")))
    return found


def rss_by_pid(model: Model) -> dict[int, tuple[float, tuple[float, int], tuple[float, int]]]:
    """Per process that lived 30 s or more: its first sample's time, the sample after warm-up,
    and the last."""
    samples: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for e in model.events:
        if e["ev"] == "rss":
            samples[e["pid"]].append((e["t"], e["kib"]))
    out = {}
    for pid, rows in samples.items():
        rows.sort()
        warm = next((r for r in rows if r[0] >= rows[0][0] + RSS_WARM), None)
        if warm is not None and rows[-1][0] - rows[0][0] >= 30:
            out[pid] = (rows[0][0], warm, rows[-1])
    return out


START_ERRORS = frozenset({"StartTimeoutError", "CircuitOpenError", "ClientStateError"})
ATTACH_ERRORS = frozenset({"UnknownSessionError", "ClientStateError",
                           "RegistryUnavailableError"})


def rule9(model: Model) -> list[Violation]:
    found = []
    for e in model.events:
        allowed = {"start_err": START_ERRORS, "attach_err": ATTACH_ERRORS}.get(e["ev"])
        if allowed is not None and e["exc"] not in allowed:
            found.append(Violation("9", e.get("sid"), e["t"], (
                f"{e['ev'].removesuffix('_err')}() by {e['w']}#{e['inc']} raised {e['exc']}: "
                f"{e['msg']}; faults then: {model.near(e['t'] - 5, e['t'])}")))
    return found
