-- Removes the connections ARGV[3..]; returns a flat list id, user, ...
local out = {}
for i = 3, #ARGV do
  local user = remove_one(ARGV[i])
  if user then table.insert(out, ARGV[i]); table.insert(out, user) end
end
return out
