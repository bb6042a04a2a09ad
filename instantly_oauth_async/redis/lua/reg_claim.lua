-- Step REG_CLAIM of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: lapse, meta, entry; ARGV: session, owner, lease, channel; now.
-- include registry.lua
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
