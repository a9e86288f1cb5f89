-- Shared by the registry scripts: removes one connection by id and its
-- traces in every key. KEYS[1] the users set, KEYS[2] the heartbeats zset;
-- ARGV[1] the connection hash prefix, ARGV[2] the user zset prefix (a
-- connection's user zset is named by the username its hash holds, so it
-- can only be known inside the script). Returns the username, or false.
local function remove_one(id)
  local ckey = ARGV[1] .. id
  local user = redis.call('HGET', ckey, 'username')
  redis.call('ZREM', KEYS[2], id)
  if not user then return false end
  redis.call('DEL', ckey)
  local ukey = ARGV[2] .. user
  redis.call('ZREM', ukey, id)
  if redis.call('ZCARD', ukey) == 0 then
    redis.call('DEL', ukey)
    redis.call('SREM', KEYS[1], user)
  end
  return user
end
