-- Step REG_REGISTER of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: lapse, meta, entry; ARGV: session, data, owner, lease, retention; now.
-- include registry.lua
local sid = ARGV[1]
local now = clock(ARGV[6])
local e = live(KEYS[3], sid, now)
if e == nil then
  local lease, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
  e = {ARGV[2], num(now), ARGV[3], '1', num(now + lease), false, false, num(now + retention)}
  redis.call('HSET', KEYS[3], 'd', e[1], 'c', e[2], 'o', e[3], 'f', e[4], 'l', e[5], 'g', e[8])
  redis.call('PEXPIRE', KEYS[3], forget_ms(retention))
  redis.call('ZADD', lapse, e[5], sid)
  redis.call('HSET', meta, sid, e[2] .. ' ' .. e[8])
  keep_for(lapse, retention)
  keep_for(meta, retention)
end
return answer(now, e)
