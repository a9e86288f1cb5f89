-- Whether Redis lost its data (restarted without persistence, flushed):
-- KEYS[1], when the registry was first written, is missing. Then, as a
-- sending script would (route.lua), sets it and opens the write-back
-- window KEYS[2] for ARGV[1] ms from threshold 0. Returns the marker's
-- value: a node that finds it changed since it last looked knows that
-- whatever Redis had not yet handed to it is gone with the history.
local since = redis.call('GET', KEYS[1])
if since then return since end
local t = redis.call('TIME')
since = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
redis.call('SET', KEYS[1], since)
redis.call('SET', KEYS[2], '0', 'PX', ARGV[1])
return since
