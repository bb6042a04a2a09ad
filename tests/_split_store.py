"""A store whose budgets live in this process and whose registry is a RedisStore's: a test of
the registry under a Redis fault (killed, wiped) whose own budgets need not wait it out."""

from __future__ import annotations

from instantly_oauth_async import MemoryStore
from instantly_oauth_async._limits.clock import Clock
from instantly_oauth_async.redis import RedisRegistry, RedisStore


class SplitStore(MemoryStore):
    """Budgets, blocks and breakers in memory; the registry ``registry_side``'s."""

    def __init__(self, registry_side: RedisStore, clock: Clock | None = None) -> None:
        super().__init__(clock)
        self._registry_side = registry_side

    @property
    def registry(self) -> RedisRegistry:  # type: ignore[override]
        return self._registry_side.registry
