-- claims.lua: what every step of the connect guard (RedisClaims, _redis_claims.py) shares.
-- KEYS: due (sorted set: ticket..user -> deadline), sids (hash: the same member -> session id).
-- A member is the 32-digit ticket followed by the user, so a user is string.sub(member, 33).
-- The last ARGV is now ('' = Redis TIME; only the tests give one). Claims past their deadline
-- are dropped first; keep() makes both keys expire a second after the last deadline.
local now
if ARGV[#ARGV] ~= '' then now = tonumber(ARGV[#ARGV]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) + tonumber(t[2]) / 1000000 end
local function num(x) return string.format('%.17g', x) end
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', num(now))
for _, m in ipairs(gone) do redis.call('HDEL', KEYS[2], m) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now)) end
local function keep()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #last == 0 then return end
  local ms = math.ceil((tonumber(last[2]) - now) * 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], ms); redis.call('PEXPIRE', KEYS[2], ms)
end
