-- Opens (or keeps open) the window in which users' messages go to every
-- node (route.lua): KEYS[1] holds the threshold, ARGV[1] (unix ms) after
-- which a node's write-back counts, for at most ARGV[2] ms. Never lowers
-- the threshold nor shortens the window another clear asked for: a node
-- must have written back after every removal still in it.
local threshold = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '')
if current and current > threshold then threshold = current end
local px = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left > px then px = left end
redis.call('SET', KEYS[1], string.format('%d', threshold), 'PX', px)
