-- On a Redis Cluster with history on: keeps a batch of broadcasts and
-- topics' messages in the home's streams, with ids from the home's own
-- sequence, and publishes them in one payload, in id order, on the home's
-- shared channel, which every node hears (a node gives a topic's message
-- to the followers it holds). Their counts are read by the caller from
-- the partitions, which hold the registry.
--
-- KEYS[1] the home's id sequence, then per message its stream (the
-- broadcasts', or its topic's). ARGV[1] entries kept per stream, ARGV[2]
-- the age kept (ms), ARGV[3] the home's shared channel; then three per
-- message: event, data, and its bus event as JSON without `id` and the
-- closing brace. Returns the ids, in order. Trimming and expiry as
-- append.lua's; ids from sequence.lua (prepended).
local n = (#ARGV - 3) / 3
local ms, seq = sequence_after(KEYS[1])
local prefix = string.format('%d-', ms)
local maxlen = string.format('%d', tonumber(ARGV[1]) + 1)
local ids, events = {}, {}
for m = 1, n do
  local a = 3 * m + 1
  seq = seq + 1
  local id = prefix .. string.format('%d', seq)
  redis.call('XADD', KEYS[m + 1], 'MAXLEN', '~', maxlen, id, 'e', ARGV[a], 'd', ARGV[a + 1], 'f', '0')
  redis.call('PEXPIRE', KEYS[m + 1], ARGV[2])
  ids[m] = id
  events[m] = ARGV[a + 2] .. ',"id":"' .. id .. '"}'
end
if n > 0 then
  redis.call('SET', KEYS[1], ids[n])
  redis.call('SPUBLISH', ARGV[3], '[' .. table.concat(events, ',') .. ']')
end
return ids
