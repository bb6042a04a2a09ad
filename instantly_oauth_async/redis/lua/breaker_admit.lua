-- Step BREAKER_ADMIT of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: breaker; ARGV: policy (4); now. Returns {allowed, probe, wait, reason}.
-- include breaker.lua
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
