-- Removes every connection record (all users, all nodes). KEYS[1] the
-- users set, KEYS[2] the heartbeats zset; ARGV[1] the connection hash
-- prefix, ARGV[2] the user zset prefix. Returns a flat id, user, ...
local out = {}
local seen = {}
local function drop(id)
  if seen[id] then return end
  seen[id] = true
  local ckey = ARGV[1] .. id
  local user = redis.call('HGET', ckey, 'username')
  if user then
    redis.call('DEL', ckey)
    table.insert(out, id); table.insert(out, user)
  end
end
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  for _, id in ipairs(redis.call('ZRANGE', ARGV[2] .. user, 0, -1)) do drop(id) end
  redis.call('DEL', ARGV[2] .. user)
end
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do drop(id) end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return out
