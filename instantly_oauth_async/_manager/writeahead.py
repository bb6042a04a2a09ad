"""Outcomes written ahead: a session's outcome is stored in the registry before any awaiter
gets it, and the first writer wins; one decided while the store is away is kept, with its
lease, and written when the store is back; one whose entry the store lost is stored anew.

What is durable and what can still be lost: docs/FLEET.md.
"""

from __future__ import annotations

import enum
import logging
from typing import Final, Literal, TypeAlias

from .._stores.registry import Data, Entry, RegistryUnavailableError
from .._wire.exceptions import session_key
from .entries import decode_outcome, encode_outcome
from .leases import Leases
from .outcome import ConnectResult, OutcomeLostError

__all__ = ["HOLDERS_OUTCOME", "WriteAhead", "Written"]

logger = logging.getLogger("instantly_oauth_async")


class _Holders(enum.Enum):
    OUTCOME = "the holder's outcome"


#: What :meth:`WriteAhead.write` gives for a verdict that is not this manager's to give (its
#: write fenced out by another manager's lease): the caller waits on the registry for the
#: holder's outcome.
HOLDERS_OUTCOME: Final = _Holders.OUTCOME
#: What to resolve a session's awaiters with, or ``HOLDERS_OUTCOME``.
Written: TypeAlias = \
    "tuple[ConnectResult | None, BaseException | None] | Literal[_Holders.OUTCOME]"


class WriteAhead:
    """The outcomes of the sessions one manager's leases hold, written to their registry."""

    def __init__(self, leases: Leases) -> None:
        self._leases = leases

    async def write(self, session_id: str, result: ConnectResult | None,
                    error: BaseException | None) -> Written:
        """Store the outcome ahead of any future; what to resolve with (the stored winner),
        or ``HOLDERS_OUTCOME``."""
        encoded = encode_outcome(result, error)
        if encoded is None:
            return result, error  # no outcome: the poller hands the session over
        leases = self._leases
        # A renew registering it again: written with the lease that gives (see _concluding).
        while (registering := leases._registering.get(session_id)) is not None:
            await registering.wait()
        leases._concluding.add(session_id)
        try:
            return await self._write(session_id, result, error, encoded)
        finally:
            leases._concluding.discard(session_id)

    async def _write(self, session_id: str, result: ConnectResult | None,
                     error: BaseException | None, encoded: tuple[str, int]) -> Written:
        leases = self._leases
        fence = leases.fences.get(session_id, leases._held.get(session_id))
        try:
            entry = await leases.registry.decide(leases.ns, session_id, *encoded, fence=fence,
                                                 retention=leases.retention)
            data = leases.data_of(session_id)
            if entry is None and fence is not None and data is not None \
                    and leases.holds(session_id):
                # The registry lost it (a Redis restarted empty, a failover) while this
                # manager held it: nobody else can hold it, so register it again and store.
                logger.warning("session %s was missing from the registry as its outcome was "
                               "written: registered again", session_key(session_id))
                entry = await self.store_anew(session_id, data, *encoded)
        except RegistryUnavailableError:
            if fence is not None:  # ours: keep the lease and write it when the store is back
                leases._unwritten[session_id] = encoded
                logger.warning("outcome of %s not stored yet (registry unreachable): it will "
                               "be written when it is back", session_key(session_id))
                return result, error
            raise
        leases.drop(session_id)
        if entry is not None and entry.outcome is None and isinstance(error, OutcomeLostError):
            # Fenced out (another manager holds the lease and has not decided): "no answer
            # could be had" is not ours to say; the holder's outcome is. The chaos soak saw
            # the two differ.
            return HOLDERS_OUTCOME
        if entry is None or entry.outcome is None:
            return result, error  # unknown to the registry, or fenced out: ours stands alone
        stored = decode_outcome(entry.outcome, session_id)
        return (stored, None) if isinstance(stored, ConnectResult) else (None, stored)

    async def write_unwritten(self) -> None:
        """Store the outcomes decided while the store was away (first writer wins, as ever)."""
        leases = self._leases
        for session_id, (outcome, rank) in list(leases._unwritten.items()):
            data = leases._unregistered.get(session_id)
            if data is not None:  # started and ended while away: register it first
                await leases._register(session_id, data)
                leases._confirmed(session_id)  # only once that is done
            entry = await leases.registry.decide(leases.ns, session_id, outcome, rank,
                                                 fence=leases.fences.get(session_id),
                                                 retention=leases.retention)
            known = leases.data_of(session_id)
            if entry is None and known is not None:  # lost with the store's data meanwhile
                await self.store_anew(session_id, known, outcome, rank)
            leases.drop(session_id)

    async def store_anew(self, session_id: str, data: Data, outcome: str, rank: int
                         ) -> Entry | None:
        """Register again a session the registry lost (a Redis restarted empty, a failover)
        and store its outcome: nobody else can hold what the registry did not know. If another
        manager registered it meanwhile, its entry stands and nothing is written."""
        leases = self._leases
        entry = await leases._register(session_id, data)
        if entry.owner != leases.owner or entry.decided:
            return entry
        return await leases.registry.decide(leases.ns, session_id, outcome, rank,
                                            fence=entry.fence, retention=leases.retention)
