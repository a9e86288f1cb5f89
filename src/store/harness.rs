//! The integration tests' harness (a `redis-server` or Redis Cluster of the
//! test's own, waiting with deadlines), compiled into the unit tests too so that the
//! store stays `pub(crate)`.

#[allow(
    dead_code,
    unreachable_pub,
    reason = "the harness serves the integration tests too"
)]
#[path = "../../tests/common/poll.rs"]
pub(crate) mod poll;
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the harness serves the integration tests too"
)]
#[path = "../../tests/common/redis_cluster.rs"]
pub(crate) mod redis_cluster;
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the harness serves the integration tests too"
)]
#[path = "../../tests/common/redis_server.rs"]
pub(crate) mod redis_server;

/// What the harness files ask of their parent module.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[allow(dead_code, reason = "poll.rs reads metrics over HTTP; not here")]
fn http() -> reqwest::Client {
    reqwest::Client::new()
}
