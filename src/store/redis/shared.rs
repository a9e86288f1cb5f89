//! What several scripts share, kept below both the registry and the
//! routing so that neither needs the other for it: the routing Lua that
//! the publishing scripts (sends, and the registry's join/leave) prepend,
//! and the length of the write-back window they may open.

use std::time::Duration;

/// Prepended to the scripts that publish: picks their channels.
const LUA_ROUTE: &str = include_str!("lua/route.lua");

/// [`LUA_ROUTE`] for one Redis (`PUBLISH`, `PUBSUB NUMSUB`) or a cluster
/// (`sharded`: `SPUBLISH`, `PUBSUB SHARDNUMSUB`, the channels living in the
/// partition's slot like its keys).
pub(crate) fn route_lua(sharded: bool) -> String {
    format!("local SHARDED = {sharded}\n{LUA_ROUTE}")
}

/// The longest messages go to every node after a clear: the nodes write
/// their live connections back within it, and say so, which closes it
/// earlier (each node that hears the clear makes sure it is open, so a
/// slow listener is covered from when it heard).
pub(crate) const RESYNC_WINDOW: Duration = Duration::from_secs(10);

/// [`RESYNC_WINDOW`] for the scripts, which open the window themselves
/// when they find that Redis lost the registry.
pub(crate) fn resync_window_ms() -> u64 {
    RESYNC_WINDOW.as_millis() as u64
}
