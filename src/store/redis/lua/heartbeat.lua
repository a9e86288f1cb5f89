-- Sets last_heartbeat ARGV[2] on the connections ARGV[3..] that still
-- have a record (a removed record is not resurrected as half a hash).
-- KEYS[1] the heartbeats zset; ARGV[1] the connection hash prefix.
-- Returns the ids that had no record.
local missing = {}
for i = 3, #ARGV do
  local ckey = ARGV[1] .. ARGV[i]
  if redis.call('EXISTS', ckey) == 1 then
    redis.call('HSET', ckey, 'last_heartbeat', ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  else
    table.insert(missing, ARGV[i])
  end
end
return missing
