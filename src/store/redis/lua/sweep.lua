-- Removes up to ARGV[4] records whose heartbeat is at or before ARGV[3];
-- returns {how many were looked at, flat id, user, ...}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local user = remove_one(id)
  if user then table.insert(out, id); table.insert(out, user) end
end
return {#ids, out}
