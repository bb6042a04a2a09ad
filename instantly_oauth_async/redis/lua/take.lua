-- Step TAKE of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: freed_1, held_1, ..., freed_n, held_n, the fleet's queue (sorted set: asker -> the time
-- it first asked), its due index (asker -> when it must ask again to keep its place), the block
-- keys, then the epoch (a hash: token, born, settle; kept a day past its last take). ARGV: n,
-- lease ('' = time the slots from now), hold, member, asker ('' = none), grace, then count_i,
-- window_i, then the epoch token this process saw within the last window plus hold ('' =
-- none: nothing it spent can still count), a token to use if there is none, how long the
-- slots spent before a data loss may take to come back (the longest window plus the longest
-- hold); now. Returns {wait, blocked (0/1), the fullest budget's share spent with this slot
-- ('1' when not taken), the epoch token}.
--
-- The epoch tells a data loss: a store restarted empty, or failed over to a replica that had
-- not got the last writes, has no token, or a new one. A process that saw another token knows
-- the logs lost what the last window spent; every take then waits until all of it has come
-- back (the epoch's birth plus that long): no server window overfills across a loss.
--
-- With an asker (one FairLimiter of one process: only the head of its own queue asks), the
-- askers of the fleet are served in the order they first asked: a slot goes to an asker only when
-- fewer askers are ahead of it than slots are free, and an asker that must wait is told when the
-- slot it is in line for comes back (not merely the soonest one, which the askers ahead of it will
-- take). So a fleet of processes does not stampede at each slot's return. An asker that has not
-- asked again by the time it was told plus ``grace`` loses its place.
-- include clock.lua
local n, lease, hold, member = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local asker, grace = ARGV[5], tonumber(ARGV[6])
local now = clock(ARGV[10 + 2 * n])
local queue, due, epoch = KEYS[2 * n + 1], KEYS[2 * n + 2], KEYS[#KEYS]
local token = redis.call('HGET', epoch, 'token')
if not token then
  token = ARGV[8 + 2 * n]
  redis.call('HSET', epoch, 'token', token, 'born', num(now))
end
if ARGV[7 + 2 * n] ~= '' and token ~= ARGV[7 + 2 * n] then
  local settle = at(redis.call('HGET', epoch, 'born')) + tonumber(ARGV[9 + 2 * n])
  if at(redis.call('HGET', epoch, 'settle')) < settle then
    redis.call('HSET', epoch, 'settle', num(settle))
  end
end
keep_for(epoch, math.max(86400, 2 * tonumber(ARGV[9 + 2 * n])))
local blocked = 0
for i = 2 * n + 3, #KEYS - 1 do
  local left = at(redis.call('GET', KEYS[i])) - now
  if left > blocked then blocked = left end
end
if blocked > 0 then return {num(blocked), 1, '1', token} end
local settling = at(redis.call('HGET', epoch, 'settle')) - now
if settling > 0 then return {num(settling), 0, '1', token} end
local ahead = 0
if asker ~= '' then
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', num(now))) do
    redis.call('ZREM', queue, gone)
    redis.call('ZREM', due, gone)
  end
  local rank = redis.call('ZRANK', queue, asker)
  if rank then ahead = rank else ahead = redis.call('ZCARD', queue) end
end
local wait, fullest = 0, 0
for i = 1, n do
  local freed, held = KEYS[2 * i - 1], KEYS[2 * i]
  local count, window = tonumber(ARGV[5 + 2 * i]), tonumber(ARGV[6 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', freed, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  local nf, nh = redis.call('ZCARD', freed), redis.call('ZCARD', held)
  local free = count - nf - nh
  if (nf + nh + 1) / count > fullest then fullest = (nf + nh + 1) / count end
  if ahead >= free then
    -- the k-th return from now is this asker's (k = 1 with no asker): freed slots come back at
    -- their scores, a held one no sooner than a window from now
    -- (a freed one may come back later than that: a held slot replayed after an outage)
    local k = ahead - math.max(free, 0) + 1
    local before = nf
    if nh > 0 and nf > 0 then before = redis.call('ZCOUNT', freed, '-inf', num(now + window)) end
    local back = math.huge
    if k <= before + nh and k > before then
      back = now + window
    else
      local j = k
      if k > before then j = k - nh end
      if j <= nf then
        back = tonumber(redis.call('ZRANGE', freed, j - 1, j - 1, 'WITHSCORES')[2])
      end
    end
    if back == math.huge then
      -- more askers ahead than slots in the budget: the last slot's return, once more
      back = now + window
    end
    if back - now > wait then wait = back - now end
  end
end
if wait > 0 then
  if asker ~= '' then
    redis.call('ZADD', queue, 'NX', now, asker)
    redis.call('ZADD', due, now + wait + grace, asker)
    local ttl = wait + grace + 60
    keep_for(queue, ttl)
    keep_for(due, ttl)
  end
  return {num(wait), 0, '1', token}
end
if asker ~= '' then
  redis.call('ZREM', queue, asker)
  redis.call('ZREM', due, asker)
end
for i = 1, n do
  local window = tonumber(ARGV[6 + 2 * i])
  if lease == '' then
    redis.call('ZADD', KEYS[2 * i - 1], now + window, member)
    keep_for(KEYS[2 * i - 1], window)
  else
    redis.call('ZADD', KEYS[2 * i], now + hold + window, lease)
    keep_for(KEYS[2 * i], hold + window)
  end
end
return {'0', 0, num(fullest), token}
