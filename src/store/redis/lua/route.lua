-- Shared by the sending scripts: which bus channels a message goes to.
-- A message for a user goes to the channels of the nodes that hold its
-- target connections (`{bus}:{node_id}`, node ids read from the records);
-- a broadcast goes to the shared channel `{bus}`, which every node hears.
-- A user's message goes to the shared channel too (every node) while a
-- clear's re-registration runs (`everyone`: the registry may lack live
-- connections then), or when a target's node has no subscriber (a node
-- that is gone, or one that does not listen on its own channel yet).
--
-- Every node hears its own channel and the shared one on one connection,
-- and Redis delivers to a connection in publish order: events are queued
-- and published so that a node's channel and the shared channel never both
-- hold unpublished events, so each node receives them in the order they
-- were added (id order).
-- Whether a user's message must go to every node: while a re-registration
-- runs (`resyncing` present), and on a registry that Redis lost (restarted
-- without persistence, flushed: `since` missing). The first message that
-- finds it lost opens the window itself, `window_ms` long (the node passes
-- RESYNC_WINDOW of bus.rs): every node saw its Redis connection drop and
-- writes its streams back within it. Until then a user's records are missing, and a targeted
-- message would reach none of its live tabs.
local function untargeted(resyncing, since, window_ms)
  if redis.call('EXISTS', since) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', since, t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)))
    redis.call('SET', resyncing, '1', 'PX', window_ms)
    return true
  end
  return redis.call('EXISTS', resyncing) == 1
end

local function router(bus, conn_prefix, everyone)
  local r = {}
  local shared = {}
  local pending, order = {}, {}
  local listening = {}
  local function publish(channel, list)
    redis.call('PUBLISH', channel, '[' .. table.concat(list, ',') .. ']')
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
  local function heard(node)
    local h = listening[node]
    if h == nil then
      h = redis.call('PUBSUB', 'NUMSUB', bus .. ':' .. node)[2] > 0
      listening[node] = h
    end
    return h
  end
  -- The nodes that hold the connections `ids`, or nil: every node.
  function r.nodes(ids)
    if everyone then return nil end
    local out, seen = {}, {}
    for _, id in ipairs(ids) do
      local node = redis.call('HGET', conn_prefix .. id, 'node_id')
      if not node or node == '' or not heard(node) then return nil end
      if not seen[node] then
        seen[node] = true
        table.insert(out, node)
      end
    end
    return out
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
