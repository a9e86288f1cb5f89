-- Reads, in one atomic step, what is served of the user stream KEYS[1],
-- the broadcast stream KEYS[2] and the streams of the stream's topics
-- KEYS[4..]: the newest ARGV[2] entries of each, younger than ARGV[3] ms.
-- Answers whether the id ARGV[1] is a gap (kept in none of these streams,
-- or something after it is no longer served by one of them) and, per
-- stream, what follows it (everything served on a gap), newest first:
-- {gap, {user's, broadcasts, topic's...}}. The rule is store/kept.rs's
-- (`window`, which the embedded engine runs); the caller finishes with its
-- `finish`.
--
-- One-tab entries (append.lua's `f` 1 and 2) are given to this stream
-- only when no other tab got them: its target `c` is gone (no record, or
-- its node does not hear its channel: killed) and did not say it wrote
-- it (`w:{c}` in the claims hash KEYS[3], set when a stream ends), or it
-- had none; and then only once, claimed in KEYS[3] (expiring with the
-- history, ARGV[3] ms) for the stream ARGV[6]. ARGV[4] the connection
-- hash prefix, ARGV[5] the shared bus channel (a node's is `{bus}:{id}`).
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local lms, lseq = parse(ARGV[1])
local function later(a, bms, bseq)
  local ms, seq = parse(a)
  return ms > bms or (ms == bms and seq > bseq)
end
local function after(a)
  return later(a, lms, lseq)
end
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[3])
local size = tonumber(ARGV[2])
local streams = {KEYS[1], KEYS[2]}
for i = 4, #KEYS do table.insert(streams, KEYS[i]) end
local gap = true
for _, key in ipairs(streams) do
  if #redis.call('XRANGE', key, ARGV[1], ARGV[1]) > 0 then
    gap = false
    break
  end
end
-- The served window of a stream; a gap when an entry after the id fell
-- out of it (by count or age). Appends trim to at least size + 1 entries,
-- so whatever Redis deleted is older than the first entry left out here.
local function window(key)
  local newest = redis.call('XREVRANGE', key, '+', '-', 'COUNT', size + 1)
  local served = {}
  for i, e in ipairs(newest) do
    local ms = parse(e[1])
    if i > size or ms < oldest then
      if after(e[1]) then gap = true end
      break
    end
    table.insert(served, e)
  end
  return served
end
local served = {}
for i, key in ipairs(streams) do served[i] = window(key) end
local function field(e, name)
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
local function for_me(e)
  local f = field(e, 'f')
  if f == '1' then
    local c = field(e, 'c')
    -- Kept by an older version: it was delivered live.
    if not c then return false end
    local node = redis.call('HGET', ARGV[4] .. c, 'node_id')
    if node and node ~= '' and redis.call('PUBSUB', 'NUMSUB', ARGV[5] .. ':' .. node)[2] > 0 then
      return false
    end
    local w = redis.call('HGET', KEYS[3], 'w:' .. c)
    if w then
      local wms, wseq = parse(w)
      if wms and not later(e[1], wms, wseq) then return false end
    end
  elseif f ~= '2' then
    return true
  end
  if redis.call('HSETNX', KEYS[3], e[1], ARGV[6]) == 0 then return false end
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  return true
end
local function follow(list)
  local out = {}
  for _, e in ipairs(list) do
    if not gap and not after(e[1]) then break end
    if for_me(e) then table.insert(out, e) end
  end
  return out
end
-- Only the user's stream holds one-tab entries; a topic's and the
-- broadcasts' are every follower's (`f` 0).
local parts = {}
for i, list in ipairs(served) do parts[i] = follow(list) end
return {gap and 1 or 0, parts}
