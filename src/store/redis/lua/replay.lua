-- Reads, in one atomic step, what is served of the user stream KEYS[1]
-- and the broadcast stream KEYS[2]: the newest ARGV[2] entries of each,
-- younger than ARGV[3] ms. Answers whether the id ARGV[1] is a gap (not
-- kept in either stream, or something after it is no longer served by
-- one of them) and, per stream, what follows it (everything served on a
-- gap), newest first.
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local lms, lseq = parse(ARGV[1])
local function after(a)
  local ms, seq = parse(a)
  return ms > lms or (ms == lms and seq > lseq)
end
local t = redis.call('TIME')
local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[3])
local size = tonumber(ARGV[2])
local gap = #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0
  and #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0
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
local mine, all = window(KEYS[1]), window(KEYS[2])
local function follow(list)
  if gap then return list end
  local out = {}
  for _, e in ipairs(list) do
    if not after(e[1]) then break end
    table.insert(out, e)
  end
  return out
end
return {gap and 1 or 0, follow(mine), follow(all)}
