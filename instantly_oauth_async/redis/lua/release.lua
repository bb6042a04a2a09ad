-- Step RELEASE of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: freed_1, held_1, ...; ARGV: lease, ago, then window_i; now. ``ago``: how long before
-- this step the request ended, as the sender measured it when it sent the step (less than the
-- true age, which also holds the trip to Redis): the slot comes back a window after
-- ``now - ago``, so a release sent late costs nothing once it arrives.
-- include clock.lua
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
