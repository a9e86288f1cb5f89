//! What the node reports of itself, for the admin console: every second
//! it reports this node to the store (Redis: for every node's console),
//! reads the deployment's nodes and totals, and keeps 15 minutes of
//! deployment-wide rates in a ring, with the latest tick for the
//! console's live stream. At shutdown its report goes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use super::Node;
use crate::store::nodes::NodeStatus;
use crate::store::unix_now;
use crate::throttle::LogThrottle;

/// One sample a second, 15 minutes of them.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(1);
pub(crate) const RING: usize = 900;

/// One point of the chart: deployment-wide, rates per second over the
/// last interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Sample {
    pub t: f64,
    pub live: u64,
    pub connects: f64,
    pub disconnects: f64,
    pub sent: f64,
    pub delivered: f64,
    pub drops: f64,
}

/// What the sampler keeps between rounds for one node, to turn its
/// counters into rates.
#[derive(Debug, Clone)]
struct Seen {
    started_at: f64,
    seen_at: f64,
    counters: [u64; 5],
    rates: [f64; 5],
}

fn counters(n: &NodeStatus) -> [u64; 5] {
    [
        n.connects,
        n.disconnects,
        n.messages_sent,
        n.messages_delivered,
        n.slow_consumer_drops,
    ]
}

/// Deployment-wide rates from every node's counters. Each node's rate
/// comes from its own two last reports (they arrive at its own pace); a
/// node seen for the first time, or restarted, counts from its next
/// report, so a node joining never shows as a burst of its whole history.
#[derive(Debug, Default)]
pub(crate) struct Rates {
    nodes: HashMap<String, Seen>,
}

impl Rates {
    pub(crate) fn sample(&mut self, t: f64, nodes: &[NodeStatus]) -> Sample {
        let mut next = HashMap::with_capacity(nodes.len());
        let mut sum = [0.0f64; 5];
        let mut live = 0;
        for n in nodes {
            live += n.live_streams;
            let now = counters(n);
            let rates = match self.nodes.get(&n.node_id) {
                Some(prev) if prev.started_at == n.started_at && n.seen_at > prev.seen_at => {
                    let dt = n.seen_at - prev.seen_at;
                    let mut r = [0.0; 5];
                    for i in 0..5 {
                        r[i] = now[i].saturating_sub(prev.counters[i]) as f64 / dt;
                    }
                    r
                }
                // Not reported again yet: its last rate holds.
                Some(prev) if prev.started_at == n.started_at => prev.rates,
                _ => [0.0; 5],
            };
            for i in 0..5 {
                sum[i] += rates[i];
            }
            next.insert(
                n.node_id.clone(),
                Seen {
                    started_at: n.started_at,
                    seen_at: n.seen_at,
                    counters: now,
                    rates,
                },
            );
        }
        self.nodes = next;
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        Sample {
            t: round(t),
            live,
            connects: round(sum[0]),
            disconnects: round(sum[1]),
            sent: round(sum[2]),
            delivered: round(sum[3]),
            drops: round(sum[4]),
        }
    }
}

/// What the reporter keeps for the console: the ring of samples and the
/// latest tick, which every open console stream is sent.
pub(crate) struct Reports {
    ring: Mutex<VecDeque<Sample>>,
    /// The latest `tick` event's data (compact JSON).
    tick: watch::Sender<Option<Arc<str>>>,
}

impl Default for Reports {
    fn default() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            tick: watch::channel(None).0,
        }
    }
}

impl Reports {
    /// The samples of the last [`RING`] seconds, oldest first.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn push(&self, s: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// The latest tick's data (compact JSON), and every next one.
    pub(crate) fn ticks(&self) -> watch::Receiver<Option<Arc<str>>> {
        self.tick.subscribe()
    }
}

/// This node's report now.
async fn this_node(node: &Node) -> NodeStatus {
    let m = node.metrics();
    let health = node.health().await;
    NodeStatus {
        node_id: node.id().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        engine: health.engine.to_string(),
        started_at: node.started_at(),
        seen_at: unix_now(),
        live_streams: node.live_streams() as u64,
        max_streams: node.max_streams() as u64,
        redis: health.redis.map(|r| match r {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("unreachable: {e}"),
        }),
        bus: health.bus.map(|b| b.as_str().to_string()),
        connects: m.connects.get(),
        disconnects: m.disconnects.get(),
        messages_sent: m.messages_sent.get(),
        messages_delivered: m.messages_delivered.get(),
        slow_consumer_drops: m.slow_consumer_drops.get(),
    }
}

/// Every second until shutdown: report this node, read the deployment,
/// push a sample, publish the tick. At shutdown this node's report goes.
pub(crate) async fn run(node: Arc<Node>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rates = Rates::default();
    let mut log = LogThrottle::new(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = node.shutdown().cancelled() => break,
            _ = every.tick() => {}
        }
        let me = this_node(&node).await;
        let t = me.seen_at;
        let (nodes, totals, error) = match node.report(&me).await {
            Ok(d) => (d.nodes, Some((d.users, d.connections)), None),
            Err(e) => {
                node.metrics().store_errors.inc();
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(error = %e, suppressed, "console: node report failed");
                }
                (vec![me], None, Some(e.to_string()))
            }
        };
        let sample = rates.sample(t, &nodes);
        node.reports().push(sample.clone());
        let tick = json!({
            "t": t,
            "node_id": node.id(),
            "sample": sample,
            "nodes": nodes,
            "users": totals.map(|t| t.0),
            "connections": totals.map(|t| t.1),
            "error": error,
        });
        node.reports()
            .tick
            .send_replace(Some(Arc::from(tick.to_string())));
    }
    if let Err(e) = node.forget_report().await {
        tracing::debug!(error = %e, "console: could not remove this node's report");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, started: f64, seen: f64, connects: u64, live: u64) -> NodeStatus {
        NodeStatus {
            node_id: id.into(),
            started_at: started,
            seen_at: seen,
            connects,
            live_streams: live,
            ..Default::default()
        }
    }

    #[test]
    fn rates_per_node_without_join_bursts() {
        let mut r = Rates::default();
        // First sight: no rate, whatever the counters hold.
        let s = r.sample(10.0, &[node("a", 1.0, 10.0, 5000, 3)]);
        assert_eq!((s.connects, s.live), (0.0, 3));
        let s = r.sample(
            11.0,
            &[node("a", 1.0, 12.0, 5010, 4), node("b", 2.0, 11.0, 700, 1)],
        );
        assert_eq!((s.connects, s.live), (5.0, 5));
        // a not reported again: its last rate holds; b's second report.
        let s = r.sample(
            12.0,
            &[node("a", 1.0, 12.0, 5010, 4), node("b", 2.0, 12.0, 703, 1)],
        );
        assert_eq!(s.connects, 8.0);
        // a restarted (counters back near 0): no negative rate, no burst.
        let s = r.sample(13.0, &[node("a", 50.0, 13.0, 2, 0)]);
        assert_eq!(s.connects, 0.0);
    }
}
