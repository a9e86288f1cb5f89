-- Reads, in one atomic step, what is served of the user stream KEYS[1],
-- the broadcast stream KEYS[2] and the streams of the stream's topics
-- KEYS[5..]: the newest ARGV[2] entries of each, younger than ARGV[3] ms.
-- Answers whether the id ARGV[1] is a gap (kept in none of these streams,
-- or something after it is no longer served by one of them) and, per
-- stream, what follows it (everything served on a gap), newest first:
-- {gap, {user's, broadcasts, topic's...}, newest id read or ''}. The rule
-- is store/kept.rs's
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
--
-- On a Redis Cluster (SHARDED, set by the caller's first line) a stream's
-- position is read in two calls: the user's partition (its stream, with
-- its claims) and the home (the broadcasts and topics), each with keys of
-- its slot only (a key of the other part is passed as one that is never
-- written there). There ARGV[7] is 1, and an id kept in none of the
-- streams is no gap by itself when nothing could have been missed after
-- it: 0-0 (a stream that opened when nothing was kept in this part), the
-- last id the part's sequence KEYS[4] issued, or one issued (not after
-- that) and younger than the age kept, whose stream still holds anything
-- after it (a position in one part is as old as the last message of that
-- part the stream got, and may be another stream's: a topic no longer
-- followed, another user's top). The window rule below still applies.
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
for i = 5, #KEYS do table.insert(streams, KEYS[i]) end
local gap = true
for _, key in ipairs(streams) do
  if #redis.call('XRANGE', key, ARGV[1], ARGV[1]) > 0 then
    gap = false
    break
  end
end
if gap and ARGV[7] == '1' and lms then
  local top = redis.call('GET', KEYS[4])
  if ARGV[1] == '0-0' or ARGV[1] == top then
    gap = false
  elseif top and lms >= oldest then
    local tms, tseq = parse(top)
    gap = tms == nil or later(ARGV[1], tms, tseq)
  end
end
-- The served window of a stream; a gap when an entry after the id fell
-- out of it (by count or age). Appends trim to at least size + 1 entries,
-- so whatever Redis deleted is older than the first entry left out here.
-- The newest id of all the streams read (where a stream stands in this
-- part when it was given nothing of it).
local newest, nms, nseq = '', -1, -1
local function window(key)
  local list = redis.call('XREVRANGE', key, '+', '-', 'COUNT', size + 1)
  if list[1] then
    local ms, seq = parse(list[1][1])
    if ms > nms or (ms == nms and seq > nseq) then
      newest, nms, nseq = list[1][1], ms, seq
    end
  end
  local served = {}
  for i, e in ipairs(list) do
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
    if node and node ~= '' and redis.call('PUBSUB', SHARDED and 'SHARDNUMSUB' or 'NUMSUB', ARGV[5] .. ':' .. node)[2] > 0 then
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
return {gap and 1 or 0, parts, newest}
