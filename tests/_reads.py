"""The simulator's log of status reads, as the fleet tests judge it: whose read it was, and
whether two reads of one session were ever on the wire together."""

from __future__ import annotations

from instantly_oauth_async.testing import LoggedRequest, Simulator


def status_reads(sim: Simulator, sid: str, ip: str | None = None) -> list[LoggedRequest]:
    return [r for r in sim.requests if r.kind == "status" and r.path.endswith("/" + sid)
            and (ip is None or r.ip == ip)]


def overlapping_reads(sim: Simulator, sid: str) -> list[tuple[LoggedRequest, LoggedRequest]]:
    """Pairs of status reads of ``sid`` whose intervals (received to answered) overlap."""
    reads = sorted(status_reads(sim, sid), key=lambda r: r.interval)
    assert all(r.received is not None and r.answered is not None for r in reads)
    pairs: list[tuple[LoggedRequest, LoggedRequest]] = []
    latest: LoggedRequest | None = None
    for read in reads:
        if latest is not None and read.interval[0] < latest.interval[1]:
            pairs.append((latest, read))
        if latest is None or read.interval[1] > latest.interval[1]:
            latest = read
    return pairs
