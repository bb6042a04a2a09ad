-- A claim bound to the session it started: ARGV: member, session id, hold, now. Returns 1 when
-- bound (held hold seconds more), 0 when the claim is gone.
-- include claims.lua
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then return 0 end
redis.call('ZADD', KEYS[1], num(now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
keep()
return 1
