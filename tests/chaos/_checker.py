"""The rules every run is held to, over the whole history and the simulator's request log.

1. No invented outcome: a success needs the person's allow with that mailbox, an error their
   deny, ``expired`` that they never acted before the session's end (and not before it).
2. Every awaiter, in every process, that got an outcome got the same one (a
   ``ClientStateError`` of a closing manager, a cancellation, ``UnknownSessionError`` end only a
   handle; they are counted). Awaiters may differ only as docs/FLEET.md allows: an owner paused
   or cut off from the registry as it decided gives its own awaiters the answer, the others
   reconciliation or ``OutcomeLostError``.
3. ``OutcomeLostError`` only where docs/FLEET.md's table allows it, classified by the fault that
   caused it; and never where the library could have reconciled the session.
4. No two status reads of one session overlap on the server (received to answered).
5. No status read of a session after its one-time answer was served, but one (a 404) after an
   owner died, paused or was cut off between reading and storing it, and one after an answer
   lost on the wire.
6. No 429 from the simulator.
7. Every session ends (an outcome for some awaiter, or ``UnknownSessionError`` where the table
   allows it) within ``Config.end_bound`` of its creation while an awaiter was there to see it,
   and within ``Config.react_bound`` of the person's answer when no fault stopped a manager or
   the store meanwhile; every handle resolves within ``close_wait`` of ``aclose()``;
   ``aclose()`` returns; no worker crashes.
8. Memory stays bounded: a process' RSS at the end within 1.5 x its RSS after warm-up + 32 MiB.
9. ``start()`` and ``attach()`` fail only as documented: ``StartTimeoutError``,
   ``CircuitOpenError``, ``ClientStateError`` (closing), and for ``attach()``
   ``UnknownSessionError`` (judged by rule 7) or ``RegistryUnavailableError`` (store away).

Rules 1-5 are here; 6-9, the limits and bounds, in ``_bounds``.
"""

from __future__ import annotations

import itertools
import math

from ._bounds import rule6, rule7, rule7_closes, rule7_react, rule8, rule9
from ._history import Event
from ._model import OUTCOMES, Model, Read, Session, consumer_fate, sent_on_waking
from ._verdict import DEFECTS, Violation, by, lost_text, starved, terminal_text

ALLOWED_LOSSES = frozenset({
    "wire-loss", "owner-killed-after-read", "owner-paused-after-read",
    "registry-unreachable-owner-gone", "everysec-loss", "registry-wipe", "wipe-while-paused",
    "no-read-before-deadline", "wire-loss-at-deadline", "paused-before-send"})
#: where the fleet's awaiters may disagree (one side OutcomeLostError)
SPLIT_OK = frozenset({"owner-paused-after-read", "registry-unreachable-owner-gone",
                      "everysec-loss", "wipe-while-paused", "paused-before-send"})
#: the faults after which one more (404) read of a session is the adopter's
REREAD_OK = frozenset({"owner-killed-after-read", "owner-paused-after-read",
                       "registry-unreachable-owner-gone", "everysec-loss", "wipe-while-paused",
                       "paused-before-send"})


def check(model: Model) -> list[Violation]:
    found: list[Violation] = []
    for s in model.sessions.values():
        found += rule1(model, s) + rule2(model, s) + rule3(model, s) + rule4(model, s)
        found += rule5(model, s) + rule7(model, s) + rule7_react(model, s)
    return found + rule6(model) + rule7_closes(model) + rule8(model) + rule9(model)


def _key(event: Event) -> tuple[str, ...]:
    if event["kind"] == "success":
        return ("success", str(event.get("email") or "").lower())
    return (str(event["kind"]),)


def rule1(model: Model, s: Session) -> list[Violation]:
    person = s.person
    if person is None:
        return [Violation("1", s.sid, s.started, "the server's people never saw this session")]
    for e in s.outcomes():
        kind, bad = e["kind"], ""
        if kind == "success":
            email = str(e.get("email") or "").lower()
            if person["state"] != "success" or email != str(person["email"]).lower():
                bad = f"success with {e.get('email')}"
            elif e.get("reconciled") and email != str(s.expected_email or "").lower():
                bad = f"reconciled success with {email}, expected_email {s.expected_email}"
        elif kind == "error" and person["state"] != "error":
            bad = "error"
        elif kind == "expired" and person["state"] is not None:
            bad = "expired"
        elif kind == "expired" and e["t"] < person["expires"] - 0.05:
            bad = f"expired {person['expires'] - e['t']:.2f}s before the session's end"
        if bad:
            return [Violation("1", s.sid, e["t"], (
                f"invented outcome: {bad} reported by {by(model, e)}; the person "
                f"(plan {person['plan']}) did: {person['state'] or 'nothing'} "
                f"{person.get('email') or ''} at {model.rel(person['acted'])}, "
                f"refused: {person.get('refused')}"))]
    return []


def rule2(model: Model, s: Session) -> list[Violation]:
    found = []
    failed = [e for e in s.results if e["kind"] == "failed"]
    if failed:
        e = failed[0]
        found.append(Violation("2", s.sid, e["t"], (
            f"an awaiter failed with {e.get('exc')}: {e.get('msg')} ({by(model, e)}); "
            f"{len(failed)} such")))
    keys = {_key(e) for e in s.outcomes()}
    # docs/FLEET.md: the side that lost the one-time answer (a 404) reconciles or reports it
    # lost; a woken owner's own awaiters otherwise learn the stored outcome
    lost_answer = all("404" in str(e.get("msg")) for e in s.outcomes() if e["kind"] == "lost")
    # docs/FLEET.md, "No persistence": an outcome stored before a wipe is gone with it; a
    # manager that registers the session again and finds no read possible (the budgets wait
    # out the loss) may report it lost to later awaiters
    first = min((e["t"] for e in s.outcomes() if e["kind"] != "lost"), default=math.inf)
    later_lost = [e["t"] for e in s.outcomes() if e["kind"] == "lost" and e["t"] > first]
    wiped_between = bool(later_lost) and any(
        first <= f.t0 <= min(later_lost) for f in model.faults_of("redis-kill-empty"))
    if len(keys) > 1 and not (len(keys) == 2 and ("lost",) in keys and (
            (lost_answer and SPLIT_OK & set(s.causes)) or wiped_between)):
        seen = "; ".join(f"{'/'.join(_key(e))} ({by(model, e)}"
                         + (lost_text(model, e) if e["kind"] == "lost" else "") + ")"
                         for e in s.outcomes())
        found.append(Violation("2", s.sid, s.outcomes()[0]["t"], (
            f"awaiters got different outcomes: {seen}; faults: {', '.join(s.causes) or 'none'}; "
            f"{terminal_text(model, s)}")))
    return found


def rule3(model: Model, s: Session) -> list[Violation]:
    lost = [e for e in s.outcomes() if e["kind"] == "lost"]
    if not lost:
        return []
    e, person, terminal = lost[0], s.person or {}, s.terminal
    where = terminal_text(model, s)
    allowed = ALLOWED_LOSSES & set(s.causes)
    if not allowed:
        closed = "owner-closed-after-read" in s.causes
        return [Violation("3", s.sid, e["t"], (
            f"OutcomeLostError with no fault of docs/FLEET.md's table to explain it "
            f"({by(model, e)}: {e.get('msg')}); {where}; {starved(model, s, e['t'])}"
            f"faults then: {model.near(s.created, e['t'])}"),
            DEFECTS["closed-after-read"] if closed else None)]
    reconcilable = (
        person.get("state") == "success" and s.expected_email is not None
        and str(person.get("email")).lower() == s.expected_email.lower()
        and person["acted"] >= s.created + 2.0  # the account's creation after the init's second
        and terminal is not None and allowed <= {"wire-loss", "owner-killed-after-read",
                                                 "owner-paused-after-read", "paused-before-send"}
        and not any(f.store_down and f.t0 <= e["t"] and f.t1 >= terminal.received
                    for f in model.faults))
    msg = str(e.get("msg", ""))
    if reconcilable and any(why in msg for why in ("NotFoundError", "before this session",
                                                   "after this session", "pass expected")):
        return [Violation("3", s.sid, e["t"], (
            f"OutcomeLostError although the account {s.expected_email} was created by this "
            f"session at {model.rel(person['acted'])} (reconcilable): {msg}; {where}"))]
    return []


def overlapping(reads: list[Read]) -> list[tuple[Read, Read]]:
    pairs: list[tuple[Read, Read]] = []
    latest: Read | None = None
    for read in sorted(reads, key=lambda r: (r.received, r.answered)):
        if latest is not None and read.received < latest.answered:
            pairs.append((latest, read))
        if latest is None or read.answered > latest.answered:
            latest = read
    return pairs


def rule4(model: Model, s: Session) -> list[Violation]:
    pairs = [(a, b) for a, b in overlapping(s.reads)  # docs/FLEET.md: a read sent on waking
             if not (sent_on_waking(model, s, a) or sent_on_waking(model, s, b))]  # may overlap
    if not pairs or "wipe-while-paused" in s.causes:
        return []  # docs/FLEET.md: an owner paused across a wipe may read beside its adopter
    a, b = pairs[0]
    return [Violation("4", s.sid, b.received, (
        f"{len(pairs)} overlapping status reads; first: {model.who(a.ip)} "
        f"{model.rel(a.received)}..{model.rel(a.answered)} ({a.status}) and {model.who(b.ip)} "
        f"{model.rel(b.received)}..{model.rel(b.answered)} ({b.status}); faults then: "
        f"{model.near(a.received, b.answered)}"))]


def _rereads_after_adopters_stopped(model: Model, s: Session, after: list[Read]) -> int:
    """docs/FLEET.md: an adopter that read 404 and was stopped before it stored its verdict
    (reconciliation, or lost) as the reader of the answer may be (killed, paused...) leaves the
    session to the next adopter, which reads it once more: one read more for each, while no
    outcome was stored in between."""
    more = 0
    for before, read in itertools.pairwise(after):
        reader = model.by_ip.get(before.ip)
        if reader is None or reader.ip == read.ip:
            continue
        span = (before.answered, read.at)
        stopped = bool(REREAD_OK & set(consumer_fate(model, reader, span)))
        decided = any(e["kind"] in OUTCOMES and span[0] <= e["t"] <= span[1]
                      for e in s.results)
        more += int(stopped and not decided)
    return more


def rule5(model: Model, s: Session) -> list[Violation]:
    terminal = s.terminal
    if terminal is None:
        return []
    after = [r for r in s.reads if r.at > terminal.at]
    allowed = int(terminal.outcome == "acted-then-reset") + int(bool(REREAD_OK & set(s.causes)))
    allowed += _rereads_after_adopters_stopped(model, s, after)
    # docs/FLEET.md: a reconciliation (after an answer lost on the wire) cut by the owner's close
    # stores nothing; the session is handed over, and its adopter reads 404 once more
    if terminal.outcome == "acted-then-reset" and any(
            e.get("exc") == "ClosedDuringFetchError" for e in s.results):
        allowed += 1
    if len(after) <= allowed:
        return []
    reads = ", ".join(f"{model.who(r.ip)} {model.rel(r.at)} ({r.status})" for r in after)
    closed = "owner-closed-after-read" in s.causes
    return [Violation("5", s.sid, after[0].at, (
        f"{len(after)} status reads after the one-time answer ({allowed} allowed): {reads}; "
        f"{terminal_text(model, s)}; classified faults: {', '.join(s.causes) or 'none'}; "
        f"all faults then: {model.near(s.created, after[-1].at)}"),
        DEFECTS["closed-after-read"] if closed else None)]
