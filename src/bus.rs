//! Control events between nodes over the `{prefix}:bus` pub/sub channel:
//! one subscription per node, rebuilt with backoff when it breaks.
//!
//! Today the bus carries `resync` (after a full clear every node
//! re-registers its live connections); cross-node delivery travels the
//! same channel.

use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::keys::Keys;
use crate::presence::Presence;
use crate::registry::{Registry, RegistryError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BusEvent {
    /// The registry was cleared: re-register your live connections.
    Resync { origin: String },
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
    presence: Presence,
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
                        tracing::warn!("bus subscription lost; resubscribing");
                        break;
                    };
                    let payload: String = msg.get_payload().unwrap_or_default();
                    match serde_json::from_str::<BusEvent>(&payload) {
                        Ok(BusEvent::Resync { origin }) => {
                            if origin != node_id {
                                presence.resync();
                            }
                        }
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
