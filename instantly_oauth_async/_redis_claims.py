"""The connect guard in Redis (:class:`RedisClaims`, ``RedisStore.claims``): each step one Lua
script, timed by Redis ``TIME``, every key of a namespace under one hash tag (one slot on a
cluster), expiring on its own once its last claim's deadline has passed. See ``_claims`` for
the contract."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from ._claims import Claim, check, new_ticket
from ._redis_errors import FAILURES as _FAILURES
from ._redis_errors import outage as _outage
from ._redis_errors import store_error as _store_error
from ._registry import RegistryUnavailableError

__all__ = ["RedisClaims"]

# KEYS: due (sorted set: ticket..user -> deadline), sids (hash: the same member -> session id).
# A member is the 32-digit ticket followed by the user, so a user is string.sub(member, 33).
_HEAD: Final = """
local now
if ARGV[#ARGV] ~= '' then now = tonumber(ARGV[#ARGV]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local function num(x) return string.format('%.17g', x) end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', num(now))
for _, m in ipairs(gone) do redis.call('HDEL', KEYS[2], m) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now)) end
local function keep()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #last == 0 then return end
  local ms = math.ceil((tonumber(last[2]) - now) * 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], ms); redis.call('PEXPIRE', KEYS[2], ms)
end
"""

#: ARGV: user, new ticket, hold, per_user, limit, now. Returns {state, ticket, session id}.
_CLAIM: Final = _HEAD + """
local user, ticket = ARGV[1], ARGV[2]
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local mine, best, best_sid, best_at = 0, nil, '', -math.huge
for i = 1, #all, 2 do
  local m, at = all[i], tonumber(all[i + 1])
  if string.sub(m, 33) == user then
    mine = mine + 1
    local sid = redis.call('HGET', KEYS[2], m) or ''
    if best == nil or (sid ~= '' and best_sid == '') or
        ((sid ~= '') == (best_sid ~= '') and at > best_at) then
      best, best_sid, best_at = m, sid, at
    end
  end
end
if mine >= tonumber(ARGV[4]) then return {'held', string.sub(best, 1, 32), best_sid} end
if #all / 2 >= tonumber(ARGV[5]) then return {'full', '', ''} end
redis.call('ZADD', KEYS[1], num(now + tonumber(ARGV[3])), ticket .. user)
redis.call('HSET', KEYS[2], ticket .. user, '')
keep()
return {'taken', ticket, ''}
"""

#: ARGV: member, session id, hold, now. Returns 1 when bound, 0 when the claim is gone.
_BIND: Final = _HEAD + """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then return 0 end
redis.call('ZADD', KEYS[1], num(now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
keep()
return 1
"""

#: ARGV: user, ticket ('' = none), session id ('' = none), now.
_DROP: Final = _HEAD + """
local all = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, m in ipairs(all) do
  if string.sub(m, 33) == ARGV[1] and (string.sub(m, 1, 32) == ARGV[2] or
      (ARGV[3] ~= '' and redis.call('HGET', KEYS[2], m) == ARGV[3])) then
    redis.call('ZREM', KEYS[1], m); redis.call('HDEL', KEYS[2], m)
  end
end
return 0
"""

#: ARGV: user ('' = everyone), now. Returns how many claims are held.
_COUNT: Final = _HEAD + """
if ARGV[1] == '' then return redis.call('ZCARD', KEYS[1]) end
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 33) == ARGV[1] then n = n + 1 end
end
return n
"""


class RedisClaims:
    """The claims of every process and host on one Redis (``RedisStore(...).claims``).

    A step that cannot reach Redis raises ``RegistryUnavailableError`` (it may or may not have
    happened: a claim taken then leaves at its deadline); an error reply that waiting will not
    cure raises ``StoreError``."""

    def __init__(self, client: Any) -> None:
        self._scripts = {name: client.register_script(text) for name, text in (
            ("claim", _CLAIM), ("bind", _BIND), ("drop", _DROP), ("count", _COUNT))}
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
                raise _store_error(f"the claims' {name} script", exc) from exc
            raise RegistryUnavailableError(
                f"Redis could not be reached for the claims' {name} step "
                f"({type(exc).__name__}); ask again later") from exc

    async def claim(self, ns: str, user: str, *, hold: float, per_user: int, limit: int
                    ) -> Claim:
        check(ns, user, hold, per_user, limit)
        reply = await self._run("claim", ns, [user, new_ticket(), repr(float(hold)),
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
