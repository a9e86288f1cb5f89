-- Removes every connection of the user whose zset is KEYS[3] and whose
-- name is ARGV[3].
local ids = redis.call('ZRANGE', KEYS[3], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local user = remove_one(id)
  if user then table.insert(out, id); table.insert(out, user) end
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[1], ARGV[3])
return out
