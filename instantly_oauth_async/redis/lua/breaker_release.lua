-- Step BREAKER_RELEASE of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: breaker; ARGV: probe (0/1). The probe ended without a verdict.
if ARGV[1] == '1' and redis.call('HGET', KEYS[1], 'state') == 'half_open' then
  redis.call('HSET', KEYS[1], 'probe_since', '')
end
return 1
