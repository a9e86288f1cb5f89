-- Removes the connections ARGV[FIRST_ARG + 2 ..] (records.lua prepended),
-- telling their topics' other followers; returns a flat list id, user, ...
-- An argument `{id}={msg id}={username}` is a stream that ended after
-- being sent one-tab messages, with the newest id it wrote to its socket:
-- kept as `w:{id}` in its user's claims hash (prefix ARGV[FIRST_ARG],
-- expiring after ARGV[FIRST_ARG + 1] ms), also when its record went first
-- (a logout), so that replay.lua does not give what it wrote to another
-- tab.
local claims_prefix, wrote_ttl = ARGV[FIRST_ARG], ARGV[FIRST_ARG + 1]
local out = {}
for i = FIRST_ARG + 2, #ARGV do
  local id, wrote, wuser = string.match(ARGV[i], '^([^=]*)=([^=]*)=(.*)$')
  if not id then id = ARGV[i] end
  local user = remove_one(id, true)
  if user then
    table.insert(out, id); table.insert(out, user)
  end
  if wrote then
    local claims = claims_prefix .. wuser
    redis.call('HSET', claims, 'w:' .. id, wrote)
    redis.call('PEXPIRE', claims, wrote_ttl)
  end
end
flush_announced()
return out
