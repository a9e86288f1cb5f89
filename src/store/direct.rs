//! The registry of a Redis deployment reached without a node: what the
//! command line's `cleanup`, `clear` and `connections` use, whether nodes
//! run or not. It is the engine's own registry handle with the engine's
//! own sweep, clear and listing, so that the command line repeats none of
//! them.

use std::time::Duration;

use super::listing::{self, Listed};
use super::redis::{self, Redis, SharedConn};
use super::{Cleared, ConnectionRecord, Cursor, Page, Removed, Result, StoreError, TopicCount};
use crate::config::{mask_url_password, Config};

/// Who tells the nodes on the bus (the nodes' own events carry their ids).
const ORIGIN: &str = "cli";

pub(crate) struct Direct {
    registry: Redis,
    /// The nodes' `stream.heartbeat_secs`: how soon they write their
    /// streams back after a short cleanup.
    heartbeat: Duration,
}

impl Direct {
    /// One attempt to reach Redis, answered within `within`: an operator
    /// waits for an answer, not for Redis to come up.
    pub(crate) async fn connect(config: &Config, within: Duration) -> Result<Direct> {
        let url = mask_url_password(config.redis.url.expose());
        let target = config
            .redis_target()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let conn = tokio::time::timeout(within, SharedConn::connect(&target))
            .await
            .map_err(|_| StoreError::Unavailable(format!("redis at {url} did not answer")))?
            .map_err(|e| StoreError::Unavailable(format!("redis at {url}: {e}")))?;
        let registry = Redis::new(conn, redis::layout(config), config.topics.join_leave);
        registry.ping().await?;
        Ok(Direct {
            registry,
            heartbeat: config.heartbeat_interval(),
        })
    }

    /// Removes the records whose heartbeat is at or before `stale_before`,
    /// as a node's cleanup does.
    pub(crate) async fn sweep(&self, stale_before: f64) -> Result<Removed> {
        redis::sweep(&self.registry, stale_before, self.heartbeat, ORIGIN).await
    }

    /// The full clear a node runs; the second part is why the running
    /// nodes could not be told to write their streams back.
    pub(crate) async fn clear(&self) -> Result<(Cleared, Option<StoreError>)> {
        redis::clear(&self.registry, ORIGIN).await
    }

    pub(crate) async fn list_user(&self, user: &str) -> Result<Vec<ConnectionRecord>> {
        self.registry.list_user(user).await
    }

    pub(crate) async fn list_page(&self, after: Option<&Cursor>, limit: usize) -> Result<Page> {
        listing::page(self, after, limit).await
    }
}

impl Listed for Direct {
    async fn user_names(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.registry.user_names(after, limit).await
    }
    async fn users_connections(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<ConnectionRecord>)>> {
        self.registry.users_connections(users).await
    }
    async fn totals(&self) -> Result<(usize, usize)> {
        self.registry.totals().await
    }
    async fn topic_names(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.registry.topic_names(after, limit).await
    }
    async fn topic_counts(&self, topics: &[String]) -> Result<Vec<TopicCount>> {
        self.registry.topic_counts(topics).await
    }
    async fn topic_total(&self) -> Result<usize> {
        self.registry.topic_total().await
    }
    fn listing_step(&self) -> usize {
        listing::REDIS_STEP
    }
}
