//! Counters and gauges (README "Monitoring"), rendered on `GET /metrics` as
//! OpenMetrics for scrapers that ask for it, else as the classic Prometheus
//! text format.

use std::collections::HashSet;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub route: &'static str,
    pub status: u16,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub live_connections: Gauge,
    pub max_streams: Gauge,
    pub connects: Counter,
    pub disconnects: Counter,
    pub messages_sent: Counter,
    pub topic_messages_sent: Counter,
    pub followed_topics: Gauge,
    pub messages_delivered: Counter,
    pub slow_consumer_drops: Counter,
    pub write_timeouts: Counter,
    pub admin_refused_connections: Counter,
    pub sweeps: Counter,
    pub swept_records: Counter,
    /// Failed store operations, of either engine (exported as
    /// `sse_notify_redis_errors_total`).
    pub store_errors: Counter,
    pub rejected_connections: Counter,
    pub bus_up: Gauge,
    pub bus_resubscribes: Counter,
    pub bus_messages_received: Counter,
    pub bus_messages_unmatched: Counter,
    pub http_requests: Family<HttpLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("sse_notify");
        let m = Self {
            live_connections: Gauge::default(),
            max_streams: Gauge::default(),
            connects: Counter::default(),
            disconnects: Counter::default(),
            messages_sent: Counter::default(),
            topic_messages_sent: Counter::default(),
            followed_topics: Gauge::default(),
            messages_delivered: Counter::default(),
            slow_consumer_drops: Counter::default(),
            write_timeouts: Counter::default(),
            admin_refused_connections: Counter::default(),
            sweeps: Counter::default(),
            swept_records: Counter::default(),
            store_errors: Counter::default(),
            rejected_connections: Counter::default(),
            bus_up: Gauge::default(),
            bus_resubscribes: Counter::default(),
            bus_messages_received: Counter::default(),
            bus_messages_unmatched: Counter::default(),
            http_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "live_connections",
            "Streams open on this node",
            m.live_connections.clone(),
        );
        registry.register(
            "max_streams",
            "Streams this node accepts before refusing (limits.max_connections, or less under the open-file limit)",
            m.max_streams.clone(),
        );
        registry.register("connects", "Streams opened", m.connects.clone());
        registry.register("disconnects", "Streams closed", m.disconnects.clone());
        registry.register(
            "messages_sent",
            "Messages accepted by send (API, CLI, other nodes' posts excluded)",
            m.messages_sent.clone(),
        );
        registry.register(
            "topic_messages_sent",
            "Messages to a topic accepted by send (counted in messages_sent too)",
            m.topic_messages_sent.clone(),
        );
        registry.register(
            "followed_topics",
            "Topics that streams open on this node follow",
            m.followed_topics.clone(),
        );
        registry.register(
            "messages_delivered",
            "Message frames queued to a local stream",
            m.messages_delivered.clone(),
        );
        registry.register(
            "slow_consumer_drops",
            "Streams disconnected because their queue was full",
            m.slow_consumer_drops.clone(),
        );
        registry.register(
            "write_timeouts",
            "Streams whose socket was reset because their writes made no progress for stream.write_timeout_secs (closing or not)",
            m.write_timeouts.clone(),
        );
        registry.register(
            "admin_refused_connections",
            "Admin connections answered 503 because api.max_connections were open",
            m.admin_refused_connections.clone(),
        );
        registry.register("sweeps", "Stale-record sweeps run", m.sweeps.clone());
        registry.register(
            "swept_records",
            "Connection records removed by sweeps",
            m.swept_records.clone(),
        );
        registry.register(
            // The exported name predates the embedded engine; kept so that
            // dashboards and alerts keep working.
            "redis_errors",
            "Failed Redis operations",
            m.store_errors.clone(),
        );
        registry.register(
            "rejected_connections",
            "Streams refused (node limit, Redis down)",
            m.rejected_connections.clone(),
        );
        registry.register(
            "bus_up",
            "1 while this node's bus subscription carries its own probes",
            m.bus_up.clone(),
        );
        registry.register(
            "bus_resubscribes",
            "Times the bus subscription was rebuilt",
            m.bus_resubscribes.clone(),
        );
        registry.register(
            "bus_messages_received",
            "Messages this node received from the bus (Redis engine)",
            m.bus_messages_received.clone(),
        );
        registry.register(
            "bus_messages_unmatched",
            "Messages received from the bus that no stream of this node took",
            m.bus_messages_unmatched.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            m.http_requests.clone(),
        );
        Self { registry, ..m }
    }

    pub(crate) fn http(&self, route: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
    }

    /// OpenMetrics 1.0 text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4), as the Prometheus Go
    /// client writes it, with the same series as [`Metrics::render`].
    pub(crate) fn render_classic(&self) -> String {
        classic(&self.render())
    }
}

/// OpenMetrics text to the classic format. OpenMetrics names a counter's
/// family without `_total` and its sample with it; the classic format has
/// one name for both (the sample's, which is the series Prometheus stores
/// either way). No `# UNIT`, no `# EOF`.
pub(crate) fn classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_names_counters_like_their_samples() {
        let m = Metrics::new();
        m.connects.inc();
        m.http("stream", 200);
        let text = m.render_classic();
        assert!(
            text.contains("# TYPE sse_notify_connects_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP sse_notify_connects_total Streams opened"),
            "{text}"
        );
        assert!(text.contains("\nsse_notify_connects_total 1\n"), "{text}");
        assert!(
            text.contains("# TYPE sse_notify_live_connections gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
