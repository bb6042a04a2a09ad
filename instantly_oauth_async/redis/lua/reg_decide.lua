-- Step REG_DECIDE of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: lapse, meta, entry; ARGV: session, outcome, rank, fence ('' = unfenced), retention,
-- channel; now. First writer wins; a higher rank replaces a lower one; a stale fence is refused.
-- include registry.lua
local sid, rank, fence = ARGV[1], tonumber(ARGV[3]), ARGV[4]
local now = clock(ARGV[7])
local e = live(KEYS[3], sid, now)
if e == nil then return {num(now)} end
if fence ~= '' and tonumber(fence) ~= tonumber(e[4]) then return answer(now, e) end
if e[6] and rank <= tonumber(e[7]) then return answer(now, e) end
local retention = tonumber(ARGV[5])
e[3], e[5], e[6], e[7], e[8] = '', '0', ARGV[2], ARGV[3], num(now + retention)
redis.call('HSET', KEYS[3], 'o', '', 'l', '0', 'x', e[6], 'r', e[7], 'g', e[8])
redis.call('PEXPIRE', KEYS[3], forget_ms(retention))
redis.call('ZREM', lapse, sid)
redis.call('HDEL', meta, sid)
redis.call('PUBLISH', ARGV[6], sid)
return answer(now, e)
