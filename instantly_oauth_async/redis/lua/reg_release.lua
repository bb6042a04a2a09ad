-- Step REG_RELEASE of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: lapse, meta, entry_1, ...; ARGV: owner, channel, session_1, fence_1, ...; now.
-- include registry.lua
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
