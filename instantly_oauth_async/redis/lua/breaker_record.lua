-- Step BREAKER_RECORD of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: breaker; ARGV: policy (4), success (0/1), probe (0/1), retry_after ('' = none); now.
-- Returns {old state, new state, reason ('' = no change of state)}.
-- include breaker.lua
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
