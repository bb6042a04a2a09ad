-- Step REG_ORPHANS of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: lapse, meta; ARGV: limit, scan; now. Looks at the ``scan`` longest-lapsed sessions,
-- drops the ones past their retention, and returns up to ``limit`` of the rest, oldest first.
-- include registry.lua
local limit, scan = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = clock(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', lapse, '-inf', num(now), 'LIMIT', 0, scan)
local found = {}
for _, sid in ipairs(due) do
  local m = redis.call('HGET', meta, sid)
  local created, forget
  if m then created, forget = string.match(m, '^(%S+) (%S+)$') end
  if not created or tonumber(forget) <= now then
    redis.call('ZREM', lapse, sid)
    redis.call('HDEL', meta, sid)
  else
    found[#found + 1] = {tonumber(created), sid}
  end
end
table.sort(found, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local r = {num(now)}
for i = 1, math.min(limit, #found) do r[#r + 1] = found[i][2] end
return r
