-- The breaker, as in _breaker.py. State lives in one hash: state, failures, open_until,
-- reopenings, probe_since ('' when no probe is out).
-- include clock.lua
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
