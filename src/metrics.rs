//! Counters and gauges (README "Monitoring"), rendered as Prometheus text on
//! `GET /metrics`.

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
    pub connects: Counter,
    pub disconnects: Counter,
    pub messages_sent: Counter,
    pub messages_delivered: Counter,
    pub slow_consumer_drops: Counter,
    pub sweeps: Counter,
    pub swept_records: Counter,
    pub redis_errors: Counter,
    pub rejected_connections: Counter,
    pub bus_up: Gauge,
    pub bus_resubscribes: Counter,
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
            connects: Counter::default(),
            disconnects: Counter::default(),
            messages_sent: Counter::default(),
            messages_delivered: Counter::default(),
            slow_consumer_drops: Counter::default(),
            sweeps: Counter::default(),
            swept_records: Counter::default(),
            redis_errors: Counter::default(),
            rejected_connections: Counter::default(),
            bus_up: Gauge::default(),
            bus_resubscribes: Counter::default(),
            http_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "live_connections",
            "Streams open on this node",
            m.live_connections.clone(),
        );
        registry.register("connects", "Streams opened", m.connects.clone());
        registry.register("disconnects", "Streams closed", m.disconnects.clone());
        registry.register(
            "messages_sent",
            "Messages accepted by send (API, CLI, other nodes' posts excluded)",
            m.messages_sent.clone(),
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
        registry.register("sweeps", "Stale-record sweeps run", m.sweeps.clone());
        registry.register(
            "swept_records",
            "Connection records removed by sweeps",
            m.swept_records.clone(),
        );
        registry.register(
            "redis_errors",
            "Failed Redis operations",
            m.redis_errors.clone(),
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

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
