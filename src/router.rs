//! The one delivery path: who gets a message (a user's connections, their
//! first one, or everyone) according to the registry, and handing the
//! encoded frame to the connections held here. Control actions that reach
//! connections (close a user's streams, clear and re-register) go through
//! here too, so that adding other nodes means changing this file only.

use std::sync::Arc;

use serde::Serialize;

use crate::bus::{self, BusEvent};
use crate::frame;
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
    registry: Registry,
    hub: Arc<Hub>,
    presence: Presence,
    metrics: Arc<Metrics>,
    node_id: String,
}

impl Router {
    pub fn new(
        registry: Registry,
        hub: Arc<Hub>,
        presence: Presence,
        metrics: Arc<Metrics>,
        node_id: String,
    ) -> Self {
        Self {
            registry,
            hub,
            presence,
            metrics,
            node_id,
        }
    }

    /// Routes a message. Targets are read from the registry and, when some
    /// are held by other nodes, the message is published on the bus before
    /// anything is delivered here: if Redis fails, nothing is delivered at
    /// all and a retry cannot duplicate.
    pub async fn send(&self, msg: Outgoing) -> Result<Sent, RegistryError> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let data_json = msg.data.to_string();
        let frame = frame::message(&message_id, &msg.event, &data_json);
        let remote_event = |ids: Vec<String>, broadcast: bool| BusEvent::Deliver {
            origin: self.node_id.clone(),
            ids,
            broadcast,
            id: message_id.clone(),
            event: msg.event.clone(),
            data: data_json.clone(),
        };
        let connections = match &msg.to {
            Some(user) => {
                let limit = (!msg.all_connections).then_some(1);
                let targets = self.registry.user_connection_ids(user, limit).await?;
                let (local, remote): (Vec<String>, Vec<String>) = targets
                    .iter()
                    .cloned()
                    .partition(|id| self.hub.contains(id));
                if !remote.is_empty() {
                    bus::publish(&self.registry, &remote_event(remote, false)).await?;
                }
                self.hub.deliver(&local, &frame);
                targets.len()
            }
            None => {
                let count = self.registry.connection_count().await?;
                if count > 0 {
                    bus::publish(&self.registry, &remote_event(Vec::new(), true)).await?;
                }
                self.hub.broadcast(&frame);
                count
            }
        };
        self.metrics.messages_sent.inc();
        tracing::debug!(%message_id, to = msg.to.as_deref(), event = %msg.event, connections, "message routed");
        Ok(Sent {
            message_id,
            all_connections: msg.to.is_none() || msg.all_connections,
            to: msg.to,
            event: msg.event,
            connections,
        })
    }

    /// Closes every stream of `username` on every node and removes their
    /// records.
    pub async fn disconnect_user(&self, username: &str) -> Result<Removed, RegistryError> {
        // Other nodes are told first: if Redis fails here, nothing changed.
        let close = BusEvent::CloseUser {
            origin: self.node_id.clone(),
            username: username.to_string(),
        };
        bus::publish(&self.registry, &close).await?;
        let removed = self.registry.delete_user(username).await?;
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
                origin: self.node_id.clone(),
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
            origin: self.node_id.clone(),
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
