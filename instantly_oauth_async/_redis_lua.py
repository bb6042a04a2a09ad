"""The Lua scripts behind ``RedisStore``: each decision is one atomic step on the Redis server.

Every script reads the time from Redis ``TIME`` (so the hosts' clocks never matter); the last
ARGV of each may override it, which only the tests do, to compare the scripts step for step with
the pure Python functions in ``_limiter`` and ``_breaker``. Numbers go back as strings: a Lua
number returned as a Redis reply is truncated to an integer.
"""

from __future__ import annotations

from typing import Final

_NOW: Final = """
local function clock(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
local function keep_for(key, seconds)
  local ms = math.ceil(seconds * 1000) + 1000
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

#: KEYS: freed_1, held_1, ..., freed_n, held_n, then the block keys.
#: ARGV: n, lease ('' = time the slots from now), hold, member, then count_i, window_i; now.
TAKE: Final = _NOW + """
local n, lease, hold, member = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = clock(ARGV[5 + 2 * n])
local blocked = 0
for i = 2 * n + 1, #KEYS do
  local left = tonumber(redis.call('GET', KEYS[i]) or '0') - now
  if left > blocked then blocked = left end
end
if blocked > 0 then return {num(blocked), 1} end
local wait = 0
for i = 1, n do
  local freed, held = KEYS[2 * i - 1], KEYS[2 * i]
  local count, window = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', freed, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  local nf, nh = redis.call('ZCARD', freed), redis.call('ZCARD', held)
  if nf + nh >= count then
    local soonest = math.huge
    if nf > 0 then soonest = tonumber(redis.call('ZRANGE', freed, 0, 0, 'WITHSCORES')[2]) end
    if nh > 0 then soonest = math.min(soonest, now + window) end
    if soonest - now > wait then wait = soonest - now end
  end
end
if wait > 0 then return {num(wait), 0} end
for i = 1, n do
  local window = tonumber(ARGV[4 + 2 * i])
  if lease == '' then
    redis.call('ZADD', KEYS[2 * i - 1], now + window, member)
    keep_for(KEYS[2 * i - 1], window)
  else
    redis.call('ZADD', KEYS[2 * i], now + hold + window, lease)
    keep_for(KEYS[2 * i], hold + window)
  end
end
return {'0', 0}
"""

#: KEYS: freed_1, held_1, ...; ARGV: lease, then window_i; now.
RELEASE: Final = _NOW + """
local n = #KEYS / 2
local now = clock(ARGV[2 + n])
for i = 1, n do
  local window = tonumber(ARGV[1 + i])
  redis.call('ZREM', KEYS[2 * i], ARGV[1])
  redis.call('ZADD', KEYS[2 * i - 1], now + window, ARGV[1])
  keep_for(KEYS[2 * i - 1], window)
end
return 1
"""

#: KEYS: freed keys and block keys; ARGV: triples (key index, seconds from now, member); now.
#: Puts what this process learned while Redis was unreachable into it, in one step: a slot
#: spent (member: its name, into a freed log) or a block (member '', the longer block winning,
#: as in BLOCK).
REPLAY: Final = _NOW + """
local now = clock(ARGV[#ARGV])
for i = 1, #ARGV - 1, 3 do
  local key, seconds, member = KEYS[tonumber(ARGV[i])], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if member == '' then
    if tonumber(redis.call('GET', key) or '0') < now + seconds then
      redis.call('SET', key, num(now + seconds), 'PX', math.ceil(seconds * 1000) + 1000)
    end
  else
    redis.call('ZADD', key, now + seconds, member)
    keep_for(key, seconds)
  end
end
return 1
"""

#: KEYS: block keys; ARGV: seconds; now. The longest block wins.
BLOCK: Final = _NOW + """
local now = clock(ARGV[2])
local untilv = now + tonumber(ARGV[1])
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') < untilv then
    redis.call('SET', KEYS[i], num(untilv), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
  end
end
return 1
"""

#: KEYS: block keys; ARGV: now.
BLOCKED_FOR: Final = _NOW + """
local now = clock(ARGV[1])
local left = 0
for i = 1, #KEYS do
  local l = tonumber(redis.call('GET', KEYS[i]) or '0') - now
  if l > left then left = l end
end
return num(left)
"""

# The breaker, as in _breaker.py. State lives in one hash: state, failures, open_until,
# reopenings, probe_since ('' when no probe is out).
_BREAKER: Final = _NOW + """
local key = KEYS[1]
local threshold, cooldown = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_cooldown, probe_timeout = tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HGET', key, 'state') or 'closed'
local failures = tonumber(redis.call('HGET', key, 'failures') or '0')
local open_until = tonumber(redis.call('HGET', key, 'open_until') or '0')
local reopenings = tonumber(redis.call('HGET', key, 'reopenings') or '0')
local probe_since = redis.call('HGET', key, 'probe_since') or ''
local function open_for(retry_after)
  local backoff = math.min(max_cooldown, cooldown * 2 ^ math.min(reopenings, 30))
  return math.max(backoff, math.min(retry_after or 0, max_cooldown))
end
local function save()
  redis.call('HSET', key, 'state', s, 'failures', failures, 'open_until', num(open_until),
             'reopenings', reopenings, 'probe_since', probe_since)
  redis.call('EXPIRE', key, 86400)
end
"""

#: KEYS: breaker; ARGV: policy (4); now. Returns {allowed, probe, wait, reason}.
BREAKER_ADMIT: Final = _BREAKER + """
local now = clock(ARGV[5])
if s == 'closed' then return {1, 0, '0', ''} end
if s == 'open' then
  if now < open_until then return {0, 0, num(open_until - now), ''} end
  s, probe_since = 'half_open', num(now)
  save()
  return {1, 1, '0', 'cooldown over: one probe'}
end
if probe_since ~= '' and now - tonumber(probe_since) < probe_timeout then
  local remaining = probe_timeout - (now - tonumber(probe_since))
  return {0, 0, num(math.min(remaining, math.max(0.01, cooldown / 10))), ''}
end
probe_since = num(now)
save()
return {1, 1, '0', ''}
"""

#: KEYS: breaker; ARGV: policy (4), success (0/1), probe (0/1), retry_after ('' = none); now.
#: Returns {old state, new state, reason ('' = no change of state)}.
BREAKER_RECORD: Final = _BREAKER + """
local success, probe = ARGV[5] == '1', ARGV[6] == '1'
local retry_after = tonumber(ARGV[7])
local now = clock(ARGV[8])
local old = s
local reason = ''
if success then
  failures = 0
  if s ~= 'closed' then
    s, reopenings, probe_since = 'closed', 0, ''
    if probe then reason = 'probe succeeded' else reason = 'a request succeeded' end
  end
elseif s == 'half_open' and probe then
  reopenings = reopenings + 1
  s, probe_since = 'open', ''
  open_until = now + open_for(retry_after)
  reason = 'probe failed'
elseif s == 'closed' then
  failures = failures + 1
  if failures >= threshold then
    s, failures = 'open', 0
    open_until = now + open_for(retry_after)
    reason = threshold .. ' consecutive failures'
  end
elseif s == 'open' and retry_after ~= nil and retry_after > 0 then
  open_until = math.max(open_until, now + math.min(retry_after, max_cooldown))
end
save()
return {old, s, reason}
"""

#: KEYS: breaker; ARGV: probe (0/1). The probe ended without a verdict.
BREAKER_RELEASE: Final = """
if ARGV[1] == '1' and redis.call('HGET', KEYS[1], 'state') == 'half_open' then
  redis.call('HSET', KEYS[1], 'probe_since', '')
end
return 1
"""

# -- the session registry (RedisRegistry, issue 14) ---------------------------------------------
#
# Every key of a namespace carries the namespace as its hash tag (``iox:reg:{<ns>}:...``), so a
# script touches one cluster slot. KEYS[1]: the lapse index (sorted set: undecided session ->
# lease end, 0 once released); KEYS[2]: the meta hash (undecided session -> 'created forget');
# then entry hashes: d data, c created, o owner ('' = none), f fence, l lease end, x outcome
# (absent while undecided), r rank, g forget at (retention's end, by the store's clock). Every
# reply starts with the time the script used; an entry follows as d, c, o, f, l, decided (0/1),
# x, r. An entry past g is gone, whether or not Redis has expired the key yet (PEXPIRE, one
# second later, does the cleaning): so retention keeps to the scripts' clock, also when the
# tests drive it.
_REG: Final = _NOW + """
local lapse, meta = KEYS[1], KEYS[2]
local function forget_ms(seconds) return math.ceil(seconds * 1000) + 1000 end
local function live(key, sid, now)
  local e = redis.call('HMGET', key, 'd', 'c', 'o', 'f', 'l', 'x', 'r', 'g')
  if not e[1] then return nil end
  if tonumber(e[8]) <= now then
    redis.call('DEL', key)
    redis.call('ZREM', lapse, sid)
    redis.call('HDEL', meta, sid)
    return nil
  end
  return e
end
local function answer(now, e)
  if e == nil then return {num(now)} end
  local decided = '0'
  if e[6] then decided = '1' end
  return {num(now), e[1], e[2], e[3], e[4], e[5], decided, e[6] or '', e[7] or '0'}
end
"""

#: KEYS: lapse, meta, entry; ARGV: session, data, owner, lease, retention; now.
REG_REGISTER: Final = _REG + """
local sid = ARGV[1]
local now = clock(ARGV[6])
local e = live(KEYS[3], sid, now)
if e == nil then
  local lease, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
  e = {ARGV[2], num(now), ARGV[3], '1', num(now + lease), false, false, num(now + retention)}
  redis.call('HSET', KEYS[3], 'd', e[1], 'c', e[2], 'o', e[3], 'f', e[4], 'l', e[5], 'g', e[8])
  redis.call('PEXPIRE', KEYS[3], forget_ms(retention))
  redis.call('ZADD', lapse, e[5], sid)
  redis.call('HSET', meta, sid, e[2] .. ' ' .. e[8])
  keep_for(lapse, retention)
  keep_for(meta, retention)
end
return answer(now, e)
"""

#: KEYS: lapse, meta, entry; ARGV: session; now.
REG_GET: Final = _REG + """
local now = clock(ARGV[2])
return answer(now, live(KEYS[3], ARGV[1], now))
"""

#: KEYS: lapse, meta, entry; ARGV: session, owner, lease, channel; now.
REG_CLAIM: Final = _REG + """
local sid, owner = ARGV[1], ARGV[2]
local now = clock(ARGV[5])
local e = live(KEYS[3], sid, now)
if e == nil or e[6] then return {num(now)} end
if e[3] ~= '' and e[3] ~= owner and tonumber(e[5]) > now then return {num(now)} end
e[3], e[4], e[5] = owner, tostring(tonumber(e[4]) + 1), num(now + tonumber(ARGV[3]))
redis.call('HSET', KEYS[3], 'o', e[3], 'f', e[4], 'l', e[5])
redis.call('ZADD', lapse, e[5], sid)
redis.call('PUBLISH', ARGV[4], sid)
return answer(now, e)
"""

#: KEYS: lapse, meta, entry_1, ...; ARGV: owner, lease, session_1, fence_1, ...; now.
#: Returns the time, then the sessions no longer ours (their leases are left alone).
REG_RENEW: Final = _REG + """
local owner, lease = ARGV[1], tonumber(ARGV[2])
local now = clock(ARGV[#ARGV])
local lost = {num(now)}
for i = 3, #KEYS do
  local sid, fence = ARGV[2 * i - 3], tonumber(ARGV[2 * i - 2])
  local e = live(KEYS[i], sid, now)
  if e == nil or e[6] or e[3] ~= owner or tonumber(e[4]) ~= fence or tonumber(e[5]) <= now then
    lost[#lost + 1] = sid
  else
    local untilv = num(now + lease)
    redis.call('HSET', KEYS[i], 'l', untilv)
    redis.call('ZADD', lapse, untilv, sid)
  end
end
return lost
"""

#: KEYS: lapse, meta, entry_1, ...; ARGV: owner, channel, session_1, fence_1, ...; now.
REG_RELEASE: Final = _REG + """
local owner, channel = ARGV[1], ARGV[2]
local now = clock(ARGV[#ARGV])
for i = 3, #KEYS do
  local sid, fence = ARGV[2 * i - 3], tonumber(ARGV[2 * i - 2])
  local e = live(KEYS[i], sid, now)
  if e ~= nil and not e[6] and e[3] == owner and tonumber(e[4]) == fence then
    redis.call('HSET', KEYS[i], 'o', '', 'l', '0')
    redis.call('ZADD', lapse, '0', sid)
    redis.call('PUBLISH', channel, sid)
  end
end
return {num(now)}
"""

#: KEYS: lapse, meta, entry; ARGV: session, outcome, rank, fence ('' = unfenced), retention,
#: channel; now. First writer wins; a higher rank replaces a lower one; a stale fence is refused.
REG_DECIDE: Final = _REG + """
local sid, rank, fence = ARGV[1], tonumber(ARGV[3]), ARGV[4]
local now = clock(ARGV[7])
local e = live(KEYS[3], sid, now)
if e == nil then return {num(now)} end
if fence ~= '' and tonumber(fence) ~= tonumber(e[4]) then return answer(now, e) end
if e[6] and rank <= tonumber(e[7]) then return answer(now, e) end
local retention = tonumber(ARGV[5])
e[3], e[5], e[6], e[7], e[8] = '', '0', ARGV[2], ARGV[3], num(now + retention)
redis.call('HSET', KEYS[3], 'o', '', 'l', '0', 'x', e[6], 'r', e[7], 'g', e[8])
redis.call('PEXPIRE', KEYS[3], forget_ms(retention))
redis.call('ZREM', lapse, sid)
redis.call('HDEL', meta, sid)
redis.call('PUBLISH', ARGV[6], sid)
return answer(now, e)
"""

#: KEYS: lapse, meta; ARGV: limit, scan; now. Looks at the ``scan`` longest-lapsed sessions,
#: drops the ones past their retention, and returns up to ``limit`` of the rest, oldest first.
REG_ORPHANS: Final = _REG + """
local limit, scan = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = clock(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', lapse, '-inf', num(now), 'LIMIT', 0, scan)
local found = {}
for _, sid in ipairs(due) do
  local m = redis.call('HGET', meta, sid)
  local created, forget
  if m then created, forget = string.match(m, '^(%S+) (%S+)$') end
  if not created or tonumber(forget) <= now then
    redis.call('ZREM', lapse, sid)
    redis.call('HDEL', meta, sid)
  else
    found[#found + 1] = {tonumber(created), sid}
  end
end
table.sort(found, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local r = {num(now)}
for i = 1, math.min(limit, #found) do r[#r + 1] = found[i][2] end
return r
"""


def sharded(script: str) -> str:
    """A registry script for Redis Cluster: it publishes with ``SPUBLISH``, which keeps the
    message on the master of the channel's slot (the namespace's, by its hash tag) where a plain
    ``PUBLISH`` would go to every node of the cluster."""
    return script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
