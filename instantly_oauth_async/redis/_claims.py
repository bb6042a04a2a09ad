"""The connect guard in Redis (:class:`RedisClaims`, ``RedisStore.claims``): each step one Lua
script, timed by Redis ``TIME``, every key of a namespace under one hash tag (one slot on a
cluster), expiring on its own once its last claim's deadline has passed. See ``_claims`` for
the contract."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from redis.exceptions import ResponseError

from .._stores.claims import Claim, check, new_ticket
from .._stores.registry import RegistryUnavailableError
from . import _lua as _redis_lua
from ._errors import FAILURES as _FAILURES
from ._errors import outage as _outage
from ._errors import store_error as _store_error

__all__ = ["RedisClaims"]

#: The scripts, one a step, from ``lua/claim_*.lua`` (their headers say KEYS, ARGV, replies).
_SCRIPTS: Final = {name: _redis_lua.step(f"CLAIM_{name.upper()}")
                   for name in ("take", "bind", "drop", "count")}


class RedisClaims:
    """The claims of every process and host on one Redis (``RedisStore(...).claims``).

    A step that cannot reach Redis raises ``RegistryUnavailableError`` (it may or may not have
    happened: a claim taken then leaves at its deadline); an error reply that waiting will not
    cure raises ``StoreError``."""

    def __init__(self, client: Any) -> None:
        self._scripts = {name: client.register_script(script.text)
                         for name, script in _SCRIPTS.items()}
        #: ``None`` in production; tests set it to drive the scripts' clock (seconds).
        self.time_source: Callable[[], float] | None = None

    def __repr__(self) -> str:
        return "<RedisClaims>"

    @staticmethod
    def _keys(ns: str) -> list[str]:
        return [f"iox:claims:{{{ns}}}:due", f"iox:claims:{{{ns}}}:sid"]

    async def _run(self, name: str, ns: str, args: Sequence[str]) -> Any:
        now = "" if self.time_source is None else repr(float(self.time_source()))
        try:
            return await self._scripts[name](keys=self._keys(ns), args=[*args, now])
        except _FAILURES as exc:
            if not _outage(exc):
                if type(exc) is ResponseError:  # the file and line it names
                    exc = ResponseError(_redis_lua.locate(
                        str(exc), f"CLAIM_{name.upper()}", script=_SCRIPTS[name]))
                raise _store_error(f"the claims' {name} script", exc) from exc
            raise RegistryUnavailableError(
                f"Redis could not be reached for the claims' {name} step "
                f"({type(exc).__name__}); ask again later") from exc

    async def claim(self, ns: str, user: str, *, hold: float, per_user: int, limit: int
                    ) -> Claim:
        check(ns, user, hold, per_user, limit)
        reply = await self._run("take", ns, [user, new_ticket(), repr(float(hold)),
                                              str(per_user), str(limit)])
        state, ticket, sid = (x.decode() if isinstance(x, bytes) else str(x) for x in reply)
        if state == "full":
            return Claim("full")
        return Claim("taken" if state == "taken" else "held", ticket, sid or None)

    async def bind(self, ns: str, user: str, ticket: str, session_id: str, *, hold: float
                   ) -> bool:
        check(ns, user, hold)
        reply = await self._run("bind", ns, [ticket + user, session_id, repr(float(hold))])
        return bool(int(reply))

    async def drop(self, ns: str, user: str, *, ticket: str | None = None,
                   session_id: str | None = None) -> None:
        await self._run("drop", ns, [user, ticket or "", session_id or ""])

    async def count(self, ns: str, user: str | None = None) -> int:
        return int(await self._run("count", ns, [user or ""]))
