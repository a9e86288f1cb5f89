-- Shared by the sending scripts (and the registry's, for join/leave
-- events): which bus channels a message goes to.
-- A message for a user goes to the channels of the nodes that hold its
-- target connections (`{bus}:{node_id}`, node ids read from the records),
-- a topic's to the nodes its nodes hash names; a broadcast goes to the
-- shared channel `{bus}`, which every node hears.
-- A user's or a topic's message goes to the shared channel too (every
-- node) while the registry may lack live connections (`everyone`: after a
-- clear, a short cleanup, or Redis losing its data, until every node wrote
-- its streams back), or when a target's node has no subscriber (a node
-- that is gone, or one that does not listen on its own channel yet).
--
-- Every node hears its own channel and the shared one on one connection,
-- and Redis delivers to a connection in publish order: events are queued
-- and published so that a node's channel and the shared channel never both
-- hold unpublished events, so each node receives them in the order they
-- were added (id order).

-- SHARDED (set by the caller's first line): on a Redis Cluster the
-- channels are sharded ones, in the partition's slot.
local function listeners(channel)
  if SHARDED then return redis.call('PUBSUB', 'SHARDNUMSUB', channel)[2] end
  return redis.call('PUBSUB', 'NUMSUB', channel)[2]
end

-- Whether a node listens on its own channel: alive and subscribed.
local function heard(bus, node)
  return node ~= nil and node ~= false and node ~= ''
    and listeners(bus .. ':' .. node) > 0
end

-- Whether a user's message must go to every node. On a registry that
-- Redis lost (restarted without persistence, flushed: `since` missing),
-- the first script that finds it so opens the window itself, `window_ms`
-- long (RESYNC_WINDOW of route.rs), from threshold 0. Otherwise while the
-- window `resyncing` is open: it holds the threshold T (unix ms) after
-- which a node's write-back counts, and it closes as soon as every node
-- that hears the bus has written its streams back after T (`synced`: node
-- id -> unix ms of its last complete write-back); its expiry is only the
-- upper bound, for nodes that never say so.
local function untargeted(resyncing, since, synced, bus, window_ms)
  if redis.call('EXISTS', since) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', since, t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)))
    redis.call('SET', resyncing, '0', 'PX', window_ms)
    return true
  end
  local threshold = redis.call('GET', resyncing)
  if not threshold then return false end
  threshold = tonumber(threshold) or 0
  local listening = listeners(bus)
  local done = 0
  local reports = redis.call('HGETALL', synced)
  for i = 1, #reports, 2 do
    if (tonumber(reports[i + 1]) or 0) > threshold and heard(bus, reports[i]) then
      done = done + 1
    end
  end
  if done >= listening then
    redis.call('DEL', resyncing)
    return false
  end
  return true
end

-- On a cluster a node that does not listen on its channel of this
-- partition may be subscribing it again (the slot just moved here): a
-- message sent to every node then would miss it too, and nothing is kept
-- to catch up from. When the node listens on another partition's channel
-- on this primary, it is alive and connected here: the send is refused
-- (error DEAF), and the sender retries once it listens. Otherwise the node
-- is gone (its stale records are swept later) or not connected here yet
-- (a failover), and the message goes to every node.
local function glob_escape(s)
  return (string.gsub(s, '([%*%?%[%]\\])', '\\%1'))
end

local function refuse_if_listening_here(bus, node)
  if not SHARDED then return end
  local pattern = string.gsub(glob_escape(bus), '{[^}]*}', '*') .. ':' .. glob_escape(node)
  if #redis.call('PUBSUB', 'SHARDCHANNELS', pattern) > 0 then
    error({err = 'DEAF a node holding the targets is subscribing again (a slot moved); retry'})
  end
end

local function router(bus, conn_prefix, everyone, refuse_deaf)
  local r = {}
  local shared = {}
  local pending, order = {}, {}
  local listening = {}
  local function publish(channel, list)
    redis.call(SHARDED and 'SPUBLISH' or 'PUBLISH', channel,
      '[' .. table.concat(list, ',') .. ']')
  end
  local function flush_nodes()
    for _, node in ipairs(order) do
      publish(bus .. ':' .. node, pending[node])
    end
    pending, order = {}, {}
  end
  local function flush_shared()
    if #shared > 0 then
      publish(bus, shared)
      shared = {}
    end
  end
  local function node_heard(node)
    local h = listening[node]
    if h == nil then
      h = heard(bus, node)
      listening[node] = h
    end
    return h
  end
  -- A target's node that does not listen: refused if it listens here
  -- on other channels (on a cluster, for a send), else the message goes
  -- to every node.
  local function deaf(node)
    if node_heard(node) then return false end
    if refuse_deaf and node and node ~= '' then refuse_if_listening_here(bus, node) end
    return true
  end
  -- The connection a one-tab message goes to, among `ids` (the user's,
  -- oldest first): the oldest whose node is alive, else the oldest (its
  -- node may be deaf for a moment and catch up, or dead, and then the
  -- tab's replay gets the message). A stale record of a killed node must
  -- not take the one-tab messages of the user's live tabs.
  function r.first(ids)
    for _, id in ipairs(ids) do
      if node_heard(redis.call('HGET', conn_prefix .. id, 'node_id')) then return id end
    end
    return ids[1]
  end
  -- The nodes that hold the connections `ids`, or nil: every node.
  function r.nodes(ids)
    if everyone then return nil end
    local out, seen = {}, {}
    for _, id in ipairs(ids) do
      local node = redis.call('HGET', conn_prefix .. id, 'node_id')
      if deaf(node) then return nil end
      if not seen[node] then
        seen[node] = true
        table.insert(out, node)
      end
    end
    return out
  end
  -- The nodes that hold followers of a topic (its nodes hash `key`: node
  -- id -> followers), or nil: every node. Read from the hash, never from
  -- the followers' records, so a send costs the nodes it reaches.
  function r.topic(key)
    if everyone then return nil end
    local nodes = redis.call('HKEYS', key)
    for _, node in ipairs(nodes) do
      if deaf(node) then return nil end
    end
    return nodes
  end
  -- Queues one event (JSON) for `nodes` (nil: every node).
  function r.add(event, nodes)
    if nodes == nil then
      flush_nodes()
      table.insert(shared, event)
    elseif #nodes > 0 then
      flush_shared()
      for _, node in ipairs(nodes) do
        if not pending[node] then
          pending[node] = {}
          table.insert(order, node)
        end
        table.insert(pending[node], event)
      end
    end
  end
  function r.flush()
    flush_shared()
    flush_nodes()
  end
  return r
end

-- While the registry may lack live connections, a one-tab message for a
-- user without any record must wait: its tab may be live and about to be
-- written back, and the message would otherwise be kept for a tab that
-- never comes back. The sender retries once the window closes.
local function refuse_unrouted(everyone, modes, tkeys)
  if not everyone then return end
  for i, mode in ipairs(modes) do
    if mode == 'first' and redis.call('EXISTS', tkeys[i]) == 0 then
      error({err = 'RESYNCING the registry is being written back after a clear or a loss; retry'})
    end
  end
end
