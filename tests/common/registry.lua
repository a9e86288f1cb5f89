-- The whole registry under the prefix ARGV[1], read in one atomic step so
-- that the checks of redis_server.rs see it as no script leaves it half
-- done: {heartbeats, {conn key, hash...}, users, {user zset key, members
-- in score order}, {topic zset key, members and scores}, {topic users
-- hash key, hash}, {topic nodes hash key, hash}, topics set}.
local p = ARGV[1]
local function each(pattern, read)
  local out = {}
  for _, key in ipairs(redis.call('KEYS', p .. pattern)) do
    table.insert(out, {key, read(key)})
  end
  return out
end
local function hash(key) return redis.call('HGETALL', key) end
return {
  redis.call('ZRANGE', p .. ':heartbeats', 0, -1),
  each(':conn:*', hash),
  redis.call('SMEMBERS', p .. ':users'),
  each(':user:*', function(key) return redis.call('ZRANGE', key, 0, -1) end),
  each(':topic:*', function(key) return redis.call('ZRANGE', key, 0, -1, 'WITHSCORES') end),
  each(':topic_users:*', hash),
  each(':topic_nodes:*', hash),
  redis.call('SMEMBERS', p .. ':topics'),
}
