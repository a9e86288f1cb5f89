-- Writes connection records with all their keys, topic memberships
-- included (records.lua prepended), seven arguments per record from
-- ARGV[FIRST_ARG]: id, username, connection_time, last_heartbeat, node_id,
-- topics (comma-joined, sorted; '' for none), and '1' for a new stream
-- (its topics' other followers are told it joined) or '0' for one written
-- back. Returns, per record, how many connections its user then has.
local out = {}
for i = FIRST_ARG, #ARGV, 7 do
  table.insert(out, add_one(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4], ARGV[i + 5], ARGV[i + 6] == '1'))
end
flush_announced()
return out
