//! The store's seam by concern, each answered by both engines
//! ([`super::memory::MemoryStore`], [`super::redis::RedisStore`]), as
//! Centrifugo splits its engines into a broker and a presence manager:
//!
//! - [`Registry`]: which connections exist, on which node (records,
//!   heartbeats, the listing, removals);
//! - [`History`]: what a reconnecting stream missed ([`super::kept`]);
//! - [`Delivery`]: how a message, or a close, reaches every node that holds
//!   its streams (keeping it first when history is on).
//!
//! The rules both engines share are written once beside them: where a
//! message goes ([`super::target`]) and what a replay serves
//! ([`super::kept`]). [`super::Store`] is the node's handle on one engine.

use std::future::Future;

use super::{
    Accepted, Cleared, ConnectionRecord, LiveConn, Message, MsgId, Removed, Replay, Result,
    TopicCount, TopicPresence, Wrote,
};
use crate::config::HistoryConfig;

/// The connection registry.
pub(crate) trait Registry: Send + Sync {
    /// Records a new connection; returns once it is stored, with how many
    /// connections its user then has (all nodes).
    fn register(&self, record: ConnectionRecord) -> impl Future<Output = Result<usize>> + Send;
    /// Forgets a connection that ended (retried by the engine until done).
    /// `wrote`: what its stream wrote, when it was sent one-tab messages.
    fn remove(&self, connection_id: String, wrote: Option<Wrote>);
    /// Writes the heartbeat of every stream this node holds, and writes
    /// back the records of live streams that someone removed.
    fn heartbeat(&self);
    /// The user's connection ids, oldest first (ties by id); `limit` 1
    /// gives the first connection only.
    fn user_connection_ids(
        &self,
        user: &str,
        limit: Option<usize>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Up to `limit` usernames after `after` (all, without it), in name
    /// order, in a bounded step of the engine.
    fn user_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The connections of each of `users` that has any, in the order
    /// given, each user's by connection time.
    fn users_connections(
        &self,
        users: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Vec<ConnectionRecord>)>>> + Send;
    /// Registry-wide (users, connections).
    fn totals(&self) -> impl Future<Output = Result<(usize, usize)>> + Send;
    /// A user's connections, by connection time.
    fn list_user(&self, user: &str) -> impl Future<Output = Result<Vec<ConnectionRecord>>> + Send;
    /// Full clear, in bounded steps: every record whose heartbeat is not
    /// after the moment the clear began goes, then every node writes back
    /// the streams it holds, so only zombies stay gone.
    fn clear(&self) -> impl Future<Output = Result<Cleared>> + Send;
    /// Removes the records whose heartbeat is at or before `stale_before`.
    fn sweep(&self, stale_before: f64) -> impl Future<Output = Result<Removed>> + Send;
    /// Up to `limit` followed topics after `after` (all, without it), in
    /// name order, in a bounded step of the engine.
    fn topic_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// How many streams and users follow each of `topics` that anyone
    /// follows, in the order given.
    fn topic_counts(
        &self,
        topics: &[String],
    ) -> impl Future<Output = Result<Vec<TopicCount>>> + Send;
    /// How many topics have a follower.
    fn topic_total(&self) -> impl Future<Output = Result<usize>> + Send;
    /// Who follows `topic` (nobody: empty).
    fn topic(&self, topic: &str) -> impl Future<Output = Result<TopicPresence>> + Send;
}

/// The kept messages, as a reconnecting stream reads them.
pub(crate) trait History: Send + Sync {
    /// What the stream `conn` missed after `last` (`None`: malformed, a
    /// gap): its user's messages, the broadcasts and its topics' messages.
    /// One-tab messages it is given are claimed for it: no other stream
    /// gets them again.
    fn replay(
        &self,
        conn: &LiveConn,
        last: Option<MsgId>,
        history: &HistoryConfig,
    ) -> impl Future<Output = Result<Replay>> + Send;
}

/// Messages and closes, to every node that holds their streams.
pub(crate) trait Delivery: Send + Sync {
    /// Whether a send has put its frames in this node's stream queues by
    /// the time it returns (else they arrive through the bus).
    const QUEUES_ON_SEND: bool;

    /// Keeps the messages (history on), reads their targets, and delivers
    /// them through every node's link (this one's too), in id order.
    /// Either all of them are taken or none (an error).
    fn send(
        &self,
        msgs: Vec<Message>,
        history: &HistoryConfig,
    ) -> impl Future<Output = Result<Vec<Accepted>>> + Send;
    /// Removes these connections of `user` (their records) and closes
    /// their streams on whichever node holds them, each with an `evicted`
    /// notice.
    fn evict(
        &self,
        user: &str,
        ids: Vec<String>,
        reason: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Closes every stream of `user` on every node and removes their
    /// records.
    fn disconnect_user(&self, user: &str) -> impl Future<Output = Result<Removed>> + Send;
}
