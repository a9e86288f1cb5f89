//! The one delivery path: who gets a message (a user's connections, their
//! first one, or everyone) according to the registry, and handing the
//! encoded frame to the connections held here. Control actions that reach
//! connections (close a user's streams, clear and re-register) go through
//! here too, so that adding other nodes means changing this file only.

use std::sync::Arc;

use serde::Serialize;

use crate::bus::{self, BusEvent};
use crate::config::HistoryConfig;
use crate::frame;
use crate::history::{Append, Appender, History, Targets};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::registry::{Registry, RegistryError, Removed};

const EVICTED_REASON: &str = "max_connections_per_user";

/// A validated message to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `None` is a broadcast.
    pub to: Option<String>,
    pub event: String,
    pub data: serde_json::Value,
    pub all_connections: bool,
}

/// The `data` of a send response (SPEC 3).
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub message_id: String,
    pub to: Option<String>,
    pub event: String,
    pub all_connections: bool,
    pub connections: usize,
}

pub struct Router {
    pub(crate) registry: Registry,
    pub(crate) hub: Arc<Hub>,
    pub(crate) presence: Presence,
    pub(crate) metrics: Arc<Metrics>,
    /// Marks the bus events this node publishes.
    pub(crate) origin: String,
    pub(crate) history: Option<History>,
    /// Keeps messages in batches (history on).
    pub(crate) appender: Option<Appender>,
    pub(crate) bus_up: tokio::sync::watch::Receiver<bool>,
}

impl Router {
    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// Routes a message. With history on, it is kept first (its id comes
    /// from the history) and only then are the targets read from the
    /// registry: a stream that registered before reading the history either
    /// finds the message there or is among the targets. When some targets
    /// are held by other nodes the message is published on the bus before
    /// anything is delivered here: if Redis fails, nothing is delivered and
    /// a retry cannot duplicate.
    pub async fn send(&self, msg: Outgoing, kept: &HistoryConfig) -> Result<Sent, RegistryError> {
        // Deaf to the bus, this node could give its streams a message
        // before older ones it has not heard yet: refuse until it caught up.
        if !*self.bus_up.borrow() {
            return Err(RegistryError::BusDown);
        }
        let data_json = msg.data.to_string();
        let first_only = msg.to.is_some() && !msg.all_connections;
        let (message_id, targets) = match &self.appender {
            Some(appender) => {
                let targets_key = match &msg.to {
                    Some(user) => self.registry.keys().user(user),
                    None => self.registry.keys().heartbeats(),
                };
                let append = Append {
                    to: msg.to.clone(),
                    first_only,
                    event: msg.event.clone(),
                    data: data_json.clone(),
                    targets_key,
                };
                appender.append(append, kept.size, kept.ttl_secs).await?
            }
            None => {
                let targets = match &msg.to {
                    Some(user) => Targets::Ids(
                        self.registry
                            .user_connection_ids(user, first_only.then_some(1))
                            .await?,
                    ),
                    None => Targets::Count(self.registry.connection_count().await?),
                };
                (uuid::Uuid::new_v4().to_string(), targets)
            }
        };
        if self.appender.is_some() {
            // The script published it: every node, this one too, delivers it
            // from the bus, where messages travel in id order.
            let connections = match targets {
                Targets::Ids(ids) => ids.len(),
                Targets::Count(n) => n,
            };
            return Ok(self.sent(message_id, msg, connections));
        }
        let frame = frame::message(&message_id, &msg.event, &data_json);
        let remote_event = |ids: Vec<String>, broadcast: bool| BusEvent::Deliver {
            origin: self.origin.clone(),
            to: msg.to.clone(),
            first_only,
            ids,
            broadcast,
            id: message_id.clone(),
            event: msg.event.clone(),
            data: data_json.clone(),
        };
        let connections = match (&msg.to, targets) {
            (Some(user), Targets::Ids(targets)) => {
                let (local, remote): (Vec<String>, Vec<String>) = targets
                    .iter()
                    .cloned()
                    .partition(|id| self.hub.contains(id));
                if !remote.is_empty() {
                    bus::publish(&self.registry, &remote_event(remote, false)).await?;
                }
                if first_only {
                    self.hub.deliver(&local, &frame);
                } else {
                    // Every local tab of the user, also one whose record is
                    // still being written or was lost with a Redis restart.
                    self.hub.deliver_user(user, &frame);
                }
                targets.len()
            }
            (_, targets) => {
                let count = match targets {
                    Targets::Count(n) => n,
                    Targets::Ids(ids) => ids.len(),
                };
                if count > 0 {
                    bus::publish(&self.registry, &remote_event(Vec::new(), true)).await?;
                }
                self.hub.broadcast(&frame);
                count
            }
        };
        Ok(self.sent(message_id, msg, connections))
    }

    fn sent(&self, message_id: String, msg: Outgoing, connections: usize) -> Sent {
        self.metrics.messages_sent.inc();
        tracing::debug!(%message_id, to = msg.to.as_deref(), event = %msg.event, connections, "message routed");
        Sent {
            message_id,
            all_connections: msg.to.is_none() || msg.all_connections,
            to: msg.to,
            event: msg.event,
            connections,
        }
    }

    /// Closes every stream of `username` on every node and removes their
    /// records.
    pub async fn disconnect_user(&self, username: &str) -> Result<Removed, RegistryError> {
        // What exists now is what this request removes, even the records
        // that the other nodes' closing streams remove before our delete.
        let before = self.registry.user_connection_ids(username, None).await?;
        // Other nodes are told first: if Redis fails here, nothing changed.
        let close = BusEvent::CloseUser {
            origin: self.origin.clone(),
            username: username.to_string(),
        };
        bus::publish(&self.registry, &close).await?;
        let mut removed = self.registry.delete_user(username).await?;
        for id in before {
            if !removed.connection_ids.contains(&id) {
                removed.connection_ids.push(id);
            }
        }
        if !removed.connection_ids.is_empty() {
            removed.usernames.insert(username.to_string());
        }
        let closed = self.hub.close_user(username, None);
        tracing::info!(
            username,
            records = removed.connection_count(),
            local_streams = closed.len(),
            "user disconnected"
        );
        Ok(removed)
    }

    /// SPEC 7: when `username` holds more than `max` connections (all
    /// nodes), the oldest ones but `keep` are closed with an `evicted`
    /// notice until `max` remain.
    pub async fn enforce_user_limit(
        &self,
        username: &str,
        max: usize,
        keep: &str,
    ) -> Result<usize, RegistryError> {
        let ids = self.registry.user_connection_ids(username, None).await?;
        if ids.len() <= max {
            return Ok(0);
        }
        let excess = ids.len() - max;
        let victims: Vec<String> = ids
            .into_iter()
            .filter(|id| id != keep)
            .take(excess)
            .collect();
        self.registry.remove(&victims).await?;
        let (local, remote): (Vec<String>, Vec<String>) = victims
            .iter()
            .cloned()
            .partition(|id| self.hub.contains(id));
        if !remote.is_empty() {
            let close = BusEvent::Close {
                origin: self.origin.clone(),
                ids: remote,
                reason: Some(EVICTED_REASON.into()),
            };
            bus::publish(&self.registry, &close).await?;
        }
        for id in &local {
            self.hub.close(
                std::slice::from_ref(id),
                Some(&frame::evicted(id, EVICTED_REASON)),
            );
        }
        tracing::info!(
            username,
            evicted = victims.len(),
            max,
            "connections over the per-user limit evicted"
        );
        Ok(victims.len())
    }

    /// Full clear: every record goes, then every node re-registers the
    /// connections it holds, so only zombies stay gone.
    pub async fn clear(&self) -> Result<Removed, RegistryError> {
        let removed = self.registry.clear().await?;
        self.presence.resync();
        let resync = BusEvent::Resync {
            origin: self.origin.clone(),
        };
        if let Err(e) = bus::publish(&self.registry, &resync).await {
            self.metrics.redis_errors.inc();
            tracing::error!(error = %e, "cleared, but could not tell the other nodes to re-register");
        }
        tracing::info!(
            connections = removed.connection_count(),
            users = removed.user_count(),
            "registry cleared; live connections re-registering"
        );
        Ok(removed)
    }

    /// Removes records whose heartbeat is older than `timeout_secs`.
    pub async fn cleanup(&self, timeout_secs: f64) -> Result<Removed, RegistryError> {
        let removed = self
            .registry
            .sweep(crate::registry::unix_now() - timeout_secs)
            .await?;
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
}
