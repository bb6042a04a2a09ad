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
