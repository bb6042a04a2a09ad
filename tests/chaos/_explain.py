"""One session's whole story, for looking into a violation: ``python -m tests.chaos --check
RUN_DIR --explain SESSION_ID`` (a prefix of the id will do)."""

from __future__ import annotations

from ._model import Model


def explain(model: Model, prefix: str) -> list[str]:
    found = [s for sid, s in model.sessions.items() if sid.startswith(prefix)]
    if len(found) != 1:
        return [f"{len(found)} sessions match {prefix!r}"]
    s = found[0]
    person = s.person or {}
    rows: list[tuple[float, str]] = [
        (s.created, f"created on the server; person plans {person.get('plan')}"),
        (s.started, f"start() returned to {s.starter}, expected_email {s.expected_email}"),
    ]
    if person.get("acted") is not None:
        rows.append((person["acted"], f"person: {person['state']} {person.get('email') or ''}"))
    if person.get("refused"):
        rows.append((person["created"] + person["delay"], f"person refused: {person['refused']}"))
    rows.append((person.get("expires", s.created), "the session's lifetime ends"))
    rows.extend((r.received, f"status read by {model.who(r.ip)}: {r.status} {r.outcome} "
                             f"(acted {model.rel(r.at)}, answered {model.rel(r.answered)})")
                for r in s.reads)
    for e in s.handles + s.results + s.attach_errors + s.cancels:
        fields = {k: v for k, v in e.items() if k not in ("t", "w", "inc", "ev", "sid")}
        rows.append((e["t"], f"{e['w']}#{e['inc']} {e['ev']} {fields}"))
    for f in model.faults:
        if f.t0 <= max(t for t, _ in rows) and f.t1 >= s.created:
            rows.append((f.t0, f"fault {f.kind}({f.target}) until {model.rel(f.t1)} "
                               f"{f.details}"))
    lines = [f"session {s.sid}; causes: {', '.join(s.causes) or 'none'}"]
    lines += [f"{model.rel(t):>10} {text}" for t, text in sorted(rows, key=lambda row: row[0])]
    return lines
