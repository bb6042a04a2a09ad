-- -- the session registry (RedisRegistry, issue 14) ---------------------------------------------
--
-- Every key of a namespace carries the namespace as its hash tag (``iox:reg:{<ns>}:...``), so a
-- script touches one cluster slot. KEYS[1]: the lapse index (sorted set: undecided session ->
-- lease end, -inf once released); KEYS[2]: the meta hash (undecided session -> 'created forget');
-- then entry hashes: d data, c created, o owner ('' = none), f fence, l lease end, x outcome
-- (absent while undecided), r rank, g forget at (retention's end, by the store's clock). Every
-- reply starts with the time the script used; an entry follows as d, c, o, f, l, decided (0/1),
-- x, r. An entry past g is gone, whether or not Redis has expired the key yet (PEXPIRE, one
-- second later, does the cleaning): so retention keeps to the scripts' clock, also when the
-- tests drive it.
-- include clock.lua
local lapse, meta = KEYS[1], KEYS[2]
local function forget_ms(seconds) return math.ceil(seconds * 1000) + 1000 end
local function live(key, sid, now)
  local e = redis.call('HMGET', key, 'd', 'c', 'o', 'f', 'l', 'x', 'r', 'g')
  if not e[1] then return nil end
  if tonumber(e[8]) <= now then
    redis.call('DEL', key)
    redis.call('ZREM', lapse, sid)
    redis.call('HDEL', meta, sid)
    return nil
  end
  return e
end
local function answer(now, e)
  if e == nil then return {num(now)} end
  local decided = '0'
  if e[6] then decided = '1' end
  return {num(now), e[1], e[2], e[3], e[4], e[5], decided, e[6] or '', e[7] or '0'}
end
