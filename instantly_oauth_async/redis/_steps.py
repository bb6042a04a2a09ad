"""How a ``RedisStore`` writes its budget decisions as script steps (see _redis_lua): the keys
and args of a take (its budgets, its askers' line, its blocks and its epoch) and of a release,
the members that name each slot spent, and how long a posted step may wait for a trip to ride
on (see _redis_batch): a release, by how full its budgets were as it was taken."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from .._limits.breaker import BreakerPolicy
from .._wire.models import RateLimit
from ._epoch import Epochs

__all__ = ["RECORD_WITHIN", "Steps", "line_keys", "policy_args", "slot_keys"]

#: How long past the time it was told an asker keeps its place in a budget's line (seconds).
_GRACE = 1.0
#: The longest a posted release waits for a trip to ride on (see _redis_batch), in seconds: from
#: a budget that was full, and from one at most half spent; and for a breaker's quiet record, or
#: an asker leaving its line (nothing waits on either).
_RELEASE_WITHIN = 0.02
_ROOMY_RELEASE_WITHIN = 0.25
RECORD_WITHIN = 0.05


def policy_args(policy: BreakerPolicy) -> list[str]:
    return [repr(float(policy.failure_threshold)), repr(policy.cooldown),
            repr(policy.max_cooldown), repr(policy.probe_timeout)]


def slot_keys(specs: Sequence[tuple[str, RateLimit]]) -> list[str]:
    return [k for key, _ in specs for k in (f"{key}:freed", f"{key}:held")]


def line_keys(specs: Sequence[tuple[str, RateLimit]]) -> list[str]:
    """The line of askers of one set of budgets (named by its first), and its due index."""
    first = specs[0][0]
    return [f"{first}:line", f"{first}:due"]


class Steps:
    """The take and release steps of one store: its members, and its roomy held slots."""

    def __init__(self, epochs: Epochs) -> None:
        self._epochs = epochs
        self._members = f"{secrets.token_hex(6)}:"
        self._serial = 0
        self.roomy: set[str] = set()  # held slots taken from budgets at most half spent

    def member(self, kind: str = "") -> str:
        """A member no other slot of this store, or of any other process, was named by."""
        self._serial += 1
        return f"{self._members}{kind}{self._serial}"

    def take(
        self, specs: Sequence[tuple[str, RateLimit]], block_keys: Sequence[str],
        lease: str | None, hold: float, asker: str | None,
    ) -> tuple[list[str], list[str]]:
        """The keys and args of one TAKE step (see _redis_lua)."""
        member = self.member()
        args = [str(len(specs)), lease or "", repr(float(hold)), member, asker or "",
                repr(_GRACE)]
        for _, limit in specs:
            args += [str(limit.count), repr(limit.window)]
        epoch, epoch_args = self._epochs.step(specs[0][0], member)
        return [*slot_keys(specs), *line_keys(specs), *block_keys, epoch], [*args, *epoch_args]

    def note_fill(self, lease: str | None, reply: Sequence[Any]) -> None:
        """Remember a held slot whose budgets were at most half spent when it was taken: its
        release may wait longer for a trip to ride on (see :meth:`release_within`)."""
        if lease is not None and len(reply) > 2 and float(reply[2]) <= 0.5:
            self.roomy.add(lease)

    def forget(self, lease: str) -> bool:
        """Forget a lease being released; True when its slot was roomy (see note_fill)."""
        roomy = lease in self.roomy
        self.roomy.discard(lease)
        return roomy

    @staticmethod
    def release_within(specs: Sequence[tuple[str, RateLimit]], roomy: bool) -> float:
        """How long a posted release may wait for a trip. Until it arrives the slot counts as
        held, which only the askers of a full budget notice (a held slot comes back no sooner
        than a window after they ask): so it waits at most 1/200 of its shortest window, or a
        quarter of it (up to 250 ms) when its budgets were at most half spent as it was taken."""
        shortest = min(limit.window for _, limit in specs)
        return min(_ROOMY_RELEASE_WITHIN, shortest / 4) if roomy else \
            min(_RELEASE_WITHIN, shortest / 200)

    @staticmethod
    def release_args(specs: Sequence[tuple[str, RateLimit]], lease: str, now_arg: str
                     ) -> Callable[[], list[str]]:
        """The args of a RELEASE step, made as it leaves: they tell Redis how long ago the
        request ended, measured now, so the slot comes back a window after that, however late
        the step is sent. With a test's clock (``now_arg``) the model's time: no age."""
        windows = [repr(limit.window) for _, limit in specs]
        loop = asyncio.get_running_loop()
        ended = loop.time()

        def args() -> list[str]:
            ago = 0.0 if now_arg else max(0.0, loop.time() - ended)
            return [lease, repr(ago), *windows, now_arg]

        return args
