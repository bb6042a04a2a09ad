-- Step BLOCK of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: block keys; ARGV: seconds; now. The longest block wins.
-- include clock.lua
local now = clock(ARGV[2])
local untilv = now + tonumber(ARGV[1])
for i = 1, #KEYS do
  if at(redis.call('GET', KEYS[i])) < untilv then
    redis.call('SET', KEYS[i], num(untilv), 'PX', math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
  end
end
return 1
