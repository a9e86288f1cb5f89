//! Reading a registry in name order, a bounded step at a time: what the
//! paged listing, the whole listing and the command line share, written
//! once over [`Listed`] (a node's [`Store`](super::Store), or Redis reached
//! without a node, [`Direct`](super::Direct)).

use std::future::Future;

use super::{ConnectionRecord, Cursor, Page, Result, MAX_PAGE};

/// Usernames a whole listing reads per step from Redis, which scans the
/// whole users set once per step: many at a time.
pub(crate) const REDIS_STEP: usize = 100_000;

/// Usernames a whole listing reads per step from the embedded engine,
/// which holds its lock for each step: few at a time.
pub(crate) const MEMORY_STEP: usize = 1_000;

/// A registry that can be read in name order.
pub(crate) trait Listed: Send + Sync + 'static {
    /// Up to `limit` usernames after `after` (all, without it), in name
    /// order; each call a bounded step for the engine.
    fn user_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The connections of each of `users` that has any, in the order given,
    /// each user's by connection time.
    fn users_connections(
        &self,
        users: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Vec<ConnectionRecord>)>>> + Send;
    /// Registry-wide (users, connections).
    fn totals(&self) -> impl Future<Output = Result<(usize, usize)>> + Send;
    /// How many usernames a whole listing reads per step.
    fn listing_step(&self) -> usize;
}

/// One page of the listing: up to `limit` users after `after`.
pub(crate) async fn page<L: Listed>(
    registry: &L,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Page> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut names = registry
        .user_names(after.map(|c| c.0.as_str()), limit + 1)
        .await?;
    let more = names.len() > limit;
    names.truncate(limit);
    let users = registry.users_connections(&names).await?;
    let (user_count, total_connections) = registry.totals().await?;
    Ok(Page {
        users,
        user_count,
        total_connections,
        // The last name asked for, listed or not: a user who left
        // meanwhile must not make the next page start over.
        next: if more { names.pop().map(Cursor) } else { None },
    })
}
