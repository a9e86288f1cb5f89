-- Shared by the registry scripts (after route.lua): writes and removes one
-- connection with its traces in every key, its topic memberships included,
-- so that no reader sees half a connection and no topic is left empty.
--
-- Every registry script takes the same first keys and arguments:
-- KEYS[1] the users set, KEYS[2] the heartbeats zset, KEYS[3] the topics
-- set, KEYS[4..6] the write-back window's keys (route.lua's `untargeted`:
-- resyncing, registry_since, synced);
-- ARGV[1] the connection hash prefix, ARGV[2] the user zset prefix,
-- ARGV[3..5] the prefixes of a topic's followers zset, users hash and
-- nodes hash, ARGV[6] the shared bus channel when `[topics] join_leave`
-- is on ('' when off), ARGV[7] the write-back window (ms).
-- A connection's user and topics are known only from its hash, so the
-- keys named by them are built here from these prefixes (one Redis: any
-- key is reachable). Each script's own keys and arguments follow, from
-- KEYS[FIRST_KEY] and ARGV[FIRST_ARG].
local FIRST_KEY, FIRST_ARG = 7, 8
local CONN, USER = ARGV[1], ARGV[2]
local TOPIC, TOPIC_USERS, TOPIC_NODES = ARGV[3], ARGV[4], ARGV[5]
local PRESENCE_BUS = ARGV[6]

-- join/leave events to tell once the script's changes are done: the
-- nodes to tell are the ones left holding followers then.
local announced = {}

local function announce(topic, event, id, user)
  if PRESENCE_BUS == '' then return end
  table.insert(announced, {topic, '{"type":"presence","event":"' .. event
    .. '","topic":' .. cjson.encode(topic) .. ',"connection_id":' .. cjson.encode(id)
    .. ',"username":' .. cjson.encode(user) .. '}'})
end

-- Publishes the join/leave events to the nodes that hold the topics'
-- followers, as a topic message goes (route.lua).
local function flush_announced()
  if #announced == 0 then return end
  local everyone = untargeted(KEYS[4], KEYS[5], KEYS[6], PRESENCE_BUS, ARGV[7])
  local route = router(PRESENCE_BUS, CONN, everyone)
  for _, a in ipairs(announced) do
    -- On a cluster this partition knows only the followers among its own
    -- users: every node hears it.
    local nodes = nil
    if not SHARDED then nodes = route.topic(TOPIC_NODES .. a[1]) end
    -- A topic nobody follows any more has nobody to tell.
    if nodes == nil or #nodes > 0 then route.add(a[2], nodes) end
  end
  route.flush()
  announced = {}
end

-- `topics` as the hash holds it: comma-joined.
local function each_topic(topics)
  return string.gmatch(topics or '', '[^,]+')
end

local function follow(id, user, node, time, topics, join)
  for t in each_topic(topics) do
    redis.call('ZADD', TOPIC .. t, time, id)
    redis.call('HINCRBY', TOPIC_USERS .. t, user, 1)
    redis.call('HINCRBY', TOPIC_NODES .. t, node, 1)
    redis.call('SADD', KEYS[3], t)
    if join then announce(t, 'join', id, user) end
  end
end

local function unfollow(id, user, node, topics, leave)
  for t in each_topic(topics) do
    local members = TOPIC .. t
    redis.call('ZREM', members, id)
    if redis.call('HINCRBY', TOPIC_USERS .. t, user, -1) <= 0 then
      redis.call('HDEL', TOPIC_USERS .. t, user)
    end
    if redis.call('HINCRBY', TOPIC_NODES .. t, node, -1) <= 0 then
      redis.call('HDEL', TOPIC_NODES .. t, node)
    end
    local left = redis.call('ZCARD', members)
    if left == 0 then
      redis.call('DEL', members, TOPIC_USERS .. t, TOPIC_NODES .. t)
      redis.call('SREM', KEYS[3], t)
    end
    -- On a cluster the topic's other followers may be other partitions'.
    if leave and (left > 0 or SHARDED) then
      announce(t, 'leave', id, user)
    end
  end
end

-- Removes one connection by id; `leave`: its topics' other followers are
-- told (not after a clear: the nodes write their streams back at once).
-- Returns the username, or false when it had no record.
local function remove_one(id, leave)
  local ckey = CONN .. id
  local rec = redis.call('HMGET', ckey, 'username', 'node_id', 'topics')
  local user = rec[1]
  redis.call('ZREM', KEYS[2], id)
  if not user then return false end
  redis.call('DEL', ckey)
  unfollow(id, user, rec[2] or '', rec[3], leave)
  local ukey = USER .. user
  redis.call('ZREM', ukey, id)
  if redis.call('ZCARD', ukey) == 0 then
    redis.call('DEL', ukey)
    redis.call('SREM', KEYS[1], user)
  end
  return user
end

-- Writes one connection (a new one, or one written back); `join`: a new
-- stream, whose topics' other followers are told. A record that is
-- already there as written keeps its memberships; one that differs is
-- replaced whole. Returns how many connections its user then has.
local function add_one(id, user, time, heartbeat, node, topics, join)
  local ckey = CONN .. id
  local was = redis.call('HMGET', ckey, 'username', 'node_id', 'topics')
  local same = was[1] == user and was[2] == node and (was[3] or '') == topics
  if was[1] and not same then remove_one(id, false) end
  redis.call('HSET', ckey, 'connection_id', id, 'username', user,
    'connection_time', time, 'last_heartbeat', heartbeat, 'node_id', node)
  if topics ~= '' then redis.call('HSET', ckey, 'topics', topics) end
  local ukey = USER .. user
  redis.call('ZADD', ukey, time, id)
  redis.call('SADD', KEYS[1], user)
  redis.call('ZADD', KEYS[2], heartbeat, id)
  if not same then follow(id, user, node, time, topics, join and not was[1]) end
  return redis.call('ZCARD', ukey)
end
