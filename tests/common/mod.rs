//! The one test harness: the engine a scenario runs on (embedded, or
//! Redis on a `redis-server` of the test's own), nodes started in-process
//! or as the real binary, SSE clients, admin API helpers, polling.
//! Test files hold scenarios; what they share lives here.
#![allow(dead_code)]
// Shared by every test crate through `mod common`: pub for them, not for a
// library surface.
#![allow(unreachable_pub)]

mod binary;
mod nginx;
mod poll;
mod redis_cluster;
mod redis_server;
mod sse;
mod tcp;
mod unix;

// Each test crate uses a part of the harness.
#[allow(unused_imports)]
pub use binary::*;
#[allow(unused_imports)]
pub use nginx::*;
#[allow(unused_imports)]
pub use poll::*;
#[allow(unused_imports)]
pub use redis_cluster::*;
#[allow(unused_imports)]
pub use redis_server::*;
#[allow(unused_imports)]
pub use sse::*;
#[allow(unused_imports)]
pub use tcp::*;
#[allow(unused_imports)]
pub use unix::*;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sse_notify::config::{Config, ListenAddr};
use sse_notify::lifecycle::{self, Daemon, Listeners};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The engine a contract test runs on: the embedded one, Redis on a
/// `redis-server` of the test's own, or Redis Cluster (the test binary's
/// shared cluster, under a key prefix of the scenario's own).
pub struct Env {
    redis: Option<RedisServer>,
    /// On the shared cluster: the scenario's `redis.key_prefix`.
    cluster_prefix: Option<String>,
}

impl Env {
    pub fn memory() -> Env {
        Env {
            redis: None,
            cluster_prefix: None,
        }
    }

    pub fn redis() -> Env {
        Env {
            redis: Some(RedisServer::start()),
            cluster_prefix: None,
        }
    }

    /// On the shared cluster, started now if it is not yet (blocking).
    pub fn redis_cluster() -> Env {
        shared_cluster();
        Env {
            redis: None,
            cluster_prefix: Some(format!("t{}", uuid::Uuid::new_v4().simple())),
        }
    }

    /// `redis.url` for this engine ("" selects the embedded one).
    pub fn url(&self) -> String {
        if self.cluster_prefix.is_some() {
            return shared_cluster().cluster_url();
        }
        self.redis
            .as_ref()
            .map(RedisServer::url)
            .unwrap_or_default()
    }

    /// [`test_config`] on this engine (on the cluster: under the
    /// scenario's own key prefix).
    pub fn config(&self) -> Config {
        let mut c = test_config(&self.url());
        if let Some(prefix) = &self.cluster_prefix {
            c.redis.key_prefix = prefix.clone();
        }
        c
    }

    pub fn engine(&self) -> &'static str {
        match (&self.redis, &self.cluster_prefix) {
            (Some(_), _) => "redis",
            (None, Some(_)) => "redis-cluster",
            (None, None) => "memory",
        }
    }

    /// For a config file of the real binary on this engine: the keys to
    /// add to `[redis]` (on the cluster: the scenario's key prefix).
    pub fn binary_keys(&self) -> String {
        match &self.cluster_prefix {
            Some(prefix) => format!("key_prefix = \"{prefix}\"\n"),
            None => String::new(),
        }
    }

    /// Whether the scenario runs on Redis (one server or the cluster).
    pub fn uses_redis(&self) -> bool {
        self.redis.is_some() || self.cluster_prefix.is_some()
    }

    /// The Redis server, for the checks of the Redis layout that only the
    /// Redis engine has.
    pub fn redis_server(&self) -> Option<&RedisServer> {
        self.redis.as_ref()
    }
}

/// Runs each scenario `async fn name(env: Env) { ... }` as three tests,
/// `name::memory`, `name::redis` and `name::redis_cluster`: the contract is
/// the same on every engine.
#[macro_export]
macro_rules! on_every_engine {
    ($($scenarios:tt)*) => {
        $crate::on_engines!([memory, redis, redis_cluster] $($scenarios)*);
    };
}

/// Each scenario as a module with one test per engine of the list (each
/// the name of an [`Env`] constructor).
#[macro_export]
macro_rules! on_engines {
    ($engines:tt $($(#[$meta:meta])* async fn $name:ident($env:ident: Env) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn scenario($env: $crate::common::Env) $body

            $crate::engine_tests!($engines);
        }
    )*};
}

/// The tests of one scenario module, one per engine.
#[macro_export]
macro_rules! engine_tests {
    ([$($engine:ident),*]) => {$(
        // Two workers: scenarios may block a thread (the CLI, a child's
        // exit) while streams must stay polled. The engine starts on a
        // blocking thread (a Redis server or the shared cluster).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $engine() {
            let env = tokio::task::spawn_blocking($crate::common::Env::$engine)
                .await
                .expect("the engine");
            scenario(env).await
        }
    )*};
}

/// The connection ids the registry holds, as the admin API lists them
/// (what a user checks, whichever the engine); sorted.
pub async fn listed_ids(admin_base: &str) -> Vec<String> {
    let data = listing(admin_base).await;
    let mut ids: Vec<String> = data["connection_details"]
        .as_object()
        .expect("connection_details")
        .values()
        .flat_map(|list| list.as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["connection_id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
}

/// The listing of one user (`/notifications/connections/{user}/` data).
pub async fn listed_user(admin_base: &str, user: &str) -> Value {
    let (status, body) = admin(
        reqwest::Method::GET,
        &format!("{admin_base}/notifications/connections/{user}/"),
        None,
    )
    .await;
    assert_eq!(status, 200, "listing of {user}: {body}");
    body["data"].clone()
}

/// The full listing (`/notifications/connections/` data).
pub async fn listing(admin_base: &str) -> Value {
    let (status, body) = admin(
        reqwest::Method::GET,
        &format!("{admin_base}/notifications/connections/"),
        None,
    )
    .await;
    assert_eq!(status, 200, "listing: {body}");
    body["data"].clone()
}

/// Waits until the node has written `n` more heartbeat rounds to the
/// registry, as seen in the listed `last_heartbeat` of `user`'s oldest
/// connection (every round rewrites it): "still so later" checks wait for
/// the writes that could undo them, not for a time.
pub async fn wait_for_heartbeat_rounds(admin_base: &str, user: &str, n: u32) {
    let beat = |data: Value| data["connections"][0]["last_heartbeat"].as_f64();
    let first = beat(listed_user(admin_base, user).await)
        .unwrap_or_else(|| panic!("{user} has no listed connection to watch heartbeats on"));
    let (last, rounds) = (std::cell::Cell::new(first), std::cell::Cell::new(0));
    let done = eventually(Duration::from_secs(5 + 3 * u64::from(n)), || {
        let (last, rounds) = (&last, &rounds);
        async move {
            if let Some(hb) = beat(listed_user(admin_base, user).await) {
                if hb > last.get() {
                    last.set(hb);
                    rounds.set(rounds.get() + 1);
                }
            }
            rounds.get() >= n
        }
    })
    .await;
    assert!(
        done,
        "{n} heartbeat rounds never reached the registry: {user}'s last_heartbeat moved {} times from {first} to {}",
        rounds.get(),
        last.get()
    );
}

/// A config for tests: ephemeral ports, short intervals.
pub fn test_config(redis_url: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.server.admin_listen = "127.0.0.1:0".into();
    c.server.node_id = format!("node-{}", uuid::Uuid::new_v4().simple());
    c.server.shutdown_grace_secs = 3;
    c.redis.url = sse_notify::config::Secret(redis_url.to_string());
    c.redis.connect_timeout_secs = 5;
    c.stream.heartbeat_secs = 1;
    c.sweep.interval_secs = 1;
    c.sweep.stale_timeout_secs = 5;
    c
}

/// What every node (in-process or binary) answers on: its two listeners.
pub trait Node {
    fn public_addr(&self) -> SocketAddr;
    fn admin_addr(&self) -> SocketAddr;

    fn stream_url(&self) -> String {
        format!("http://{}/notifications/stream/", self.public_addr())
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr(), path)
    }

    /// `http://host:port` of the admin listener.
    fn admin_base(&self) -> String {
        self.admin_url("")
    }
}

impl Node for TestNode {
    fn public_addr(&self) -> SocketAddr {
        self.public
    }

    fn admin_addr(&self) -> SocketAddr {
        self.admin
    }
}

/// A node running in this test process.
pub struct TestNode {
    pub daemon: Arc<Daemon>,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    waiter: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    pub async fn start(config: Config) -> TestNode {
        let listeners = Listeners::bind(&config).await.expect("bind");
        let backend = lifecycle::connect(&config).await.expect("engine");
        let daemon = Arc::new(
            Daemon::start(config, None, backend, listeners, None)
                .await
                .expect("start"),
        );
        let d = daemon.clone();
        let waiter = tokio::spawn(async move { d.wait().await });
        TestNode {
            public: daemon.public_addr,
            admin: match &daemon.admin_addr {
                ListenAddr::Tcp(addr) => *addr,
                unix => panic!("TestNode serves its admin API on TCP, not {unix}"),
            },
            daemon,
            waiter: Some(waiter),
        }
    }

    /// Graceful stop; returns once every task is joined.
    pub async fn stop(&mut self) {
        self.daemon.shutdown_token().cancel();
        if let Some(w) = self.waiter.take() {
            tokio::time::timeout(Duration::from_secs(15), w)
                .await
                .expect("node stops within 15s")
                .expect("wait task");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.daemon.shutdown_token().cancel();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// An admin API call: (status, parsed JSON body).
pub async fn admin(method: reqwest::Method, url: &str, body: Option<&str>) -> (u16, Value) {
    let mut req = http().request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

pub async fn send(node_admin: &str, body: Value) -> (u16, Value) {
    admin(
        reqwest::Method::POST,
        &format!("{node_admin}/notifications/send/"),
        Some(&body.to_string()),
    )
    .await
}

/// Asserts an error envelope (README "HTTP API"): that status, JSON content type,
/// `{"code": status, "message": "..."}`.
pub async fn expect_envelope(resp: reqwest::Response, status: u16, what: &str) -> Value {
    let got = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let text = tokio::time::timeout(Duration::from_secs(5), resp.text())
        .await
        .unwrap_or_else(|_| panic!("{what}: body not complete within 5s"))
        .unwrap();
    assert_eq!(got, status, "{what}: status; body {text:?}");
    assert!(
        ct.starts_with("application/json"),
        "{what}: content-type {ct:?}; body {text:?}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {text:?}"));
    assert_eq!(
        body["code"],
        serde_json::json!(status),
        "{what}: envelope {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: envelope without message: {body}"
    );
    body
}

/// A send that must succeed; its `message_id`.
pub async fn send_ok(node_admin: &str, body: Value) -> String {
    let (status, resp) = send(node_admin, body).await;
    assert_eq!(status, 200, "{resp}");
    resp["data"]["message_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no message_id in {resp}"))
        .to_string()
}

/// Waits until the registry, as the admin API lists it, holds exactly
/// `want` (connection ids, any order); panics saying what it held.
pub async fn listed_ids_become(admin_base: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let ok = eventually(Duration::from_secs(10), || {
        let want = want.clone();
        async move { listed_ids(admin_base).await == want }
    })
    .await;
    assert!(
        ok,
        "the registry never listed exactly {want:?}; it lists {:?}",
        listed_ids(admin_base).await
    );
}

/// The messages a stream's frames carried, by the ids the API answered
/// their sends with. On one sequence a frame's id is its message's. On a
/// Redis Cluster with history on, a frame's id is the stream's position
/// `{user}.{home}` and the API answers `{id}.` (a user's message) or
/// `.{id}` (a broadcast's or a topic's): each frame carries the one of its
/// two parts that is a sent message (`sent`), the part that moved since
/// the frame before when both could be.
pub fn api_ids(frame_ids: &[String], sent: &[String]) -> Vec<String> {
    api_ids_after("", frame_ids, sent)
}

/// [`api_ids`] of the frames a stream sent after `last` (the
/// `Last-Event-ID` it came back with: the position before the first).
pub fn api_ids_after(last: &str, frame_ids: &[String], sent: &[String]) -> Vec<String> {
    let mut before: Option<(&str, &str)> = last.split_once('.');
    frame_ids
        .iter()
        .map(|id| {
            let Some((user, home)) = id.split_once('.') else {
                return id.clone();
            };
            let (as_user, as_home) = (format!("{user}."), format!(".{home}"));
            let moved_user = before.is_none_or(|(u, _)| u != user);
            let moved_home = before.is_none_or(|(_, h)| h != home);
            before = Some((user, home));
            match (sent.contains(&as_user), sent.contains(&as_home)) {
                (true, false) => as_user,
                (false, true) => as_home,
                _ if moved_user && !moved_home => as_user,
                _ if moved_home && !moved_user => as_home,
                _ => id.clone(),
            }
        })
        .collect()
}

/// [`api_ids`] of one frame that is to carry the message sent as `sent`.
pub fn api_id(frame_id: &str, sent: &str) -> String {
    api_ids(&[frame_id.to_string()], &[sent.to_string()]).remove(0)
}
