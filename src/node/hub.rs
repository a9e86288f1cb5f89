//! This node's live connections: connection id -> bounded queue of encoded
//! frames, user -> connection ids, and topic -> the connection ids that
//! follow it. Delivery pushes the same shared
//! [`Bytes`] into each target queue without waiting: a full queue means the
//! client stopped reading, and it is disconnected rather than buffered.
//!
//! The hub knows nothing of the store; the router keeps the two in step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::queue::{self, Receiver, Sender};
use crate::metrics::Metrics;
use crate::store::LiveConn;
use crate::topic::Members;

struct Entry {
    username: String,
    connection_time: f64,
    /// Shared with the topic index: one name per topic, one id per stream.
    id: Arc<str>,
    topics: Box<[Arc<str>]>,
    /// Its registration landed: a heartbeat may write its record back
    /// (before, its own registration is still on the way).
    registered: AtomicBool,
    tx: Sender,
    /// Cancelled to drop the client's TCP connection at once: a client that
    /// does not read leaves the body unpolled, so the stream itself cannot
    /// notice anything.
    kill: CancellationToken,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<String, Entry>,
    users: HashMap<String, Vec<String>>,
    /// Followed topics and the streams here that follow each.
    topics: HashMap<Arc<str>, Members>,
    /// Set at shutdown: no new connection is taken after the close.
    closed: bool,
}

impl Inner {
    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.conns.remove(id)?;
        if let Some(ids) = self.users.get_mut(&entry.username) {
            ids.retain(|x| x != id);
            if ids.is_empty() {
                self.users.remove(&entry.username);
            }
        }
        for topic in &entry.topics {
            if let Some(ids) = self.topics.get_mut(topic) {
                ids.remove(&entry.id);
                if ids.is_empty() {
                    self.topics.remove(topic);
                }
            }
        }
        Some(entry)
    }

    /// The index's own name of `topic`, so that every stream following it
    /// shares one copy.
    fn topic_name(&self, topic: &str) -> Arc<str> {
        self.topics
            .get_key_value(topic)
            .map_or_else(|| Arc::from(topic), |(k, _)| k.clone())
    }
}

/// One frame on its way to some connections: who took it, and who did not
/// (a full queue).
struct Push<'a> {
    frame: &'a Bytes,
    delivered: usize,
    failed: Vec<String>,
}

impl<'a> Push<'a> {
    fn new(frame: &'a Bytes) -> Self {
        Self {
            frame,
            delivered: 0,
            failed: Vec::new(),
        }
    }

    fn to(&mut self, inner: &Inner, id: &str) {
        if let Some(entry) = inner.conns.get(id) {
            self.took(id, entry.tx.try_send(self.frame.clone()).is_ok());
        }
    }

    fn took(&mut self, id: &str, ok: bool) {
        if ok {
            self.delivered += 1;
        } else {
            self.failed.push(id.to_string());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error("this node holds its maximum of {0} connections")]
    Full(usize),
    #[error("this node is shutting down")]
    Closed,
}

pub(crate) struct Hub {
    inner: RwLock<Inner>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection unless the node already holds `max` of them, and
    /// returns the receiving end of its queue. The stream ends when the
    /// queue's sender is dropped (close) after writing what it holds.
    pub(crate) fn register(
        &self,
        conn: &LiveConn,
        queue_size: usize,
        max: usize,
        kill: CancellationToken,
    ) -> Result<Receiver, HubError> {
        let (tx, rx) = queue::queue(queue_size);
        let mut inner = self.write();
        if inner.closed {
            return Err(HubError::Closed);
        }
        if inner.conns.len() >= max {
            return Err(HubError::Full(max));
        }
        let id: Arc<str> = Arc::from(conn.connection_id.as_str());
        let topics: Box<[Arc<str>]> = conn.topics.iter().map(|t| inner.topic_name(t)).collect();
        for topic in &topics {
            inner
                .topics
                .entry(topic.clone())
                .or_default()
                .insert(id.clone());
        }
        inner.conns.insert(
            conn.connection_id.clone(),
            Entry {
                username: conn.username.clone(),
                connection_time: conn.connection_time,
                id,
                topics,
                registered: AtomicBool::new(false),
                tx,
                kill,
            },
        );
        inner
            .users
            .entry(conn.username.clone())
            .or_default()
            .push(conn.connection_id.clone());
        let topics = inner.topics.len();
        drop(inner);
        self.metrics.live_connections.set(self.len() as i64);
        self.metrics.followed_topics.set(topics as i64);
        Ok(rx)
    }

    /// Its registration landed (see [`Hub::snapshot`]).
    pub(crate) fn registered(&self, id: &str) {
        if let Some(e) = self.read().conns.get(id) {
            e.registered.store(true, Ordering::Relaxed);
        }
    }

    /// Forgets a connection; true if it was still here.
    pub(crate) fn unregister(&self, id: &str) -> bool {
        let mut inner = self.write();
        let removed = inner.remove(id).is_some();
        let counts = (inner.conns.len(), inner.topics.len());
        drop(inner);
        if removed {
            self.counted(counts);
        }
        removed
    }

    fn counted(&self, (conns, topics): (usize, usize)) {
        self.metrics.live_connections.set(conns as i64);
        self.metrics.followed_topics.set(topics as i64);
    }

    /// Gives back the maps' spare capacity after many streams left.
    pub(crate) fn shrink(&self) {
        let mut inner = self.write();
        inner.conns.shrink_to_fit();
        inner.users.shrink_to_fit();
        inner.topics.shrink_to_fit();
    }

    /// How many topics the streams here follow (the gauge says it
    /// outside tests).
    #[cfg(test)]
    pub(crate) fn topic_count(&self) -> usize {
        self.read().topics.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.read().conns.len()
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.read().conns.contains_key(id)
    }

    /// Every live connection whose registration landed, for writing back
    /// after a clear, a cleanup or an outage (one still registering writes
    /// its own record).
    pub(crate) fn snapshot(&self) -> Vec<LiveConn> {
        self.read()
            .conns
            .iter()
            .filter(|(_, e)| e.registered.load(Ordering::Relaxed))
            .map(|(id, e)| LiveConn {
                connection_id: id.clone(),
                username: e.username.clone(),
                connection_time: e.connection_time,
                topics: e.topics.iter().map(|t| t.to_string()).collect(),
            })
            .collect()
    }

    /// Queues `frame` to each of `ids` held here; returns how many took it.
    /// Ids of other nodes are skipped.
    pub(crate) fn deliver(&self, ids: &[String], frame: &Bytes) -> usize {
        let mut push = Push::new(frame);
        {
            let inner = self.read();
            for id in ids {
                push.to(&inner, id);
            }
        }
        self.finish(push)
    }

    /// Queues the frame of a one-tab message to `id` if held here; returns
    /// whether it took it.
    pub(crate) fn deliver_one_tab(&self, id: &str, frame: &Bytes) -> usize {
        let mut push = Push::new(frame);
        if let Some(entry) = self.read().conns.get(id) {
            push.took(id, entry.tx.try_send_one_tab(frame.clone()).is_ok());
        }
        self.finish(push)
    }

    /// Queues `frame` to every local connection of `username`, registered
    /// in Redis or not yet; returns how many took it. One read lock, no
    /// copy of the user's ids per message.
    pub(crate) fn deliver_user(&self, username: &str, frame: &Bytes) -> usize {
        let mut push = Push::new(frame);
        {
            let inner = self.read();
            for id in inner.users.get(username).into_iter().flatten() {
                push.to(&inner, id);
            }
        }
        self.finish(push)
    }

    /// Queues `frame` to every stream here that follows `topic` but
    /// `except` (a join or leave is not told to its own stream); returns
    /// how many took it.
    pub(crate) fn deliver_topic(&self, topic: &str, except: Option<&str>, frame: &Bytes) -> usize {
        let mut push = Push::new(frame);
        {
            let inner = self.read();
            for id in inner.topics.get(topic).into_iter().flat_map(Members::iter) {
                if except != Some(&**id) {
                    push.to(&inner, id);
                }
            }
        }
        self.finish(push)
    }

    /// Queues `frame` to every stream here that follows `topic` and whose
    /// user `keep` says; returns how many took it.
    pub(crate) fn deliver_topic_where(
        &self,
        topic: &str,
        keep: impl Fn(&str) -> bool,
        frame: &Bytes,
    ) -> usize {
        let mut push = Push::new(frame);
        {
            let inner = self.read();
            for id in inner.topics.get(topic).into_iter().flat_map(Members::iter) {
                if inner.conns.get(&**id).is_some_and(|e| keep(&e.username)) {
                    push.to(&inner, id);
                }
            }
        }
        self.finish(push)
    }

    fn finish(&self, push: Push<'_>) -> usize {
        self.drop_slow(push.failed);
        self.metrics
            .messages_delivered
            .inc_by(push.delivered as u64);
        push.delivered
    }

    /// Queues `frame` to every local connection; returns how many took it.
    pub(crate) fn broadcast(&self, frame: &Bytes) -> usize {
        let delivered = self.push_all(frame);
        self.metrics.messages_delivered.inc_by(delivered as u64);
        delivered
    }

    fn push_all(&self, frame: &Bytes) -> usize {
        let mut failed = Vec::new();
        let mut delivered = 0;
        {
            let inner = self.read();
            for (id, entry) in &inner.conns {
                if entry.tx.try_send(frame.clone()).is_ok() {
                    delivered += 1;
                } else {
                    failed.push(id.clone());
                }
            }
        }
        self.drop_slow(failed);
        delivered
    }

    /// Queues a notice (not a message) to every local connection.
    pub(crate) fn notice(&self, frame: &Bytes) {
        self.push_all(frame);
    }

    /// Heartbeats go through the same queues as messages, so a client that
    /// reads nothing at all is found even when no message is sent.
    pub(crate) fn heartbeat(&self, frame: &Bytes) {
        self.push_all(frame);
    }

    /// A full queue is a client that stopped reading: end its stream now.
    /// Its stream's exit removes it from the registry.
    fn drop_slow(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let mut inner = self.write();
        for id in ids {
            if let Some(entry) = inner.remove(&id) {
                let closed = entry.tx.is_closed();
                entry.kill.cancel();
                if !closed {
                    self.metrics.slow_consumer_drops.inc();
                    tracing::warn!(connection_id = %id, username = %entry.username, "slow consumer disconnected: queue full");
                }
            }
        }
        let counts = (inner.conns.len(), inner.topics.len());
        drop(inner);
        self.counted(counts);
    }

    /// Closes the given connections after `last` (if any) is queued; the
    /// stream ends once it has written what its queue holds.
    pub(crate) fn close(&self, ids: &[String], last: Option<&Bytes>) -> Vec<LiveConn> {
        let mut closed = Vec::new();
        let mut inner = self.write();
        for id in ids {
            if let Some(entry) = inner.remove(id) {
                if let Some(frame) = last {
                    // A full queue cannot take the notice: end it at once.
                    if entry.tx.try_send(frame.clone()).is_err() {
                        entry.kill.cancel();
                    }
                }
                closed.push(LiveConn {
                    connection_id: id.clone(),
                    username: entry.username,
                    connection_time: entry.connection_time,
                    topics: entry.topics.iter().map(|t| t.to_string()).collect(),
                });
            }
        }
        let counts = (inner.conns.len(), inner.topics.len());
        drop(inner);
        self.counted(counts);
        closed
    }

    /// Closes every stream (shutdown) after `last`, and takes no new one.
    /// `last` makes each stream's final frame (e.g. its own jittered
    /// `retry:`, so that the clients do not all come back at once).
    pub(crate) fn close_all(&self, last: impl Fn() -> Bytes) -> usize {
        let ids = {
            let mut inner = self.write();
            inner.closed = true;
            inner.conns.keys().cloned().collect::<Vec<_>>()
        };
        ids.iter()
            .map(|id| self.close(std::slice::from_ref(id), Some(&last())).len())
            .sum()
    }

    /// Closes every local connection of `username`.
    pub(crate) fn close_user(&self, username: &str, last: Option<&Bytes>) -> Vec<LiveConn> {
        let ids = self.user_ids(username);
        self.close(&ids, last)
    }

    /// Local connection ids of one user, in arrival order.
    pub(crate) fn user_ids(&self, username: &str) -> Vec<String> {
        self.read().users.get(username).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str, user: &str) -> LiveConn {
        LiveConn {
            connection_id: id.into(),
            username: user.into(),
            topics: Vec::new(),
            connection_time: 1.0,
        }
    }

    #[test]
    fn deliver_reaches_only_targets_and_drops_full_queues() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let (ka, kb) = (CancellationToken::new(), CancellationToken::new());
        let mut a = hub.register(&conn("a", "u"), 2, 10, ka.clone()).unwrap();
        let _b = hub.register(&conn("b", "u"), 1, 10, kb.clone()).unwrap();
        let f = Bytes::from_static(b"x");
        assert_eq!(hub.deliver(&["a".into(), "zz".into()], &f), 1);
        assert_eq!(a.try_recv().unwrap(), f);
        // b's queue holds one frame; the second send finds it full.
        assert_eq!(hub.deliver(&["b".into()], &f), 1);
        assert_eq!(hub.deliver(&["b".into()], &f), 0);
        assert!(kb.is_cancelled());
        assert!(!ka.is_cancelled());
        assert!(!hub.contains("b"));
        assert!(hub.contains("a"));
        assert_eq!(hub.user_ids("u"), vec!["a".to_string()]);
    }

    #[test]
    fn a_topic_reaches_its_followers_and_goes_with_its_last_one() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(metrics.clone());
        let follow = |id: &str, user: &str, topics: &[&str]| LiveConn {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            ..conn(id, user)
        };
        let mut a = hub
            .register(
                &follow("a", "u", &["doc:1", "team:7"]),
                4,
                10,
                CancellationToken::new(),
            )
            .unwrap();
        let mut b = hub
            .register(
                &follow("b", "v", &["doc:1"]),
                4,
                10,
                CancellationToken::new(),
            )
            .unwrap();
        let mut c = hub
            .register(&follow("c", "v", &[]), 4, 10, CancellationToken::new())
            .unwrap();
        assert_eq!(hub.topic_count(), 2);
        assert_eq!(metrics.followed_topics.get(), 2);
        let f = Bytes::from_static(b"x");
        assert_eq!(hub.deliver_topic("doc:1", None, &f), 2);
        assert_eq!(
            (a.try_recv().ok(), b.try_recv().ok()),
            (Some(f.clone()), Some(f.clone()))
        );
        assert!(c.try_recv().is_err(), "c follows no topic");
        // A join or leave skips its own stream.
        assert_eq!(hub.deliver_topic("doc:1", Some("b"), &f), 1);
        assert!(b.try_recv().is_err());
        assert_eq!(hub.deliver_topic("nobody", None, &f), 0);
        // Each stream's snapshot says what it follows.
        hub.registered("a");
        let snap = hub.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].topics, ["doc:1", "team:7"]);
        hub.unregister("a");
        assert_eq!(hub.topic_count(), 1, "team:7 went with its last follower");
        hub.unregister("b");
        assert_eq!(hub.topic_count(), 0);
        assert_eq!(metrics.followed_topics.get(), 0);
    }

    #[test]
    fn node_cap_refuses() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let token = CancellationToken::new();
        let _a = hub.register(&conn("a", "u"), 2, 1, token.clone()).unwrap();
        assert!(matches!(
            hub.register(&conn("b", "u"), 2, 1, token.clone()),
            Err(HubError::Full(1))
        ));
        hub.close_all(|| Bytes::from_static(b"retry: 1\n\n"));
        assert_eq!(hub.len(), 0);
        assert!(matches!(
            hub.register(&conn("c", "u"), 2, 10, token),
            Err(HubError::Closed)
        ));
    }

    #[test]
    fn close_user_sends_last_frame_then_ends() {
        let hub = Hub::new(Arc::new(Metrics::new()));
        let token = CancellationToken::new();
        let mut a = hub.register(&conn("a", "u"), 2, 10, token.clone()).unwrap();
        let _b = hub.register(&conn("b", "v"), 2, 10, token).unwrap();
        let last = Bytes::from_static(b"bye");
        let closed = hub.close_user("u", Some(&last));
        assert_eq!(closed.len(), 1);
        assert_eq!(a.try_recv().unwrap(), last);
        assert_eq!(a.try_recv(), Err(queue::TryRecvError::Disconnected));
        assert_eq!(hub.len(), 1);
    }
}
