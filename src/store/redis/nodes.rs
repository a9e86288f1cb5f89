//! Node presence in Redis (README "Redis layout"): `{prefix}:nodes`, a
//! sorted set of node ids scored by when each last reported, and
//! `{prefix}:node:{id}`, a hash of that report with an expiry, so a node
//! that was killed drops out on its own. Kept apart from the connection
//! registry: a full clear never touches it.

use std::collections::HashMap;
use std::time::Duration;

use super::conn::bounded;
use super::registry::Redis;
use crate::store::nodes::{Deployment, NodeStatus};
use crate::store::Result;

/// A report older than this is a node gone: its hash expires and its
/// entry in the sorted set is removed by the next report of any node.
pub(crate) const NODE_TTL: Duration = Duration::from_secs(30);

const TIMEOUT: Duration = Duration::from_secs(3);

/// Writes this node's report, then reads every live node's and the
/// registry totals: three round trips (one per partition for the totals).
pub(crate) async fn report(registry: &Redis, me: &NodeStatus) -> Result<Deployment> {
    let keys = registry.keys();
    let mut c = registry.connection();
    let own = keys.node(&me.node_id);
    let oldest = me.seen_at - NODE_TTL.as_secs_f64();
    let mut pipe = redis::pipe();
    pipe.hset_multiple(&own, &me.fields())
        .ignore()
        .expire(&own, NODE_TTL.as_secs() as i64)
        .ignore()
        .zadd(keys.nodes(), &me.node_id, me.seen_at)
        .ignore()
        .zrembyscore(keys.nodes(), "-inf", format!("({oldest}"))
        .ignore()
        .zrange(keys.nodes(), 0, -1);
    let (ids,): (Vec<String>,) = bounded(TIMEOUT, pipe.query_async(&mut c)).await?;
    let (users, connections) = registry.totals().await?;
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.hgetall(keys.node(id));
    }
    let hashes: Vec<HashMap<String, String>> = if ids.is_empty() {
        Vec::new()
    } else {
        bounded(TIMEOUT, pipe.query_async(&mut c)).await?
    };
    let mut nodes: Vec<NodeStatus> = hashes.iter().filter_map(NodeStatus::from_fields).collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(Deployment {
        nodes,
        users,
        connections,
    })
}

/// The node stops: its record goes at once rather than after the expiry.
pub(crate) async fn forget(registry: &Redis, node_id: &str) -> Result<()> {
    let keys = registry.keys();
    let mut c = registry.connection();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .zrem(keys.nodes(), node_id)
        .ignore()
        .del(keys.node(node_id))
        .ignore();
    bounded(TIMEOUT, pipe.query_async::<()>(&mut c)).await
}
