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
-- a stored time, or "never" when there is none (not 0: a test's clock may read negative)
local function at(v) return tonumber(v) or -math.huge end
local function keep_for(key, seconds)
  local ms = math.ceil(seconds * 1000) + 1000
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""

#: KEYS: freed_1, held_1, ..., freed_n, held_n, the fleet's queue (sorted set: asker -> the time
#: it first asked), its due index (asker -> when it must ask again to keep its place), the block
#: keys, then the epoch (a hash: token, born, settle; kept a day past its last take). ARGV: n,
#: lease ('' = time the slots from now), hold, member, asker ('' = none), grace, then count_i,
#: window_i, then the epoch token this process saw within the last window plus hold ('' =
#: none: nothing it spent can still count), a token to use if there is none, how long the
#: slots spent before a data loss may take to come back (the longest window plus the longest
#: hold); now. Returns {wait, blocked (0/1), the fullest budget's share spent with this slot
#: ('1' when not taken), the epoch token}.
#:
#: The epoch tells a data loss: a store restarted empty, or failed over to a replica that had
#: not got the last writes, has no token, or a new one. A process that saw another token knows
#: the logs lost what the last window spent; every take then waits until all of it has come
#: back (the epoch's birth plus that long): no server window overfills across a loss.
#:
#: With an asker (one FairLimiter of one process: only the head of its own queue asks), the
#: askers of the fleet are served in the order they first asked: a slot goes to an asker only when
#: fewer askers are ahead of it than slots are free, and an asker that must wait is told when the
#: slot it is in line for comes back (not merely the soonest one, which the askers ahead of it will
#: take). So a fleet of processes does not stampede at each slot's return. An asker that has not
#: asked again by the time it was told plus ``grace`` loses its place.
TAKE: Final = _NOW + """
local n, lease, hold, member = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local asker, grace = ARGV[5], tonumber(ARGV[6])
local now = clock(ARGV[10 + 2 * n])
local queue, due, epoch = KEYS[2 * n + 1], KEYS[2 * n + 2], KEYS[#KEYS]
local token = redis.call('HGET', epoch, 'token')
if not token then
  token = ARGV[8 + 2 * n]
  redis.call('HSET', epoch, 'token', token, 'born', num(now))
end
if ARGV[7 + 2 * n] ~= '' and token ~= ARGV[7 + 2 * n] then
  local settle = at(redis.call('HGET', epoch, 'born')) + tonumber(ARGV[9 + 2 * n])
  if at(redis.call('HGET', epoch, 'settle')) < settle then
    redis.call('HSET', epoch, 'settle', num(settle))
  end
end
keep_for(epoch, math.max(86400, 2 * tonumber(ARGV[9 + 2 * n])))
local blocked = 0
for i = 2 * n + 3, #KEYS - 1 do
  local left = at(redis.call('GET', KEYS[i])) - now
  if left > blocked then blocked = left end
end
if blocked > 0 then return {num(blocked), 1, '1', token} end
local settling = at(redis.call('HGET', epoch, 'settle')) - now
if settling > 0 then return {num(settling), 0, '1', token} end
local ahead = 0
if asker ~= '' then
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', num(now))) do
    redis.call('ZREM', queue, gone)
    redis.call('ZREM', due, gone)
  end
  local rank = redis.call('ZRANK', queue, asker)
  if rank then ahead = rank else ahead = redis.call('ZCARD', queue) end
end
local wait, fullest = 0, 0
for i = 1, n do
  local freed, held = KEYS[2 * i - 1], KEYS[2 * i]
  local count, window = tonumber(ARGV[5 + 2 * i]), tonumber(ARGV[6 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', freed, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  local nf, nh = redis.call('ZCARD', freed), redis.call('ZCARD', held)
  local free = count - nf - nh
  if (nf + nh + 1) / count > fullest then fullest = (nf + nh + 1) / count end
  if ahead >= free then
    -- the k-th return from now is this asker's (k = 1 with no asker): freed slots come back at
    -- their scores, a held one no sooner than a window from now
    -- (a freed one may come back later than that: a held slot replayed after an outage)
    local k = ahead - math.max(free, 0) + 1
    local before = nf
    if nh > 0 and nf > 0 then before = redis.call('ZCOUNT', freed, '-inf', num(now + window)) end
    local back = math.huge
    if k <= before + nh and k > before then
      back = now + window
    else
      local j = k
      if k > before then j = k - nh end
      if j <= nf then
        back = tonumber(redis.call('ZRANGE', freed, j - 1, j - 1, 'WITHSCORES')[2])
      end
    end
    if back == math.huge then
      -- more askers ahead than slots in the budget: the last slot's return, once more
      back = now + window
    end
    if back - now > wait then wait = back - now end
  end
end
if wait > 0 then
  if asker ~= '' then
    redis.call('ZADD', queue, 'NX', now, asker)
    redis.call('ZADD', due, now + wait + grace, asker)
    local ttl = wait + grace + 60
    keep_for(queue, ttl)
    keep_for(due, ttl)
  end
  return {num(wait), 0, '1', token}
end
if asker ~= '' then
  redis.call('ZREM', queue, asker)
  redis.call('ZREM', due, asker)
end
for i = 1, n do
  local window = tonumber(ARGV[6 + 2 * i])
  if lease == '' then
    redis.call('ZADD', KEYS[2 * i - 1], now + window, member)
    keep_for(KEYS[2 * i - 1], window)
  else
    redis.call('ZADD', KEYS[2 * i], now + hold + window, lease)
    keep_for(KEYS[2 * i], hold + window)
  end
end
return {'0', 0, num(fullest), token}
"""

#: KEYS: the queue and its due index (as in TAKE); ARGV: asker. It waits no more.
LEAVE: Final = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

#: KEYS: freed_1, held_1, ...; ARGV: lease, ago, then window_i; now. ``ago``: how long before
#: this step the request ended, as the sender measured it when it sent the step (less than the
#: true age, which also holds the trip to Redis): the slot comes back a window after
#: ``now - ago``, so a release sent late costs nothing once it arrives.
RELEASE: Final = _NOW + """
local n = #KEYS / 2
local now = clock(ARGV[3 + n])
local ended = now - math.max(tonumber(ARGV[2]) or 0, 0)
for i = 1, n do
  local window = tonumber(ARGV[2 + i])
  redis.call('ZREM', KEYS[2 * i], ARGV[1])
  redis.call('ZADD', KEYS[2 * i - 1], num(ended + window), ARGV[1])
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
    if at(redis.call('GET', key)) < now + seconds then
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
  if at(redis.call('GET', KEYS[i])) < untilv then
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
  local l = at(redis.call('GET', KEYS[i])) - now
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
local open_until = at(redis.call('HGET', key, 'open_until'))
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
# lease end, -inf once released); KEYS[2]: the meta hash (undecided session -> 'created forget');
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
local released = false
for i = 3, #KEYS do
  local sid, fence = ARGV[2 * i - 3], tonumber(ARGV[2 * i - 2])
  local e = live(KEYS[i], sid, now)
  if e ~= nil and not e[6] and e[3] == owner and tonumber(e[4]) == fence then
    redis.call('HSET', KEYS[i], 'o', '', 'l', '0')
    redis.call('ZADD', lapse, '-inf', sid)
    redis.call('PUBLISH', channel, sid)
    released = true
  end
end
if released then redis.call('PUBLISH', channel, '') end  -- RELEASED: orphans to adopt
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

# -- one round trip for many steps (RedisStore and RedisRegistry, see _redis_batch) -------------
#
# Each script above becomes a function of its own KEYS and ARGV; BATCH runs a list of them in
# one EVALSHA, in order, each under pcall so that one step's error reply is that step's alone.
# KEYS: every step's keys, one after the other. ARGV: the number of steps, then for each its
# script's name, its number of keys, its number of args, and its args. Returns one reply a step;
# a step that failed replies {'!err', message}.
_STEPS: Final = ("TAKE", "LEAVE", "RELEASE", "REPLAY", "BLOCK", "BLOCKED_FOR", "BREAKER_ADMIT",
                 "BREAKER_RECORD", "BREAKER_RELEASE", "REG_REGISTER", "REG_GET", "REG_CLAIM",
                 "REG_RENEW", "REG_RELEASE", "REG_DECIDE", "REG_ORPHANS")

BATCH: Final = "local steps = {}\n" + "".join(
    f"steps['{name}'] = function(KEYS, ARGV)\n{globals()[name]}\nend\n" for name in _STEPS
) + """
-- An init's slot and its breaker's leave in one step. KEYS: the breaker, then TAKE's keys.
-- ARGV: the breaker's policy (4), then TAKE's args (their last, now, serves both). Returns
-- {wait, 0 taken / 1 blocked / 2 the breaker says wait, probe (0/1)}, then TAKE's share spent
-- and epoch token (not when the breaker said wait). A probe the breaker let
-- go is taken back when no slot is free (the circuit stays half open, with no probe out).
steps['GATED_TAKE'] = function(KEYS, ARGV)
  local tk, ta = {}, {}
  for j = 2, #KEYS do tk[j - 1] = KEYS[j] end
  for j = 5, #ARGV do ta[j - 4] = ARGV[j] end
  local admit = steps['BREAKER_ADMIT']({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[#ARGV]})
  if tonumber(admit[1]) == 0 then return {admit[3], 2, 0} end
  local ok, taken = pcall(steps['TAKE'], tk, ta)
  if not ok then
    -- the admit's writes stay (no rollback in a script): give its probe back, then fail
    if tonumber(admit[2]) == 1 then steps['BREAKER_RELEASE']({KEYS[1]}, {'1'}) end
    error(taken, 0)
  end
  if taken[1] ~= '0' and tonumber(admit[2]) == 1 then
    steps['BREAKER_RELEASE']({KEYS[1]}, {'1'})
    return {taken[1], taken[2], 0, taken[3], taken[4]}
  end
  return {taken[1], taken[2], admit[2], taken[3], taken[4]}
end

local replies = {}
local ki, ai = 0, 2
for i = 1, tonumber(ARGV[1]) do
  local name, nk, na = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
  local k, a = {}, {}
  for j = 1, nk do k[j] = KEYS[ki + j] end
  for j = 1, na do a[j] = ARGV[ai + 2 + j] end
  ki, ai = ki + nk, ai + 3 + na
  local step = steps[name]
  if step == nil then
    replies[i] = {'!err', 'ERR no step named ' .. tostring(name)}
  else
    local ok, reply = pcall(step, k, a)
    if ok then
      replies[i] = reply
    else
      if type(reply) == 'table' then reply = reply.err or 'ERR a step failed' end
      replies[i] = {'!err', tostring(reply)}
    end
  end
end
return replies
"""

#: BATCH for Redis Cluster: the registry's steps publish with ``SPUBLISH`` (see :func:`sharded`).
BATCH_SHARDED: Final = sharded(BATCH)
