-- One step of a full clear: removes up to ARGV[4] records whose heartbeat
-- is at or before ARGV[3] (the moment the clear began: a record written
-- since is a live stream's). Needs remove_one. Returns {how many ids were
-- looked at, flat user, emptied, ...}: emptied is 1 when the user had no
-- record left (it left the users set), so the caller can count distinct
-- users without keeping every id.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local user = remove_one(id)
  if user then
    table.insert(out, user)
    table.insert(out, redis.call('EXISTS', ARGV[2] .. user) == 0 and 1 or 0)
  end
end
return {#ids, out}
