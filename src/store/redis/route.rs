//! Which bus channels a user's message takes, shared by the sending
//! scripts (`lua/route.lua`, prepended to `append.lua` and `send.lua`), and
//! the window in which messages go to every node instead: while the
//! registry may lack live connections (a clear, a short cleanup, Redis that
//! lost its data) until the nodes write them back. The window closes as
//! soon as every node that hears the bus reported a write-back after it
//! opened ([`report_synced`]); its length is only the upper bound.

use std::sync::LazyLock;
use std::time::Duration;

use super::registry::Redis;
use crate::store::Result;

pub(crate) use super::shared::{resync_window_ms, route_lua, RESYNC_WINDOW};

static WINDOW: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/window.lua")));
static LOST: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/lost.lua")));

/// The marker of the registry's life in Redis (`registry_since`): a value
/// that differs from the one a node saw before means Redis lost its data
/// in between. Missing, it is set and the write-back window opened, as a
/// sending script does (`lua/lost.lua`). On a cluster each partition has
/// its own, joined here: one partition's primary losing its data changes
/// the whole.
pub(crate) async fn registry_marker(registry: &Redis) -> Result<String> {
    let mut markers = Vec::with_capacity(registry.layout().parts().len());
    for k in registry.layout().parts() {
        let mut inv = LOST.prepare_invoke();
        inv.key(k.registry_since())
            .key(k.resyncing())
            .arg(resync_window_ms());
        let mut conn = registry.connection();
        markers.push(
            super::conn::bounded(Duration::from_secs(5), async move {
                inv.invoke_async::<String>(&mut conn).await
            })
            .await?,
        );
    }
    Ok(markers.join(","))
}

/// Sends users' messages to every node until every node wrote its live
/// connections back after `threshold_ms` (unix ms: the moment after which
/// its records survive the removal that opened the window), and at most
/// `within`. Called before the removal, so no message finds the records
/// gone without it.
pub(crate) async fn untargeted_for(
    registry: &Redis,
    threshold_ms: u64,
    within: Duration,
) -> Result<()> {
    for k in registry.layout().parts() {
        let mut inv = WINDOW.prepare_invoke();
        inv.key(k.resyncing())
            .arg(threshold_ms)
            .arg(within.as_millis().max(1) as u64);
        let mut conn = registry.connection();
        super::conn::bounded(Duration::from_secs(5), async move {
            inv.invoke_async::<()>(&mut conn).await
        })
        .await?;
    }
    Ok(())
}

/// [`untargeted_for`] the time nodes take to re-register after a clear.
pub(crate) async fn untargeted_for_resync(registry: &Redis, threshold_ms: u64) -> Result<()> {
    untargeted_for(registry, threshold_ms, RESYNC_WINDOW).await
}

/// This node wrote every live connection it holds with a heartbeat of
/// `at_ms` (unix ms) or later: a window whose threshold is older needs
/// nothing more of it.
pub(crate) async fn report_synced(registry: &Redis, node_id: &str, at_ms: u64) -> Result<()> {
    // Every partition's window counts this node's write-back: the node
    // wrote all its streams, whichever partition holds them.
    futures_util::future::try_join_all(registry.layout().parts().iter().map(|k| {
        let key = k.synced();
        let node = node_id.to_string();
        let mut conn = registry.connection();
        super::conn::bounded(Duration::from_secs(5), async move {
            // Reports of nodes that are gone are ignored (route.lua asks
            // whether the node hears its channel); they go with the key.
            redis::pipe()
                .hset(&key, node, at_ms)
                .ignore()
                .pexpire(&key, 86_400_000)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
    }))
    .await?;
    Ok(())
}

/// Unix ms of a registry time (seconds, as f64), rounded down: a node's
/// write-back at `w` counts for a window opened at `t` when `ms(w) >
/// ms(t)`, which implies `w > t`.
pub(crate) fn ms(t: f64) -> u64 {
    (t * 1000.0).floor().max(0.0) as u64
}
