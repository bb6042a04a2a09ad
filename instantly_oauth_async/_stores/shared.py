"""What :class:`~._stores.registry.MemoryRegistry` keeps of an entry (a mutable record), and the
lease an owner's entries share once its heartbeat renewed them together: one expiry updated
per heartbeat, not one per entry (a manager holding 100,000 sessions renews every 5 s).

An entry's lease ends at its own ``until`` or, while it is attached to its owner's
:class:`SharedLease`, at the later of that and the shared ``until``. A renew of an owner's
leases (``MemoryRegistry.renew_owned``) attaches the entries it renews and moves the shared end:
what a per-entry renew would do, entry by entry. Whatever changes an attached entry's owner,
fence or outcome detaches it first (its lease end kept as it stood) and notes its id on the
shared lease's ``check`` list, as a registration or claim notes its new entry there: the next
renew looks at those ids one by one and trusts the others, still attached, to be held as they
were. When anything does not add up (the count of attached entries, or the sum of their
fences, differs from what the owner names, the shared lease lapsed, or too many notes piled
up), that renew looks at every entry, as the per-entry path does.
"""

from __future__ import annotations

import math

from .contract import Data

__all__ = ["NEVER", "Held", "SharedLease"]

#: A lease end long past: one float for all (``-math.inf`` written out makes a new one each time,
#: 24 bytes an entry at 100,000 entries).
NEVER = -math.inf


class SharedLease:
    """The lease one owner's attached entries in one namespace share."""

    __slots__ = ("check", "count", "fences", "until")

    def __init__(self) -> None:
        self.until = NEVER
        self.count = 0  # entries attached
        self.fences = 0  # the sum of their fences
        #: Ids to look at one by one at the next renew (registered, claimed, detached); None:
        #: too many piled up, the next renew looks at every entry.
        self.check: list[str] | None = []

    def note(self, session_id: str) -> None:
        check = self.check
        if check is not None:
            check.append(session_id)
            if len(check) > 2 * self.count + 1024:
                self.check = None  # a bound on what piles up between renews


class Held:
    """One entry as the in-process registry keeps it (mutable: a renew changes it in place)."""

    __slots__ = ("created_at", "data", "fence", "forget_at", "outcome", "owner", "rank",
                 "session_id", "shared", "until")

    def __init__(self, session_id: str, data: Data, created_at: float, *,
                 owner: str | None, fence: int, until: float) -> None:
        self.session_id = session_id
        self.data = data
        self.created_at = created_at
        self.owner = owner
        self.fence = fence
        self.until = until
        self.outcome: str | None = None
        self.rank = 0
        self.shared: SharedLease | None = None
        self.forget_at = math.inf  # when the registry forgets it (set as it keeps it)

    @property
    def decided(self) -> bool:
        return self.outcome is not None

    def lease_until(self) -> float:
        shared = self.shared
        if shared is None or shared.until <= self.until:
            return self.until
        return shared.until

    def attach(self, shared: SharedLease) -> None:
        """On ``shared``: its lease ends with the shared one from now on."""
        self.shared, self.until = shared, NEVER
        shared.count += 1
        shared.fences += self.fence

    def detach(self) -> SharedLease | None:
        """Off its shared lease, its lease end kept as it stands; the lease it left."""
        shared = self.shared
        if shared is not None:
            self.until = self.lease_until()
            self.shared = None
            shared.count -= 1
            shared.fences -= self.fence
            shared.note(self.session_id)
        return shared
