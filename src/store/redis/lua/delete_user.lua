-- Removes every connection of the user whose zset is KEYS[FIRST_KEY] and
-- whose name is ARGV[FIRST_ARG] (records.lua prepended), telling their
-- topics' other followers.
local ids = redis.call('ZRANGE', KEYS[FIRST_KEY], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local user = remove_one(id, true)
  if user then table.insert(out, id); table.insert(out, user) end
end
redis.call('DEL', KEYS[FIRST_KEY])
redis.call('SREM', KEYS[1], ARGV[FIRST_ARG])
flush_announced()
return out
