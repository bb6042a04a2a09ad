"""The run's report: what was injected, what was checked, what came out, and each violation
with what it takes to look into it. The last line ends with ``violations=N``."""

from __future__ import annotations

from collections import Counter

from ._bounds import RSS_FACTOR, RSS_SLACK_KIB, rss_by_pid
from ._harness import RunData
from ._model import OUTCOMES, Model
from ._verdict import Violation


def report(data: RunData, model: Model, violations: list[Violation]) -> list[str]:
    config = data.config
    lines = [
        f"chaos: seed={config.seed} store={config.store} seconds={config.seconds:g} "
        f"workers={config.workers} wall={data.wall:.1f}s run_dir={data.run_dir}",
        f"bounds: an outcome within {config.end_bound:g}s of creation (ttl {config.ttl:g} + "
        f"expiry_grace {config.expiry_grace:g} + 2 x lease {config.lease:g} + 2), and within "
        f"{config.react_bound:g}s of the person's answer away from faults (2 x poll "
        f"{config.poll_interval:g} + lease + 2); handles "
        f"resolved {config.close_wait:g}s after aclose(); RSS at the end <= {RSS_FACTOR} x "
        f"after warm-up + {RSS_SLACK_KIB // 1024} MiB",
    ]
    faults = Counter(f.kind for f in model.faults)
    lost_wire = [r for r in data.log
                 if r["kind"] == "status" and r["outcome"] == "acted-then-reset"]
    terminal_lost = sum(1 for s in model.sessions.values()
                        if s.terminal is not None and s.terminal.outcome == "acted-then-reset")
    skipped = sum(1 for e in model.events if e["ev"] == "skipped")
    lines.append("faults: " + " ".join(f"{k}={v}" for k, v in sorted(faults.items()))
                 + f" wire-loss={len(lost_wire)} (one-time answers: {terminal_lost}); "
                 f"{skipped} skipped (target busy)")
    plans = Counter(str((s.person or {}).get("plan", "unknown-to-server"))
                    for s in model.sessions.values())
    orphans = len(set(model.people) - set(model.sessions))
    lines.append(f"sessions: {len(model.sessions)} checked (people: "
                 + " ".join(f"{k}={v}" for k, v in sorted(plans.items()))
                 + f"); {orphans} created on the server but never returned by start()")
    lines.append(_outcomes(model))
    lost = Counter("+".join(sorted(set(s.causes))) or "unclassified"
                   for s in model.sessions.values()
                   if any(e["kind"] == "lost" for e in s.outcomes()))
    lines.append("OutcomeLostError by cause: "
                 + (" ".join(f"{k}={v}" for k, v in sorted(lost.items())) or "none"))
    kinds = Counter(r["kind"] for r in data.log)
    lines.append("server: " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
                 + f" 429s={sum(1 for r in data.log if r['status'] == 429)}")
    for pid, (_, warm, end) in sorted(rss_by_pid(model).items()):
        lines.append(f"memory: pid {pid} RSS {warm[1] / 1024:.1f} MiB after warm-up, "
                     f"{end[1] / 1024:.1f} MiB at the end")
    lines.extend(
        f"VIOLATION rule={v.rule} seed={config.seed} store={config.store} "
        f"session={v.sid or '-'} t={model.rel(v.t)}: {v.message}"
        + (f" [{v.defect}]" if v.defect else "")
        for v in sorted(violations, key=lambda v: (v.rule, v.t or 0.0)))
    lines.append(f"chaos seed={config.seed} store={config.store} sessions={len(model.sessions)} "
                 f"violations={len(violations)}")
    return lines


def _outcomes(model: Model) -> str:
    """Per session, the outcome its awaiters agreed on; then every handle that ended otherwise."""
    agreed: Counter[str] = Counter()
    for s in model.sessions.values():
        kinds = {e["kind"] for e in s.outcomes()}
        reconciled = any(e.get("reconciled") for e in s.outcomes())
        if len(kinds) == 1:
            (kind,) = kinds
            agreed[kind + ("(reconciled)" if reconciled else "")] += 1
        elif kinds:
            agreed["split"] += 1
        elif any(e["kind"] == "unknown" for e in s.results + s.attach_errors):
            agreed["unknown"] += 1
        else:
            agreed["none"] += 1
    others = Counter(e["kind"] for s in model.sessions.values() for e in s.results
                     if e["kind"] not in OUTCOMES)
    others["unresolved"] = sum(1 for e in model.events if e["ev"] == "unresolved")
    starts = Counter(str(e.get("exc")) for e in model.events if e["ev"] == "start_err")
    return ("outcomes: " + " ".join(f"{k}={v}" for k, v in sorted(agreed.items()))
            + " | handles ended otherwise: "
            + " ".join(f"{k}={v}" for k, v in sorted(others.items()))
            + " | start() errors: "
            + (" ".join(f"{k}={v}" for k, v in sorted(starts.items())) or "none"))
