-- Reads each message's targets, keeps it and publishes it on the bus, for
-- a batch of messages in one atomic step: no stream can register between
-- reading and keeping, and the bus carries messages in id order, so every
-- node (the sender too) delivers them to each stream in that order.
-- A user's or a topic's message goes only to the nodes that hold its
-- targets (route.lua, prepended); ids come from sequence.lua (prepended).
--
-- KEYS[1] the id sequence, KEYS[2] the key present while a clear's
-- re-registration runs, KEYS[3] the key missing when Redis lost the
-- registry, KEYS[4] the nodes' write-back reports (route.lua); then per
-- message: its history stream, and the key its targets come from (the
-- user's zset, the heartbeats zset whose size is a broadcast's count, or
-- the topic's followers zset), and for a topic its nodes hash.
-- ARGV[1] entries kept per stream, ARGV[2] the age kept (ms), ARGV[3] the
-- shared bus channel, ARGV[4] the connection hash prefix, ARGV[5] the
-- re-registration window (ms, route.lua); then four per
-- message: event, data, mode (`all`: the user's ids, `first`: one tab,
-- `broadcast` or `topic`: the count), and its bus event as JSON without
-- `id`, `ids` and the closing brace (built by the node, so the script only
-- appends).
-- Returns one {id, count, ids...} per message, or the error RESYNCING
-- (nothing kept) while a one-tab message has no record to go to.
--
-- A kept entry says who it was for (`f`): 0 every tab of its user (or
-- everyone), 1 one tab, the connection `c`, 2 one tab while the user had
-- none (the first tab back). replay.lua gives 1 and 2 to another tab only
-- when `c` surely did not get it, and then to one tab only.
--
-- Trimming is Redis's cheap kind (`MAXLEN ~`: whole stream nodes, about
-- three times cheaper than exact trimming), to no fewer than size + 1
-- entries; what is served is cut exactly by replay.lua. The key expires
-- `ttl` after its last message.
local n = (#ARGV - 5) / 4
local everyone = untargeted(KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[5])
local modes, streams, tkeys, nkeys = {}, {}, {}, {}
local k = 5
for m = 1, n do
  modes[m] = ARGV[4 * m + 4]
  streams[m], tkeys[m] = KEYS[k], KEYS[k + 1]
  k = k + 2
  if modes[m] == 'topic' then
    nkeys[m] = KEYS[k]
    k = k + 1
  end
end
refuse_unrouted(everyone, modes, tkeys)
local ms, seq = sequence_after(KEYS[1])
-- Numbers are turned into text once per batch where possible: Lua formats
-- them with printf's floating-point path, a tenth of Redis's time here.
local prefix = string.format('%d-', ms)
local maxlen = string.format('%d', tonumber(ARGV[1]) + 1)
local results = {}
local route = router(ARGV[3], ARGV[4], everyone)
local id
for m = 1, n do
  local stream, tkey = streams[m], tkeys[m]
  local a = 4 * m + 2
  local event, data, mode, head = ARGV[a], ARGV[a + 1], modes[m], ARGV[a + 3]
  local out
  local ids = {}
  seq = seq + 1
  id = prefix .. string.format('%d', seq)
  if mode == 'broadcast' then
    out = {id, redis.call('ZCARD', tkey)}
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', event, 'd', data, 'f', '0')
    route.add(head .. ',"id":"' .. id .. '"}', nil)
  elseif mode == 'topic' then
    out = {id, redis.call('ZCARD', tkey)}
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', event, 'd', data, 'f', '0')
    route.add(head .. ',"id":"' .. id .. '"}', route.topic(nkeys[m]))
  elseif mode == 'first' then
    local first = route.first(redis.call('ZRANGE', tkey, 0, -1))
    if first then
      out = {id, 1, first}
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', event, 'd', data, 'f', '1', 'c', first)
      -- Connection ids are uuids this project wrote: no JSON escaping.
      route.add(head .. ',"id":"' .. id .. '","ids":["' .. first .. '"]}', route.nodes({first}))
    else
      out = {id, 0}
      redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', event, 'd', data, 'f', '2')
    end
  else
    ids = redis.call('ZRANGE', tkey, 0, -1)
    out = {id, #ids}
    for _, x in ipairs(ids) do table.insert(out, x) end
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', event, 'd', data, 'f', '0')
    route.add(head .. ',"id":"' .. id .. '"}', route.nodes(ids))
  end
  redis.call('PEXPIRE', stream, ARGV[2])
  table.insert(results, out)
end
if id then redis.call('SET', KEYS[1], id) end
route.flush()
return results
