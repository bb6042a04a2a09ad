-- ARGV: user ('' = everyone), now. Returns how many claims are held.
-- include claims.lua
if ARGV[1] == '' then return redis.call('ZCARD', KEYS[1]) end
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 33) == ARGV[1] then n = n + 1 end
end
return n
