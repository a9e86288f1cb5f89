//! What a node tells the rest of the deployment about itself (the admin
//! console's node list and its deployment-wide chart): one record per
//! node, rewritten every second and forgotten when the node leaves or
//! stops rewriting it.

use serde::Serialize;

/// One node as it last reported itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct NodeStatus {
    pub node_id: String,
    pub version: String,
    pub engine: String,
    /// Unix seconds the process started.
    pub started_at: f64,
    /// Unix seconds of this report.
    pub seen_at: f64,
    pub live_streams: u64,
    pub max_streams: u64,
    /// `"ok"` or why not (Redis engine only).
    pub redis: Option<String>,
    /// `"ok"` or `"down"` (Redis engine only).
    pub bus: Option<String>,
    pub connects: u64,
    pub disconnects: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    pub slow_consumer_drops: u64,
}

/// The nodes that reported lately, and the registry's totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Deployment {
    pub nodes: Vec<NodeStatus>,
    pub users: usize,
    pub connections: usize,
}

impl NodeStatus {
    /// Field/value pairs, as the Redis hash holds them.
    pub(crate) fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("node_id", self.node_id.clone()),
            ("version", self.version.clone()),
            ("engine", self.engine.clone()),
            ("started_at", format!("{:.3}", self.started_at)),
            ("seen_at", format!("{:.3}", self.seen_at)),
            ("live_streams", self.live_streams.to_string()),
            ("max_streams", self.max_streams.to_string()),
            ("redis", self.redis.clone().unwrap_or_default()),
            ("bus", self.bus.clone().unwrap_or_default()),
            ("connects", self.connects.to_string()),
            ("disconnects", self.disconnects.to_string()),
            ("messages_sent", self.messages_sent.to_string()),
            ("messages_delivered", self.messages_delivered.to_string()),
            ("slow_consumer_drops", self.slow_consumer_drops.to_string()),
        ]
    }

    /// Back from those pairs; `None` without a node id (an expired or
    /// foreign hash). Unreadable numbers read as 0: a record written by a
    /// newer version must not hide the node.
    pub(crate) fn from_fields(h: &std::collections::HashMap<String, String>) -> Option<Self> {
        let text = |k: &str| h.get(k).cloned().unwrap_or_default();
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let secs = |k: &str| h.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let opt = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
        let node_id = text("node_id");
        if node_id.is_empty() {
            return None;
        }
        Some(NodeStatus {
            node_id,
            version: text("version"),
            engine: text("engine"),
            started_at: secs("started_at"),
            seen_at: secs("seen_at"),
            live_streams: num("live_streams"),
            max_streams: num("max_streams"),
            redis: opt("redis"),
            bus: opt("bus"),
            connects: num("connects"),
            disconnects: num("disconnects"),
            messages_sent: num("messages_sent"),
            messages_delivered: num("messages_delivered"),
            slow_consumer_drops: num("slow_consumer_drops"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let n = NodeStatus {
            node_id: "web-1".into(),
            version: "0.1.0".into(),
            engine: "redis".into(),
            started_at: 1700000000.5,
            seen_at: 1700000100.25,
            live_streams: 3,
            max_streams: 10000,
            redis: Some("ok".into()),
            bus: None,
            connects: 7,
            disconnects: 4,
            messages_sent: 9,
            messages_delivered: 12,
            slow_consumer_drops: 1,
        };
        let h = n
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(NodeStatus::from_fields(&h), Some(n));
        assert_eq!(NodeStatus::from_fields(&Default::default()), None);
    }
}
