-- With history off: reads each message's targets and publishes it to the
-- nodes that hold them (route.lua, prepended), for a batch in one step.
-- KEYS[1] the key present while a clear's re-registration runs, KEYS[2]
-- the key missing when Redis lost the registry, KEYS[3] the nodes'
-- write-back reports (route.lua); then per message: the user's zset, the
-- heartbeats zset whose size is a broadcast's count, or a topic's
-- followers zset and its nodes hash. ARGV[1] the shared bus channel,
-- ARGV[2] the connection hash prefix, ARGV[3] the re-registration window
-- (ms, route.lua); then three per message: mode (`all`, `first`,
-- `broadcast`, `topic`), its id, and its bus event as JSON without `id`,
-- `ids` and the closing brace. Returns one {count, ids...} per
-- message, or the error RESYNCING (nothing published) while a one-tab
-- message has no record to go to, or DEAF (nothing published) while on a
-- cluster a target's node is subscribing again (route.lua).
local n = (#ARGV - 3) / 3
local everyone = untargeted(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3])
local modes, tkeys, nkeys = {}, {}, {}
local k = 4
for m = 1, n do
  modes[m] = ARGV[3 * m + 1]
  tkeys[m] = KEYS[k]
  k = k + 1
  if modes[m] == 'topic' then
    nkeys[m] = KEYS[k]
    k = k + 1
  end
end
refuse_unrouted(everyone, modes, tkeys)
local results = {}
local route = router(ARGV[1], ARGV[2], everyone, true)
-- Every message's nodes first, publishing nothing: a refusal (DEAF) must
-- leave the whole batch unsent, as its 503 says.
local planned = {}
for m = 1, n do
  local tkey = tkeys[m]
  local a = 3 * m + 1
  local mode, id, head = modes[m], ARGV[a + 1], ARGV[a + 2]
  local event = head .. ',"id":"' .. id .. '"'
  if mode == 'broadcast' then
    local count = redis.call('ZCARD', tkey)
    if count > 0 then table.insert(planned, {event .. '}', nil}) end
    table.insert(results, {count})
  elseif mode == 'topic' then
    -- With no record, a follower whose record is missing (re-registration
    -- running) may still be live: route.topic sends it to every node then.
    table.insert(planned, {event .. '}', route.topic(nkeys[m])})
    table.insert(results, {redis.call('ZCARD', tkey)})
  elseif mode == 'first' then
    local first = route.first(redis.call('ZRANGE', tkey, 0, -1))
    if first then
      table.insert(planned, {event .. ',"ids":["' .. first .. '"]}', route.nodes({first})})
      table.insert(results, {1, first})
    else
      table.insert(results, {0})
    end
  else
    local ids = redis.call('ZRANGE', tkey, 0, -1)
    -- With no record, a tab whose record is missing (re-registration
    -- running) may still be live: route.nodes sends it to every node then.
    table.insert(planned, {event .. '}', route.nodes(ids)})
    local out = {#ids}
    for _, x in ipairs(ids) do table.insert(out, x) end
    table.insert(results, out)
  end
end
for _, p in ipairs(planned) do route.add(p[1], p[2]) end
route.flush()
return results
