//! Messages and control events between nodes over the `{prefix}:bus`
//! pub/sub channel: one subscription per node, rebuilt with backoff when it
//! breaks. What a node receives it applies to the connections it holds;
//! events it published itself were already applied locally and are skipped.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::frame;
use crate::hub::Hub;
use crate::keys::Keys;
use crate::presence::Presence;
use crate::registry::{Registry, RegistryError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusEvent {
    /// The registry was cleared: re-register your live connections.
    Resync { origin: String },
    /// A message for connections held by other nodes: `ids`, or every
    /// connection when `broadcast`. `data` is the compact JSON text.
    Deliver {
        origin: String,
        ids: Vec<String>,
        broadcast: bool,
        id: String,
        event: String,
        data: String,
    },
    /// Close these connections; with a reason, an `evicted` notice first.
    Close {
        origin: String,
        ids: Vec<String>,
        reason: Option<String>,
    },
    /// Close every stream of a user (logout).
    CloseUser { origin: String, username: String },
}

impl BusEvent {
    fn origin(&self) -> &str {
        match self {
            BusEvent::Resync { origin }
            | BusEvent::Deliver { origin, .. }
            | BusEvent::Close { origin, .. }
            | BusEvent::CloseUser { origin, .. } => origin,
        }
    }
}

/// Applies an event from another node to this one.
fn apply(event: BusEvent, hub: &Hub, presence: &Presence) {
    match event {
        BusEvent::Resync { .. } => presence.resync(),
        BusEvent::Deliver {
            ids,
            broadcast,
            id,
            event,
            data,
            ..
        } => {
            let frame = frame::message(&id, &event, &data);
            if broadcast {
                hub.broadcast(&frame);
            } else {
                hub.deliver(&ids, &frame);
            }
        }
        BusEvent::Close { ids, reason, .. } => {
            for id in ids {
                let notice = reason.as_deref().map(|r| frame::evicted(&id, r));
                hub.close(std::slice::from_ref(&id), notice.as_ref());
            }
        }
        BusEvent::CloseUser { username, .. } => {
            hub.close_user(&username, None);
        }
    }
}

/// Tells every running node to re-register its live connections.
pub async fn publish_resync(registry: &Registry) -> Result<(), RegistryError> {
    publish(
        registry,
        &BusEvent::Resync {
            origin: String::new(),
        },
    )
    .await
}

pub async fn publish(registry: &Registry, event: &BusEvent) -> Result<(), RegistryError> {
    let payload = serde_json::to_string(event).unwrap_or_default();
    let channel = registry.keys().bus();
    let mut conn = registry.connection();
    tokio::time::timeout(Duration::from_secs(5), async move {
        conn.publish::<_, _, ()>(channel, payload).await
    })
    .await
    .map_err(|_| RegistryError::Timeout(Duration::from_secs(5)))?
    .map_err(RegistryError::from)
}

/// Keeps this node subscribed to the bus until shutdown and acts on what
/// arrives. After every (re)subscription it re-registers its connections:
/// a clear may have been announced while it was not listening.
pub async fn run_subscriber(
    url: String,
    keys: Keys,
    node_id: String,
    hub: Arc<Hub>,
    presence: Presence,
    up: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    let mut failures = crate::throttle::LogThrottle::new(Duration::from_secs(10));
    let mut first = true;
    loop {
        let attempt = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(keys.bus()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(5), attempt) => r,
        };
        match pubsub {
            Ok(Ok(pubsub)) => {
                delay = Duration::from_millis(200);
                up.send_replace(true);
                if !first {
                    tracing::info!("bus resubscribed");
                    presence.resync();
                }
                first = false;
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else {
                        up.send_replace(false);
                        tracing::warn!("bus subscription lost; resubscribing");
                        break;
                    };
                    let payload: String = msg.get_payload().unwrap_or_default();
                    match serde_json::from_str::<BusEvent>(&payload) {
                        Ok(event) if event.origin() == node_id => {}
                        Ok(event) => apply(event, &hub, &presence),
                        Err(e) => tracing::warn!(error = %e, "unknown bus event ignored"),
                    }
                }
            }
            Ok(Err(e)) => {
                if let Some(suppressed) = failures.allow() {
                    tracing::error!(error = %e, suppressed, "bus subscribe failed; retrying");
                }
            }
            Err(_) => {
                if let Some(suppressed) = failures.allow() {
                    tracing::error!(suppressed, "bus subscribe timed out; retrying");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
