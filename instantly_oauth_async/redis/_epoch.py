"""How a ``RedisStore`` tells that Redis lost its data (restarted empty, or failed over to a
replica behind), and settles it: the store's epoch, one token a hash tag that TAKE makes when it
is missing (see _redis_lua). A take sends the token this process last saw while what it spent
may still count; a new token back means a loss: the fleet's takes wait until every slot spent
before has come back, and the blocks this process knows are written into Redis again."""

from __future__ import annotations

import logging
import math
from typing import Any

from ._batch import Batcher, hash_tag
from ._fallback import Fallback
from ._replay import replay_steps

__all__ = ["Epochs"]

logger = logging.getLogger("instantly_oauth_async")


class Epochs:
    """The store's epoch token, and when this process last took with it, by hash tag."""

    def __init__(self, fallback: Fallback, batch: Batcher) -> None:
        self._fallback = fallback  # how long a slot spent may still count; the blocks known
        self._batch = batch
        self._seen: dict[str, tuple[str, float]] = {}

    def step(self, first: str, member: str) -> tuple[str, list[str]]:
        """The epoch key and args of a TAKE step on the budgets named by ``first``."""
        tag = hash_tag(first)
        settle_for = self._fallback.settle_for
        token, seen_at = self._seen.get(tag, ("", -math.inf))
        if self._fallback.clock.monotonic() - seen_at > settle_for:
            token = ""  # nothing this process spent can still count: no loss to tell of
        # A token of this step's own if the epoch is to be made: never one this process made
        # before (a store wiped after this process made its epoch would get the same back).
        epoch = f"iox:{{{tag}}}:epoch" if tag != first else f"{first}:epoch"  # one slot
        return epoch, [token, member, repr(settle_for)]

    def note(self, first: str, token: Any, now_arg: str) -> None:
        """Remember the epoch a take answered with; a new one means the store lost its data."""
        if isinstance(token, bytes):
            token = token.decode()
        tag = hash_tag(first)
        seen, seen_at = self._seen.get(tag, (None, -math.inf))
        now = self._fallback.clock.monotonic()
        self._seen[tag] = (token, now)
        settle_for = self._fallback.settle_for
        if seen is not None and seen != token and now - seen_at <= settle_for:
            logger.warning("Redis lost its data (restarted empty, or failed over): every take "
                           "waits until the slots spent before the loss have come back (up to "
                           "%.0f s)", settle_for)
            blocks = ((key, left, "") for key, left in self._fallback.local.blocks_left().items()
                      if hash_tag(key) == tag)
            for keys, args in replay_steps(blocks).values():
                self._batch.post("REPLAY", keys, [*args, now_arg], within=0.0)
