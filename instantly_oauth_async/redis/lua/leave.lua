-- Step LEAVE of batch.lua, the one script RedisStore sends (see _redis_batch.Batcher).
-- KEYS: the queue and its due index (as in TAKE); ARGV: asker. It waits no more.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
