-- A user's claims dropped: ARGV: user, ticket ('' = none), session id ('' = none), now. Drops
-- the claim of that ticket, and any bound to that session. Returns 0.
-- include claims.lua
local all = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, m in ipairs(all) do
  if string.sub(m, 33) == ARGV[1] and (string.sub(m, 1, 32) == ARGV[2] or
      (ARGV[3] ~= '' and redis.call('HGET', KEYS[2], m) == ARGV[3])) then
    redis.call('ZREM', KEYS[1], m); redis.call('HDEL', KEYS[2], m)
  end
end
return 0
