//! The one delivery path: what a node does with a message, whether this
//! node's API took it or another node sent it. Sending hands messages to
//! the store, which keeps them, reads their targets and brings them back
//! (to every node that holds a target, this one included) through
//! [`Delivery`], which puts the encoded frame into the streams' queues.
//! Limits and eviction, logout and clears are decided here too.

use std::sync::Arc;

use serde::Serialize;

use super::frame;
use super::hub::Hub;
use crate::config::HistoryConfig;
use crate::metrics::Metrics;
use crate::store::{
    unix_now, Cleared, ConnectionRecord, Cursor, Inbound, LiveConn, Message, NodeLink, Page, Pos,
    Removed, Replay, Result, Store, Target, TopicPresence, TopicsPage, Wrote,
};

const EVICTED_REASON: &str = "max_connections_per_user";

/// A validated message to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// `None` (and no `topic`) is a broadcast.
    pub to: Option<String>,
    /// Every stream following this topic (then `to` is `None`).
    pub topic: Option<String>,
    pub event: String,
    /// The payload as compact JSON text, exactly as the request carried it.
    pub data: String,
    /// Only the user's first connection (a send to a user with
    /// `all_connections: false`).
    pub first_only: bool,
}

/// The `data` of a send response.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sent {
    pub message_id: String,
    pub to: Option<String>,
    pub topic: Option<String>,
    pub event: String,
    pub all_connections: bool,
    pub connections: usize,
}

/// Applies what the store delivers to the streams this node holds.
pub(crate) struct Delivery {
    hub: Arc<Hub>,
}

impl Delivery {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }
}

impl NodeLink for Delivery {
    fn receive(&self, inbound: Inbound) -> usize {
        match inbound {
            Inbound::Deliver {
                id,
                event,
                data,
                target,
            } => {
                // Encoded once: every recipient's queue shares the bytes.
                let frame = frame::message(&id, &event, &data);
                match target {
                    Target::All => self.hub.broadcast(&frame),
                    Target::User(user) => self.hub.deliver_user(&user, &frame),
                    Target::Ids(ids) => self.hub.deliver(&ids, &frame),
                    Target::Tab(id) => self.hub.deliver_one_tab(&id, &frame),
                    Target::Topic(topic) => self.hub.deliver_topic(&topic, None, &frame),
                    Target::TopicIn(topic, part) => {
                        self.hub
                            .deliver_topic_where(&topic, |user| part.holds(user), &frame)
                    }
                }
            }
            Inbound::Presence {
                topic,
                except,
                event,
                data,
            } => {
                let frame = frame::event(event, &data);
                self.hub.deliver_topic(&topic, Some(&except), &frame);
                0
            }
            Inbound::Close { ids, reason } => {
                for id in ids {
                    let notice = reason.as_deref().map(|r| frame::evicted(&id, r));
                    self.hub.close(std::slice::from_ref(&id), notice.as_ref());
                }
                0
            }
            Inbound::CloseUser { username } => {
                self.hub.close_user(&username, None);
                0
            }
            Inbound::HistoryLost => {
                // Each stream writes it with its own last id.
                self.hub.notice(&frame::history_lost());
                0
            }
        }
    }

    fn live(&self) -> Vec<LiveConn> {
        self.hub.snapshot()
    }

    fn holds(&self, connection_id: &str) -> bool {
        self.hub.contains(connection_id)
    }

    fn live_count(&self) -> usize {
        self.hub.len()
    }
}

pub(crate) struct Router {
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    node_id: String,
}

impl Router {
    pub(crate) fn new(store: Store, hub: Arc<Hub>, metrics: Arc<Metrics>, node_id: String) -> Self {
        Self {
            store,
            hub,
            metrics,
            node_id,
        }
    }

    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// Routes messages: the store keeps them (history on), reads their
    /// targets and delivers them through every node's [`Delivery`]. If the
    /// store fails, nothing was delivered and a retry cannot duplicate.
    pub(crate) async fn send(
        &self,
        msgs: Vec<Outgoing>,
        history: &HistoryConfig,
    ) -> Result<Vec<Sent>> {
        // The payload moves into the store; the answer keeps the rest.
        let (heads, taken): (Vec<_>, Vec<Message>) = msgs
            .into_iter()
            .map(|m| {
                let head = (m.to.clone(), m.topic.clone(), m.event.clone(), m.first_only);
                let msg = Message {
                    to: m.to,
                    topic: m.topic,
                    first_only: m.first_only,
                    event: m.event,
                    data: m.data,
                };
                (head, msg)
            })
            .unzip();
        let accepted = self.store.send(taken, history).await?;
        Ok(heads
            .into_iter()
            .zip(accepted)
            .map(|((to, topic, event, first_only), a)| {
                self.metrics.messages_sent.inc();
                if topic.is_some() {
                    self.metrics.topic_messages_sent.inc();
                }
                tracing::debug!(message_id = %a.id, to = to.as_deref(), topic = topic.as_deref(), event = %event, connections = a.connections, "message routed");
                Sent {
                    message_id: a.id,
                    all_connections: !first_only,
                    to,
                    topic,
                    event,
                    connections: a.connections,
                }
            })
            .collect())
    }

    /// Records a stream this node holds; returns how many connections its
    /// user then has on every node.
    pub(crate) async fn register(&self, conn: &LiveConn) -> Result<usize> {
        self.store
            .register(ConnectionRecord {
                connection_id: conn.connection_id.clone(),
                username: conn.username.clone(),
                connection_time: conn.connection_time,
                last_heartbeat: conn.connection_time,
                topics: conn.topics.clone(),
                node_id: self.node_id.clone(),
            })
            .await
    }

    /// A stream's registration landed: from now on a heartbeat writes its
    /// record back if someone removes it.
    pub(crate) fn registered(&self, connection_id: &str) {
        self.hub.registered(connection_id);
    }

    /// A stream ended: out of the hub first (so no snapshot writes it back),
    /// then out of the store, with what it wrote when it was sent one-tab
    /// messages.
    pub(crate) fn unregister(&self, connection_id: &str, wrote: Option<Wrote>) {
        self.hub.unregister(connection_id);
        self.store.remove(connection_id.to_string(), wrote);
    }

    /// What the stream `conn` missed after `raw` (its `Last-Event-ID`).
    pub(crate) async fn replay(
        &self,
        conn: &LiveConn,
        raw: &str,
        history: &HistoryConfig,
    ) -> Result<Replay> {
        self.store.replay(conn, raw, history).await
    }

    /// Where a stream without `Last-Event-ID` starts, where ids are pairs.
    pub(crate) async fn tops(&self, conn: &LiveConn) -> Result<Option<Pos>> {
        self.store.tops(conn).await
    }

    /// Closes every stream of `username` on every node and removes their
    /// records.
    pub(crate) async fn disconnect_user(&self, username: &str) -> Result<Removed> {
        let removed = self.store.disconnect_user(username).await?;
        tracing::info!(
            username,
            records = removed.connection_count(),
            "user disconnected"
        );
        Ok(removed)
    }

    /// When `username` holds more than `max` connections (all nodes), the
    /// oldest ones but `keep` are closed with an `evicted` notice until
    /// `max` remain; `replaces`, a stream of the user that the new one
    /// takes over, goes first.
    pub(crate) async fn enforce_user_limit(
        &self,
        username: &str,
        max: usize,
        keep: &str,
        replaces: Option<&str>,
    ) -> Result<usize> {
        let mut ids = self.store.user_connection_ids(username, None).await?;
        if ids.len() <= max {
            return Ok(0);
        }
        let excess = ids.len() - max;
        // Only a stream of this user: the id comes from the page.
        if let Some(pos) = replaces.and_then(|r| ids.iter().position(|id| id == r)) {
            let replaced = ids.remove(pos);
            ids.insert(0, replaced);
        }
        let victims: Vec<String> = ids
            .into_iter()
            .filter(|id| id != keep)
            .take(excess)
            .collect();
        let n = victims.len();
        self.store.evict(username, victims, EVICTED_REASON).await?;
        tracing::info!(
            username,
            evicted = n,
            max,
            "connections over the per-user limit evicted"
        );
        Ok(n)
    }

    /// Full clear: every record goes, then every node re-registers the
    /// connections it holds, so only zombies stay gone.
    pub(crate) async fn clear(&self) -> Result<Cleared> {
        let removed = self.store.clear().await?;
        tracing::info!(
            connections = removed.connection_count,
            users = removed.user_count,
            "registry cleared; live connections re-registering"
        );
        Ok(removed)
    }

    /// Removes records whose heartbeat is older than `timeout_secs`.
    pub(crate) async fn cleanup(&self, timeout_secs: f64) -> Result<Removed> {
        let removed = self.store.sweep(unix_now() - timeout_secs).await?;
        self.metrics.sweeps.inc();
        self.metrics
            .swept_records
            .inc_by(removed.connection_count() as u64);
        if removed.connection_count() > 0 {
            tracing::info!(
                connections = removed.connection_count(),
                users = removed.user_count(),
                "stale records removed"
            );
        }
        Ok(removed)
    }

    /// One page of the listing: up to `limit` (1 to `MAX_PAGE`) users
    /// after `after` in name order, each with all its connections, the
    /// registry-wide counts, and the next page's cursor.
    pub(crate) async fn list_page(&self, after: Option<&Cursor>, limit: usize) -> Result<Page> {
        self.store.list_page(after, limit).await
    }

    pub(crate) async fn list_user(&self, user: &str) -> Result<Vec<ConnectionRecord>> {
        self.store.list_user(user).await
    }

    /// One page of the followed topics: up to `limit` (1 to `MAX_PAGE`)
    /// after `after` in name order, each with its counts, how many topics
    /// are followed, and the next page's cursor.
    pub(crate) async fn topics_page(
        &self,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<TopicsPage> {
        self.store.topics_page(after, limit).await
    }

    /// Who follows `topic` now, on every node.
    pub(crate) async fn topic(&self, topic: &str) -> Result<TopicPresence> {
        self.store.topic(topic).await
    }
}
