-- Shared by the scripts that keep messages (prepended): where the id
-- sequence whose last issued id is the string `key` goes on. Returns the
-- milliseconds of the next ids (Redis time, never before the last issued
-- id's, so ids only grow) and the sequence number before the first.
local function sequence_after(key)
  local t = redis.call('TIME')
  local ms, seq = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), -1
  local last = redis.call('GET', key)
  if last then
    local lms, lseq = string.match(last, '^(%d+)%-(%d+)$')
    lms = tonumber(lms)
    if lms and ms <= lms then
      ms = lms
      seq = tonumber(lseq)
    end
  end
  return ms, seq
end
