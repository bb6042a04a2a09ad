-- batch.lua: one round trip for many steps (RedisStore and RedisRegistry, see _redis_batch)
--
-- Each step file (take.lua, ...) becomes a function of its own KEYS and ARGV; BATCH runs a list of them in
-- one EVALSHA, in order, each under pcall so that one step's error reply is that step's alone.
-- KEYS: every step's keys, one after the other. ARGV: the number of steps, then for each its
-- script's name, its number of keys, its number of args, and its args. Returns one reply a step;
-- a step that failed replies {'!err', message}.
--
-- Loaded by _redis_lua: the line below becomes `local steps = {}` and one function per step
-- file, steps['TAKE'] = function(KEYS, ARGV) <take.lua> end, and so on.
-- include-steps
-- An init's slot and its breaker's leave in one step. KEYS: the breaker, then TAKE's keys.
-- ARGV: the breaker's policy (4), then TAKE's args (their last, now, serves both). Returns
-- {wait, 0 taken / 1 blocked / 2 the breaker says wait, probe (0/1)}, then TAKE's share spent
-- and epoch token (not when the breaker said wait). A probe the breaker let
-- go is taken back when no slot is free (the circuit stays half open, with no probe out).
steps['GATED_TAKE'] = function(KEYS, ARGV)
  local tk, ta = {}, {}
  for j = 2, #KEYS do tk[j - 1] = KEYS[j] end
  for j = 5, #ARGV do ta[j - 4] = ARGV[j] end
  local admit = steps['BREAKER_ADMIT']({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[#ARGV]})
  if tonumber(admit[1]) == 0 then return {admit[3], 2, 0} end
  local ok, taken = pcall(steps['TAKE'], tk, ta)
  if not ok then
    -- the admit's writes stay (no rollback in a script): give its probe back, then fail
    if tonumber(admit[2]) == 1 then steps['BREAKER_RELEASE']({KEYS[1]}, {'1'}) end
    error(taken, 0)
  end
  if taken[1] ~= '0' and tonumber(admit[2]) == 1 then
    steps['BREAKER_RELEASE']({KEYS[1]}, {'1'})
    return {taken[1], taken[2], 0, taken[3], taken[4]}
  end
  return {taken[1], taken[2], admit[2], taken[3], taken[4]}
end

local replies = {}
local ki, ai = 0, 2
for i = 1, tonumber(ARGV[1]) do
  local name, nk, na = ARGV[ai], tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
  local k, a = {}, {}
  for j = 1, nk do k[j] = KEYS[ki + j] end
  for j = 1, na do a[j] = ARGV[ai + 2 + j] end
  ki, ai = ki + nk, ai + 3 + na
  local step = steps[name]
  if step == nil then
    replies[i] = {'!err', 'ERR no step named ' .. tostring(name)}
  else
    local ok, reply = pcall(step, k, a)
    if ok then
      replies[i] = reply
    else
      if type(reply) == 'table' then reply = reply.err or 'ERR a step failed' end
      replies[i] = {'!err', tostring(reply)}
    end
  end
end
return replies
