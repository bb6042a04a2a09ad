-- Shared by every step that reads the time: clock(override) reads Redis TIME (so the hosts'
-- clocks never matter) unless the step's last ARGV overrides it (only the tests do, to compare
-- the scripts step for step with the Python functions in _limiter and _breaker); num(x) turns a
-- number into the string a reply carries (a Lua number in a reply is truncated to an integer).
local function clock(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(x) return string.format('%.17g', x) end
-- a stored time, or "never" when there is none (not 0: a test's clock may read negative)
local function at(v) return tonumber(v) or -math.huge end
local function keep_for(key, seconds)
  local ms = math.ceil(seconds * 1000) + 1000
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
