-- A claim for a user: ARGV: user, new ticket, hold, per_user, limit, now. Returns {state,
-- ticket, session id}: 'held' (the user's newest claim, one bound to a session first), 'full'
-- (the cap in all), or 'taken' (the new ticket, held for hold seconds).
-- include claims.lua
local user, ticket = ARGV[1], ARGV[2]
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local mine, best, best_sid, best_at = 0, nil, '', -math.huge
for i = 1, #all, 2 do
  local m, at = all[i], tonumber(all[i + 1])
  if string.sub(m, 33) == user then
    mine = mine + 1
    local sid = redis.call('HGET', KEYS[2], m) or ''
    if best == nil or (sid ~= '' and best_sid == '') or
        ((sid ~= '') == (best_sid ~= '') and at > best_at) then
      best, best_sid, best_at = m, sid, at
    end
  end
end
if mine >= tonumber(ARGV[4]) then return {'held', string.sub(best, 1, 32), best_sid} end
if #all / 2 >= tonumber(ARGV[5]) then return {'full', '', ''} end
redis.call('ZADD', KEYS[1], num(now + tonumber(ARGV[3])), ticket .. user)
redis.call('HSET', KEYS[2], ticket .. user, '')
keep()
return {'taken', ticket, ''}
