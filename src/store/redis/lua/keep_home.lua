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
-- append.lua's.
local n = (#ARGV - 3) / 3
local t = redis.call('TIME')
local ms, seq = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), -1
local last = redis.call('GET', KEYS[1])
if last then
  local lms, lseq = string.match(last, '^(%d+)%-(%d+)$')
  lms = tonumber(lms)
  if lms and ms <= lms then
    ms = lms
    seq = tonumber(lseq)
  end
end
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
