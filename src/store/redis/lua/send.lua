-- With history off: reads each message's targets and publishes it to the
-- nodes that hold them (route.lua, prepended), for a batch in one step.
-- KEYS[1] the key present while a clear's re-registration runs, KEYS[2]
-- the key missing when Redis lost the registry (route.lua); then one
-- key per message: the user's zset, or the heartbeats zset whose size is a
-- broadcast's count. ARGV[1] the shared bus channel, ARGV[2] the connection
-- hash prefix, ARGV[3] the re-registration window (ms, route.lua); then
-- three per message: mode (`all`, `first`, `broadcast`),
-- its id, and its bus event as JSON without `id`, `ids` and the closing
-- brace. Returns one {count, ids...} per message.
local results = {}
local route = router(ARGV[1], ARGV[2], untargeted(KEYS[1], KEYS[2], ARGV[3]))
for m = 1, #KEYS - 2 do
  local tkey = KEYS[m + 2]
  local a = 3 * m + 1
  local mode, id, head = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  if mode == 'broadcast' then
    local n = redis.call('ZCARD', tkey)
    if n > 0 then route.add(head .. ',"id":"' .. id .. '"}', nil) end
    table.insert(results, {n})
  else
    local stop = -1
    if mode == 'first' then stop = 0 end
    local ids = redis.call('ZRANGE', tkey, 0, stop)
    -- With no record, a tab whose record is missing (re-registration
    -- running) may still be live: route.nodes sends it to every node then.
    if #ids > 0 or mode == 'all' then
      local event = head .. ',"id":"' .. id .. '"'
      if mode == 'first' then
        event = event .. ',"ids":["' .. table.concat(ids, '","') .. '"]'
      end
      route.add(event .. '}', route.nodes(ids))
    end
    local out = {#ids}
    for _, x in ipairs(ids) do table.insert(out, x) end
    table.insert(results, out)
  end
end
route.flush()
return results
