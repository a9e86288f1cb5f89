-- One step of a full clear (records.lua prepended): removes up to
-- ARGV[FIRST_ARG + 1] records whose heartbeat is at or before
-- ARGV[FIRST_ARG] (the moment the clear began: a record written since is
-- a live stream's). No leave is told: the nodes write their live streams
-- back at once. Returns {how many ids were looked at, flat user, emptied,
-- ...}: emptied is 1 when the user had no record left (it left the users
-- set), so the caller can count distinct users without keeping every id.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[FIRST_ARG],
  'LIMIT', 0, tonumber(ARGV[FIRST_ARG + 1]))
local out = {}
for _, id in ipairs(ids) do
  local user = remove_one(id, false)
  if user then
    table.insert(out, user)
    table.insert(out, redis.call('EXISTS', USER .. user) == 0 and 1 or 0)
  end
end
return {#ids, out}
