-- Step BLOCKED_FOR of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: block keys; ARGV: now.
-- include clock.lua
local now = clock(ARGV[1])
local left = 0
for i = 1, #KEYS do
  local l = at(redis.call('GET', KEYS[i])) - now
  if l > left then left = l end
end
return num(left)
