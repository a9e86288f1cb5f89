//! Which bus channels a user's message takes, shared by the sending
//! scripts (`lua/route.lua`, prepended to `append.lua` and `send.lua`), and
//! the window in which messages go to every node instead: while the
//! registry may lack live connections (a clear, a short cleanup, Redis that
//! lost its data) until the nodes write them back.

use std::time::Duration;

use redis::AsyncCommands;

use super::registry::Registry;
use crate::store::Result;

/// Prepended to the scripts that publish messages: picks their channels.
pub(crate) const LUA_ROUTE: &str = include_str!("lua/route.lua");

/// How long messages go to every node after a clear: the nodes write their
/// live connections back within it (each node that hears the clear starts
/// it again, so a slow listener is covered from when it heard).
const RESYNC_WINDOW: Duration = Duration::from_secs(10);

/// Sends messages to every node until `within` has passed: the registry
/// may lack live connections until the nodes wrote them back (a clear; a
/// cleanup shorter than the heartbeat cycle). Called before the removal,
/// so no message finds the records gone without it.
pub(crate) async fn untargeted_for(registry: &Registry, within: Duration) -> Result<()> {
    let key = registry.keys().resyncing();
    let ms = within.as_millis().max(1) as u64;
    let mut conn = registry.connection();
    super::conn::bounded(Duration::from_secs(5), async move {
        // Never shortens a longer window another node asked for.
        let left: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
        if left < ms as i64 {
            conn.pset_ex::<_, _, ()>(&key, 1, ms).await?;
        }
        Ok(())
    })
    .await
}

/// [`RESYNC_WINDOW`] for the sending scripts, which open the window
/// themselves when they find that Redis lost the registry.
pub(crate) fn resync_window_ms() -> u64 {
    RESYNC_WINDOW.as_millis() as u64
}

/// [`untargeted_for`] the time nodes take to re-register after a clear.
pub(crate) async fn untargeted_for_resync(registry: &Registry) -> Result<()> {
    untargeted_for(registry, RESYNC_WINDOW).await
}
