//! Test harness: a private `redis-server` on a free port, nodes started
//! in-process or as the real binary, an SSE client built on a real parser
//! (`eventsource-stream`), and admin API helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use sse_notify::config::Config;
use sse_notify::lifecycle::{self, Daemon, Listeners};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `redis-server` of the test's own, never the shared one on 6379.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// A blocking connection for assertions on the keys.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }

    /// SIGKILL: an outage, not a clean stop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The engine a contract test runs on: the embedded one, or Redis on a
/// `redis-server` of the test's own.
pub struct Env {
    redis: Option<RedisServer>,
}

impl Env {
    pub fn memory() -> Env {
        Env { redis: None }
    }

    pub fn redis() -> Env {
        Env {
            redis: Some(RedisServer::start()),
        }
    }

    /// `redis.url` for this engine ("" selects the embedded one).
    pub fn url(&self) -> String {
        self.redis
            .as_ref()
            .map(RedisServer::url)
            .unwrap_or_default()
    }

    /// [`test_config`] on this engine.
    pub fn config(&self) -> Config {
        test_config(&self.url())
    }

    pub fn engine(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// The Redis server, for the checks of the Redis layout that only the
    /// Redis engine has.
    pub fn redis_server(&self) -> Option<&RedisServer> {
        self.redis.as_ref()
    }
}

/// Runs each scenario `async fn name(env: Env) { ... }` as two tests,
/// `name::memory` and `name::redis`: the contract is the same in both
/// engines.
#[macro_export]
macro_rules! on_both_engines {
    ($($(#[$meta:meta])* async fn $name:ident($env:ident: Env) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn scenario($env: $crate::common::Env) $body

            #[tokio::test]
            async fn memory() {
                scenario($crate::common::Env::memory()).await
            }

            #[tokio::test]
            async fn redis() {
                scenario($crate::common::Env::redis()).await
            }
        }
    )*};
}

/// The connection ids the registry holds, as the admin API lists them
/// (what a user checks, whichever the engine); sorted.
pub async fn listed_ids(admin_base: &str) -> Vec<String> {
    let (status, body) = admin(
        reqwest::Method::GET,
        &format!("{admin_base}/notifications/connections/"),
        None,
    )
    .await;
    assert_eq!(status, 200, "listing: {body}");
    let mut ids: Vec<String> = body["data"]["connection_details"]
        .as_object()
        .expect("connection_details")
        .values()
        .flat_map(|list| list.as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["connection_id"].as_str().map(String::from))
        .collect();
    ids.sort();
    ids
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
            admin: daemon.admin_addr,
            daemon,
            waiter: Some(waiter),
        }
    }

    pub fn stream_url(&self) -> String {
        format!("http://{}/notifications/stream/", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
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

/// One SSE stream, parsed by `eventsource-stream`.
pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
}

impl SseClient {
    /// Opens a stream with the given extra headers; panics on transport errors.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> SseClient {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut req = client.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("stream request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let events = resp
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        SseClient {
            status,
            headers,
            events: Box::pin(events),
        }
    }

    /// Opens a stream as `user` (header auth from loopback) and returns it
    /// with its connection id, after `connection_established`.
    pub async fn connect(node: &TestNode, user: &str) -> (SseClient, String) {
        Self::connect_url(&node.stream_url(), user).await
    }

    pub async fn connect_url(url: &str, user: &str) -> (SseClient, String) {
        let mut c = SseClient::open(url, &[("X-Remote-User", user)]).await;
        assert_eq!(c.status, 200, "stream for {user}");
        let ev = c
            .next_event(Duration::from_secs(5))
            .await
            .expect("first event");
        assert_eq!(ev.event, "connection_established");
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        let id = data["connection_id"].as_str().unwrap().to_string();
        (c, id)
    }

    /// The next event, or None on timeout or end of stream.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        match tokio::time::timeout(within, self.events.next()).await {
            Ok(Some(Ok(ev))) => Some(ev),
            _ => None,
        }
    }

    /// The next event that is not `filter`ed out, or None.
    pub async fn next_named(&mut self, name: &str, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_event(left).await?;
            if ev.event == name {
                return Some(ev);
            }
        }
    }

    /// True when the server ends the stream within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.next()).await {
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real binary, as a sysadmin runs it.
pub struct BinaryNode {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sse-notify")
}

/// Writes a config file whose ports are free and whose Redis is `redis_url`;
/// `extra` is appended (more TOML sections).
pub fn write_config(dir: &Path, redis_url: &str, extra: &str) -> (PathBuf, SocketAddr, SocketAddr) {
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.join("sse-notify.toml");
    let text = format!(
        "[server]\nlisten = \"{public}\"\nadmin_listen = \"{admin}\"\nnode_id = \"bin-{}\"\nshutdown_grace_secs = 3\n\n[redis]\nurl = \"{redis_url}\"\nconnect_timeout_secs = 3\n\n{extra}\n",
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, text).unwrap();
    (path, public, admin)
}

impl BinaryNode {
    /// `sse-notify serve -c FILE`, waiting until /healthz answers.
    pub async fn spawn(redis_url: &str, extra: &str) -> BinaryNode {
        Self::spawn_in(Command::new(bin()), redis_url, extra).await
    }

    /// The same, with an open-file limit (soft and hard) of `nofile`
    /// (through util-linux's `prlimit`, which execs the daemon in place).
    pub async fn spawn_with_nofile(redis_url: &str, extra: &str, nofile: u32) -> BinaryNode {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(bin());
        Self::spawn_in(cmd, redis_url, extra).await
    }

    async fn spawn_in(mut cmd: Command, redis_url: &str, extra: &str) -> BinaryNode {
        let dir = tempfile::tempdir().unwrap();
        let (config_path, public, admin) = write_config(dir.path(), redis_url, extra);
        let log_path = dir.path().join("log.txt");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = cmd
            .args(["serve", "-c"])
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn sse-notify");
        let node = BinaryNode {
            child,
            public,
            admin,
            config_path,
            log_path,
            _dir: dir,
        };
        let url = format!("http://{admin}/healthz");
        let up = eventually(Duration::from_secs(15), || {
            let url = url.clone();
            async move { matches!(http().get(&url).send().await, Ok(r) if r.status().is_success()) }
        })
        .await;
        assert!(up, "sse-notify did not come up; log:\n{}", node.log());
        node
    }

    pub fn stream_url(&self) -> String {
        format!("http://{}/notifications/stream/", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY-free: kill(2) through the command line tool.
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for BinaryNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/metrics` text of a node's admin listener at `admin_base`
/// (`http://host:port`); panics unless it answers 200.
pub async fn metrics_text(admin_base: &str) -> String {
    let resp = http()
        .get(format!("{admin_base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.unwrap()
}

/// Runs a CLI subcommand of the real binary: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("SSE_NOTIFY_CONFIG")
        .output()
        .expect("run sse-notify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every key of the registry (for zombie checks).
pub fn registry_ids(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{prefix}:heartbeats"))
        .arg(0)
        .arg(-1)
        .query(conn)
        .unwrap();
    ids.sort();
    ids
}

/// Writes one connection record the way SPEC 4 lays it out (all its keys).
pub fn inject_record(
    conn: &mut redis::Connection,
    id: &str,
    user: &str,
    connection_time: f64,
    last_heartbeat: f64,
    node_id: &str,
) {
    let ct = format!("{connection_time:.6}");
    let hb = format!("{last_heartbeat:.6}");
    redis::pipe()
        .atomic()
        .hset_multiple(
            format!("sse:conn:{id}"),
            &[
                ("connection_id", id),
                ("username", user),
                ("connection_time", ct.as_str()),
                ("last_heartbeat", hb.as_str()),
                ("node_id", node_id),
            ],
        )
        .ignore()
        .zadd(format!("sse:user:{user}"), id, ct.as_str())
        .ignore()
        .sadd("sse:users", user)
        .ignore()
        .zadd("sse:heartbeats", id, hb.as_str())
        .ignore()
        .query::<()>(conn)
        .unwrap();
}

/// A raw SSE stream: every byte the server sends, comments included.
pub struct RawStream {
    pub text: String,
    pub seen: usize,
    pub ended: bool,
    body: std::pin::Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>> + Send>>,
}

impl RawStream {
    pub async fn open(url: &str, user: &str) -> RawStream {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let resp = client
            .get(url)
            .header("X-Remote-User", user)
            .send()
            .await
            .expect("stream request");
        assert_eq!(resp.status().as_u16(), 200, "stream for {user}");
        let body = resp
            .bytes_stream()
            .map(|r| r.map(|b| b.to_vec()).map_err(|e| e.to_string()));
        RawStream {
            text: String::new(),
            seen: 0,
            ended: false,
            body: Box::pin(body),
        }
    }

    /// Reads until the unread text contains `needle` (then marks everything
    /// up to and including it as read), or `within` passes.
    pub async fn wait_for(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(pos) = self.text[self.seen..].find(needle) {
                self.seen += pos + needle.len();
                return true;
            }
            if self.ended {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(Ok(bytes))) => self.text.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
                Err(_) => return false,
            }
        }
    }

    /// Everything that arrives during `d` (unread text included).
    pub async fn read_for(&mut self, d: Duration) -> String {
        let deadline = Instant::now() + d;
        while !self.ended {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.body.next()).await {
                Ok(Some(Ok(bytes))) => self.text.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Some(Err(_))) | Ok(None) => self.ended = true,
                Err(_) => break,
            }
        }
        let out = self.text[self.seen..].to_string();
        self.seen = self.text.len();
        out
    }

    /// The connection id of `connection_established`.
    pub async fn established(&mut self) -> String {
        assert!(
            self.wait_for(
                "event: connection_established\ndata: ",
                Duration::from_secs(5)
            )
            .await,
            "no connection_established in {:?}",
            self.text
        );
        assert!(self.wait_for("\n", Duration::from_secs(5)).await);
        let start = self.text[..self.seen - 1]
            .rfind("data: ")
            .expect("data line")
            + 6;
        let data: Value = serde_json::from_str(&self.text[start..self.seen - 1]).unwrap();
        data["connection_id"].as_str().unwrap().to_string()
    }

    /// The value of the first `retry:` field.
    pub fn retry_ms(&self) -> Option<u64> {
        let line = self.text.lines().find(|l| l.starts_with("retry:"))?;
        line["retry:".len()..].trim().parse().ok()
    }
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
