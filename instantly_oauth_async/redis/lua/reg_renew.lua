-- Step REG_RENEW of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: lapse, meta, entry_1, ...; ARGV: owner, lease, session_1, fence_1, ...; now.
-- Returns the time, then the sessions no longer ours (their leases are left alone).
-- include registry.lua
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
