-- Removes up to ARGV[FIRST_ARG + 1] records whose heartbeat is at or
-- before ARGV[FIRST_ARG] (records.lua prepended); their topics' other
-- followers are told when ARGV[FIRST_ARG + 2] is '1' (not when the sweep
-- may take live streams' records, which their nodes write back at once).
-- Returns {how many were looked at, flat id, user, ...}.
local leave = ARGV[FIRST_ARG + 2] == '1'
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[FIRST_ARG],
  'LIMIT', 0, tonumber(ARGV[FIRST_ARG + 1]))
local out = {}
for _, id in ipairs(ids) do
  local user = remove_one(id, leave)
  if user then table.insert(out, id); table.insert(out, user) end
end
flush_announced()
return {#ids, out}
