-- Step REPLAY of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: freed keys and block keys; ARGV: triples (key index, seconds from now, member); now.
-- Puts what this process learned while Redis was unreachable into it, in one step: a slot
-- spent (member: its name, into a freed log) or a block (member '', the longer block winning,
-- as in BLOCK).
-- include clock.lua
local now = clock(ARGV[#ARGV])
for i = 1, #ARGV - 1, 3 do
  local key, seconds, member = KEYS[tonumber(ARGV[i])], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if member == '' then
    if at(redis.call('GET', key)) < now + seconds then
      redis.call('SET', key, num(now + seconds), 'PX', math.ceil(seconds * 1000) + 1000)
    end
  else
    redis.call('ZADD', key, now + seconds, member)
    keep_for(key, seconds)
  end
end
return 1
