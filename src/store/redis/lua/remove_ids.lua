-- Removes the connections ARGV[5..]; returns a flat list id, user, ...
-- An argument `{id}={msg id}={username}` is a stream that ended after
-- being sent one-tab messages, with the newest id it wrote to its socket:
-- kept as `w:{id}` in its user's claims hash (prefix ARGV[3], expiring
-- after ARGV[4] ms), also when its record went first (a logout), so that
-- replay.lua does not give what it wrote to another tab.
local out = {}
for i = 5, #ARGV do
  local id, wrote, wuser = string.match(ARGV[i], '^([^=]*)=([^=]*)=(.*)$')
  if not id then id = ARGV[i] end
  local user = remove_one(id)
  if user then
    table.insert(out, id); table.insert(out, user)
  end
  if wrote then
    local claims = ARGV[3] .. wuser
    redis.call('HSET', claims, 'w:' .. id, wrote)
    redis.call('PEXPIRE', claims, ARGV[4])
  end
end
return out
