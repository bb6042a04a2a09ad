"""A violation, the known defects it may point to, and the words the rules use to describe a
session's story in one line (who read it, who was served its one-time answer, why it was lost).
"""

from __future__ import annotations

import attrs

from ._history import Event
from ._model import Model, Session

DEFECTS = {
    "closed-after-read": "known defect: a graceful close during the account fetch after a "
                         "SUCCESS read drops the answer",
    "attach-close": "known defect: attach() handles of a closing manager never resolve",
    "start-close": "known defect: start() racing aclose() returns a handle nobody resolves",
    "cancel": "known defect: cancelled sessions stay leased until the manager exits",
    "empty-429": "known defect: an empty Redis restart re-spends the window (init 429s)",
    "wipe": "known defect: a Redis wipe before the owner decides drops the outcome",
}


@attrs.frozen
class Violation:
    rule: str
    sid: str | None
    t: float | None
    message: str
    defect: str | None = None


def by(model: Model, event: Event) -> str:
    via = event.get("via") or event["ev"]
    return f"{event['w']}#{event['inc']} via {via} at {model.rel(event['t'])}"


def lost_text(model: Model, e: Event) -> str:
    """Why an awaiter's OutcomeLostError said it was lost; and whether its process had just
    woken from a pause (its deadlines passed while it was stopped)."""
    why = str(e.get("msg")).partition("was lost: ")[2] or str(e.get("msg"))
    inc = model.incarnations.get(f"{e['w']}#{e['inc']}")
    woke = [p1 for _, p1 in (inc.pauses if inc else []) if p1 <= e["t"] <= p1 + 2.0]
    return f": {why}" + (f"; it had woken from a pause at {model.rel(woke[0])}" if woke else "")


def starved(model: Model, s: Session, t: float) -> str:
    """For a session given up unread: how long nobody read it while the store was reachable,
    and how much the whole fleet read meanwhile."""
    last = max([r.answered for r in s.reads if r.answered <= t], default=s.created)
    spans = [span for f in model.faults if (span := f.budget_gone(model.config)) is not None]
    back = max([b for _, b in spans if b <= t], default=None)
    since = max(last, back or last)
    fleet = sum(1 for r in model.requests if r["kind"] == "status" and since <= r["at"] <= t)
    return (f"no read of it from {model.rel(last)} to {model.rel(t)}; the budgets usable "
            f"again (by docs) since {model.rel(back) if back else 'the start'}, the whole fleet "
            f"made {fleet} status reads in the {t - since:.1f}s from {model.rel(since)}; ")


def readers(model: Model, s: Session) -> str:
    """Who read the session, from when to when: two at a time means two pollers."""
    spans: dict[str, list[float]] = {}
    for r in s.reads:
        span = spans.setdefault(r.ip, [r.received, r.answered])
        span[1] = r.answered
    parts = []
    for ip, (a, b) in spans.items():
        inc = model.by_ip.get(ip)
        pauses = [f"paused {model.rel(p0)}..{model.rel(p1)}" for p0, p1 in inc.pauses
                  if p0 <= b and p1 >= a - model.config.lease] if inc else []
        parts.append(f"{model.who(ip)} {model.rel(a)}..{model.rel(b)}"
                     + (f" ({', '.join(pauses)})" if pauses else ""))
    return "readers " + ", ".join(parts)


def terminal_text(model: Model, s: Session) -> str:
    terminal = s.terminal
    if terminal is None:
        return "no one-time answer was served; " + readers(model, s)
    fate = model.by_ip.get(terminal.ip)
    then = "?" if fate is None else (
        f"{fate.how} (ended {model.rel(fate.ended)}, closing {model.rel(fate.closing)})")
    ends = [f"{e['kind']} {model.rel(e['t'])}" for e in s.results if fate is not None
            and (e["w"], e["inc"]) == (fate.worker, fate.inc)]
    return (f"the one-time answer was served at {model.rel(terminal.at)} to "
            f"{model.who(terminal.ip)} ({terminal.outcome or 'delivered'}), which then {then}"
            f" (its handles ended: {', '.join(ends) or 'none'}); " + readers(model, s))
