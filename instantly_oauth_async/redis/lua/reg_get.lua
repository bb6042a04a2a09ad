-- Step REG_GET of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: lapse, meta, entry; ARGV: session; now.
-- include registry.lua
local now = clock(ARGV[2])
return answer(now, live(KEYS[3], ARGV[1], now))
