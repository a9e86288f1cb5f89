//! Lifecycle of the real binary as systemd and a sysadmin drive it
//! (README "Signals and lifecycle"): signals, reload, exit codes on both engines; start-up clear,
//! sweeps of a dead node and Redis failures with the Redis engine only.
mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

// ---------------------------------------------------------------- helpers

fn ids_now(redis: &RedisServer) -> Vec<String> {
    redis.ids()
}

/// Polls until the registry in Redis holds exactly `want` (any order).
async fn registry_becomes(redis: &RedisServer, want: &[String]) -> bool {
    redis.ids_become(want).await.is_ok()
}

async fn healthz(node: &BinaryNode) -> Option<u16> {
    http()
        .get(node.admin_url("/healthz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

// ---------------------------------------------------------------- startup

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_clears_zombie_records() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let t = now();
    inject_record(
        &mut conn,
        "zombie-1",
        "alice",
        t - 100.0,
        t - 2.0,
        "dead-node",
    );
    inject_record(
        &mut conn,
        "zombie-2",
        "alice",
        t - 90.0,
        t - 2.0,
        "dead-node",
    );
    inject_record(&mut conn, "zombie-3", "bob", t - 80.0, t - 2.0, "dead-node");
    redis::cmd("SET")
        .arg("not-a-registry-key")
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();

    let node = BinaryNode::spawn(&redis.url(), "").await;
    // /healthz answers only after the start-up clear.
    assert!(
        ids_now(&redis).is_empty(),
        "zombies survive the start: {:?}",
        ids_now(&redis)
    );
    assert!(
        redis.registry_keys().is_empty(),
        "leftover registry keys: {:?}",
        redis.registry_keys()
    );
    let other: Option<String> = redis::cmd("GET")
        .arg("not-a-registry-key")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        other.as_deref(),
        Some("x"),
        "only registry keys are cleared"
    );

    // The node works normally afterwards.
    let (_tab, id) = SseClient::connect_url(&node.stream_url(), "alice").await;
    assert_eq!(ids_now(&redis), vec![id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_startup_clear_false_keeps_records() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    let t = now();
    inject_record(
        &mut conn,
        "other-1",
        "alice",
        t - 100.0,
        t - 1.0,
        "other-node",
    );
    inject_record(
        &mut conn,
        "other-2",
        "bob",
        t - 100.0,
        t - 1.0,
        "other-node",
    );

    let node = BinaryNode::spawn(&redis.url(), "[startup]\nclear = false\n").await;
    assert_eq!(ids_now(&redis), sorted(&["other-1", "other-2"]));
    let (_tab, id) = SseClient::connect_url(&node.stream_url(), "carol").await;
    assert_eq!(
        ids_now(&redis),
        sorted(&["other-1", "other-2", id.as_str()])
    );
    assert_eq!(redis.users(), sorted(&["alice", "bob", "carol"]));
}

on_every_engine! {
    async fn serve_with_an_invalid_config_exits_2_naming_the_key(env: Env) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let text = format!("[redis]\nurl = \"{}\"\n[stream]\nheartbeat_sec = 3\n", env.url());
        std::fs::write(&path, text).unwrap();
        let log = dir.path().join("log.txt");
        let mut child = spawn_serve(&path, &log);
        let code = wait_exit(&mut child, Duration::from_secs(5));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(code, Some(2), "log:\n{text}");
        assert!(text.contains("heartbeat_sec"), "names the key:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_exits_1_after_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let redis_url = format!("redis://127.0.0.1:{}/0", free_port());
    let (public, admin) = (free_addr(), free_addr());
    let cfg = write_config_at(dir.path(), &public, &admin, &redis_url, 2, "");
    let log = dir.path().join("log.txt");
    let started = Instant::now();
    let mut child = spawn_serve(&cfg, &log);
    let code = wait_exit(&mut child, Duration::from_secs(10));
    let elapsed = started.elapsed();
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(1), "exit 1 (after {elapsed:?}); log:\n{text}");
    assert!(
        elapsed >= Duration::from_millis(1500),
        "retried for redis.connect_timeout_secs = 2, gave up after {elapsed:?}; log:\n{text}"
    );
    assert!(
        elapsed <= Duration::from_secs(6),
        "gave up only after {elapsed:?} with connect_timeout_secs = 2"
    );
    assert!(
        text.to_lowercase().contains("redis"),
        "the log says why:\n{text}"
    );
}

/// systemd starts the daemon while Redis is still starting: within
/// `redis.connect_timeout_secs` (3 here) the node must wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_coming_up_within_connect_timeout_lets_serve_start() {
    let mut redis = RedisServer::start();
    redis.kill();
    let dir = tempfile::tempdir().unwrap();
    let (public, admin) = (free_addr(), free_addr());
    let cfg = write_config_at(dir.path(), &public, &admin, &redis.url(), 3, "");
    let log = dir.path().join("log.txt");
    let mut child = spawn_serve(&cfg, &log);
    // Redis comes up while the node retries, inside the 3 s window.
    let retrying = eventually(Duration::from_secs(3), || {
        let log = &log;
        async move {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("redis not reachable yet")
        }
    })
    .await;
    redis.restart();
    let health = format!("http://{admin}/healthz");
    let mut exited = None;
    let up = eventually(Duration::from_secs(6), || {
        if exited.is_none() {
            exited = child.try_wait().ok().flatten().map(|s| s.code());
        }
        let health = health.clone();
        let gone = exited.is_some();
        async move {
            gone || matches!(http().get(&health).send().await, Ok(r) if r.status().is_success())
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        up && exited.is_none(),
        "Redis came up while serve retried (retry logged: {retrying}), inside connect_timeout_secs = 3, but serve exited with {exited:?}; log:\n{text}"
    );
}

on_every_engine! {
    async fn listen_address_in_use_exits_1_with_a_message(env: Env) {
        for which in ["public", "admin"] {
            let dir = tempfile::tempdir().unwrap();
            let taken = TcpListener::bind("127.0.0.1:0").unwrap();
            let taken_addr = taken.local_addr().unwrap();
            let (public, admin) = if which == "public" {
                (taken_addr.to_string(), free_addr())
            } else {
                (free_addr(), taken_addr.to_string())
            };
            let redis_keys = env.binary_keys();
            let cfg = write_config_with(dir.path(), &public, &admin, &env.url(), 3, &redis_keys, "");
            let log = dir.path().join("log.txt");
            let mut child = spawn_serve(&cfg, &log);
            let code = wait_exit(&mut child, Duration::from_secs(8));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert_eq!(code, Some(1), "{which} address in use; log:\n{text}");
            assert!(
                text.contains(&taken_addr.port().to_string()),
                "the message names the address {taken_addr}:\n{text}"
            );
            drop(taken);
        }
    }
}

/// The binary with a config that only moves the listeners to port 0 and
/// adds `server_keys` to `[server]`; everything else is the built-in
/// defaults (the embedded engine). Returns the config's directory (kept
/// for as long as the node runs), the log, the child and its addresses.
async fn serve_on_port_0(
    server_keys: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sse-notify.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_keys}"
        ),
    )
    .unwrap();
    let log = dir.path().join("log.txt");
    let mut child = spawn_serve(&cfg, &log);
    let (public, admin_addr) = match wait_serving(&mut child, &log, Duration::from_secs(15)).await {
        Ok(a) => a,
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{why}");
        }
    };
    (dir, log, child, public, admin_addr)
}

/// The quick start on a machine with nothing installed: a config file that
/// only moves the listeners (to port 0), everything else the built-in
/// defaults, which select the embedded engine: streams open and receive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_serve_streams_and_sends_with_nothing_installed() {
    let (dir, log, mut child, public, admin_addr) = serve_on_port_0("").await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.contains("sse-notify serving") && l.contains("memory")),
        "the defaults select the embedded engine; log:\n{text}"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        text.lines()
            .any(|l| l.contains("sse-notify serving")
                && l.contains(&format!("worker_threads={cores}"))),
        "server.worker_threads = 0 runs one thread per core ({cores}); log:\n{text}"
    );
    let admin_base = format!("http://{admin_addr}");
    let (status, body) = admin(reqwest::Method::GET, &format!("{admin_base}/healthz"), None).await;
    assert_eq!((status, &body["engine"]), (200, &json!("memory")), "{body}");
    // No bus to lose: the bus-down alert must not page for this node.
    let metrics = reqwest::get(format!("{admin_base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics.lines().any(|l| l == "sse_notify_bus_up 1"),
        "the embedded engine reports its bus up:\n{metrics}"
    );

    let stream_url = format!("http://{public}/notifications/stream/");
    let (mut tab, id) = SseClient::connect_url(&stream_url, "alice").await;
    listed_ids_become(&admin_base, &[&id]).await;
    let message_id = send_ok(
        &admin_base,
        json!({"to": "alice", "data": {"hello": "world"}}),
    )
    .await;
    let ev = tab
        .next_named("message", Duration::from_secs(5))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the message never reached the stream; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    assert_eq!(
        (ev.id.as_str(), ev.data.as_str()),
        (message_id.as_str(), r#"{"hello":"world"}"#)
    );

    // The CLI needs only the admin address to send.
    let cli_cfg = dir.path().join("cli.toml");
    std::fs::write(
        &cli_cfg,
        format!("[server]\nadmin_listen = \"{admin_addr}\"\n"),
    )
    .unwrap();
    let (rc, stdout, stderr) = cli_async(&[
        "send",
        "--to",
        "alice",
        "\"from the cli\"",
        "-c",
        cli_cfg.to_str().unwrap(),
    ])
    .await;
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let ev = tab.next_named("message", Duration::from_secs(5)).await;
    assert_eq!(ev.map(|e| e.data), Some("\"from the cli\"".to_string()));

    // And it stops as systemd stops it.
    let status = std::process::Command::new("kill")
        .arg("-15")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let code = wait_exit(&mut child, Duration::from_secs(5));
    assert_eq!(
        code,
        Some(0),
        "SIGTERM: exit 0; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `server.worker_threads = 1`: the start line says so, and one thread
/// serves a stream, the admin API and delivery between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_streams_and_sends() {
    let (_dir, log, mut child, public, admin_addr) = serve_on_port_0("worker_threads = 1\n").await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.contains("sse-notify serving") && l.contains("worker_threads=1")),
        "the start line reports the one worker thread; log:\n{text}"
    );
    let admin_base = format!("http://{admin_addr}");
    let stream_url = format!("http://{public}/notifications/stream/");
    let (mut tab, id) = SseClient::connect_url(&stream_url, "alice").await;
    listed_ids_become(&admin_base, &[&id]).await;
    for n in 0..50 {
        let message_id = send_ok(&admin_base, json!({"to": "alice", "data": {"n": n}})).await;
        let ev = tab.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(
            ev.map(|e| (e.id, e.data)),
            Some((message_id, format!("{{\"n\":{n}}}"))),
            "message {n} on a one-thread node; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

// --------------------------------------------------------- SIGTERM/SIGINT

/// The start line names the engine, and so does `/healthz` (with the
/// state of Redis only when there is one).
async fn engine_is_named(env: &Env, node: &BinaryNode) {
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("sse-notify serving"))
        .unwrap_or_else(|| panic!("no start line; log:\n{log}"));
    let engine = env.engine();
    assert!(
        line.contains(&format!("engine={engine}"))
            || line.contains(&format!("engine=\"{engine}\"")),
        "the start line names engine {engine}: {line}"
    );
    let (status, body) = admin(reqwest::Method::GET, &node.admin_url("/healthz"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["engine"], engine, "/healthz: {body}");
    if env.uses_redis() {
        assert_eq!(body["redis"], "ok", "/healthz: {body}");
    } else {
        assert!(
            body.get("redis").is_none(),
            "no redis field without Redis: {body}"
        );
    }
}

async fn graceful_stop(env: Env, sig: i32) {
    let mut node = BinaryNode::on(&env, "").await;
    engine_is_named(&env, &node).await;
    let (mut a1, a1_id) = SseClient::connect_url(&node.stream_url(), "alice").await;
    let (mut a2, a2_id) = SseClient::connect_url(&node.stream_url(), "alice").await;
    let (mut b1, b1_id) = SseClient::connect_url(&node.stream_url(), "bob").await;
    assert_eq!(
        listed_ids(&node.admin_base()).await,
        sorted(&[&a1_id, &a2_id, &b1_id])
    );
    // With Redis, a record of another (live) node: not this node's to remove.
    if let Some(redis) = env.redis_server() {
        let t = now();
        inject_record(
            &mut redis.conn(),
            "other-node-conn",
            "carol",
            t - 5.0,
            t,
            "other-node",
        );
    }

    let started = Instant::now();
    node.signal(sig);
    // shutdown_grace_secs = 3 (write_config) + a margin.
    let budget = Duration::from_secs(3 + 2);
    for (name, tab) in [("a1", &mut a1), ("a2", &mut a2), ("b1", &mut b1)] {
        let left = budget.saturating_sub(started.elapsed());
        assert!(
            tab.ends_within(left).await,
            "stream {name} still open after signal {sig}; log:\n{}",
            node.log()
        );
    }
    let left = budget.saturating_sub(started.elapsed());
    let code = node.wait_exit(left.max(Duration::from_millis(100)));
    assert_eq!(
        code,
        Some(0),
        "exit 0 within the grace period after signal {sig} (waited {:?}); log:\n{}",
        started.elapsed(),
        node.log()
    );
    if let Some(redis) = env.redis_server() {
        assert_eq!(
            ids_now(redis),
            vec!["other-node-conn".to_string()],
            "this node's records are removed, the other node's stay; log:\n{}",
            node.log()
        );
        assert_eq!(redis.users(), vec!["carol".to_string()]);
        assert!(
            !redis
                .registry_keys()
                .iter()
                .any(|k| k == "sse:user:alice" || k == "sse:user:bob"),
            "no orphans: {:?}",
            redis.registry_keys()
        );
    }
    assert!(
        std::net::TcpStream::connect(node.public).is_err(),
        "public listener closed"
    );
    assert!(
        std::net::TcpStream::connect(node.admin).is_err(),
        "admin listener closed"
    );
    assert!(node.log().contains("stopped"), "log:\n{}", node.log());
    assert!(!node.log().contains("panicked"), "log:\n{}", node.log());
}

on_every_engine! {
    async fn sigterm_closes_streams_removes_records_and_exits_0(env: Env) {
        graceful_stop(env, 15).await;
    }

    async fn sigint_closes_streams_removes_records_and_exits_0(env: Env) {
        graceful_stop(env, 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_redis_outage_still_exits_0_in_time() {
    let mut redis = RedisServer::start();
    let mut node = BinaryNode::spawn(&redis.url(), "").await;
    let (mut tab, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
    redis.kill();
    let health = node.admin_url("/healthz");
    wait_until(
        Duration::from_secs(5),
        "/healthz 503 after Redis died",
        || {
            let health = health.clone();
            async move {
                matches!(http().get(&health).send().await, Ok(r) if r.status().as_u16() == 503)
            }
        },
    )
    .await;
    let started = Instant::now();
    node.signal(15);
    assert!(
        tab.ends_within(Duration::from_secs(5)).await,
        "stream ends; log:\n{}",
        node.log()
    );
    let left = Duration::from_secs(5).saturating_sub(started.elapsed());
    let code = node.wait_exit(left.max(Duration::from_millis(100)));
    assert_eq!(
        code,
        Some(0),
        "exit 0 within shutdown_grace_secs (3) + margin although Redis is down (waited {:?}); log:\n{}",
        started.elapsed(),
        node.log()
    );
}

// ----------------------------------------------------------------- SIGHUP

on_every_engine! {
    /// SIGHUP clears the registry and the node writes back its live
    /// streams: with Redis a zombie of a dead node goes; in both engines
    /// the clear is counted in the log and the live streams are listed
    /// (and receive) again.
    async fn sighup_clears_zombies_and_live_streams_are_re_registered(env: Env) {
        let mut node = BinaryNode::on(&env, "[stream]\nheartbeat_secs = 1\n").await;
        let (mut a, a_id) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (mut b, b_id) = SseClient::connect_url(&node.stream_url(), "bob").await;
        let live = sorted(&[&a_id, &b_id]);
        // A zombie with a fresh heartbeat: only a clear removes it.
        let cleared = match env.redis_server() {
            Some(redis) => {
                let t = now();
                inject_record(&mut redis.conn(), "zombie-hup", "zed", t - 50.0, t, "dead-node");
                assert_eq!(ids_now(redis), sorted(&[&a_id, &b_id, &"zombie-hup".to_string()]));
                "connections=3 users=3"
            }
            None => "connections=2 users=2",
        };

        node.signal(1);
        let counted = eventually(Duration::from_secs(5), || {
            let log = node.log();
            async move {
                log.lines().any(|l| {
                    l.contains("registry cleared") && cleared.split(' ').all(|f| l.contains(f))
                })
            }
        })
        .await;
        assert!(
            counted,
            "SIGHUP clears the registry, logging {cleared}; log:\n{}",
            node.log()
        );
        listed_ids_become(&node.admin_base(), &[&a_id, &b_id]).await;
        if let Some(redis) = env.redis_server() {
            assert!(
                registry_becomes(redis, &live).await,
                "after SIGHUP the registry must be exactly the live streams, got {:?}; log:\n{}",
                ids_now(redis),
                node.log()
            );
            assert_eq!(redis.users(), sorted(&["alice", "bob"]));
            assert!(!redis.registry_keys().iter().any(|k| k.contains("zed")));
        }

        // Still the same registry a few heartbeats later (no late zombie).
        wait_for_heartbeat_rounds(&node.admin_base(), "alice", 2).await;
        assert_eq!(listed_ids(&node.admin_base()).await, live);
        if let Some(redis) = env.redis_server() {
            assert_eq!(ids_now(redis), live);
        }

        // The streams keep receiving, and the node keeps running.
        assert!(node.still_running(), "SIGHUP must not stop the node");
        let (status, body) = send(&node.admin_url(""), json!({"to": "alice", "data": "hup-a"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["connections"], 1);
        let ev = a.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some("\"hup-a\"".to_string()));
        let (status, _) = send(&node.admin_url(""), json!({"to": "bob", "data": "hup-b"})).await;
        assert_eq!(status, 200);
        let ev = b.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some("\"hup-b\"".to_string()));
        assert_eq!(healthz(&node).await, Some(200));
    }

    async fn sighup_reloads_retry_ms_for_new_streams(env: Env) {
        let mut node = BinaryNode::on(&env, "[stream]\nretry_ms = 1500\n").await;
        let mut before = RawStream::open(&node.stream_url(), "alice").await;
        let before_id = before.established().await;
        assert_eq!(before.retry_ms(), Some(1500));

        node.edit_config("retry_ms = 1500", "retry_ms = 2500");
        node.signal(1);
        let url = node.stream_url();
        let applied = eventually(Duration::from_secs(5), || {
            let url = url.clone();
            async move {
                let mut s = RawStream::open(&url, "bob").await;
                s.established().await;
                s.retry_ms() == Some(2500)
            }
        })
        .await;
        assert!(
            applied,
            "new streams must get retry: 2500 after SIGHUP; log:\n{}",
            node.log()
        );
        assert!(node.still_running());
        // The old stream survived the reload (a full clear) and is written
        // back into the registry by its node.
        let admin = node.admin_base();
        wait_until(Duration::from_secs(5), "the old stream listed again", || async {
            listed_ids(&admin).await.contains(&before_id)
        })
        .await;
        let (status, _) = send(
            &node.admin_url(""),
            json!({"to": "alice", "data": "still-here"}),
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            before
                .wait_for("data: \"still-here\"", Duration::from_secs(5))
                .await
        );
    }

    async fn sighup_reloads_heartbeat_interval(env: Env) {
        let node = BinaryNode::on(
            &env,
            "[stream]\nheartbeat_secs = 3\n[sweep]\nstale_timeout_secs = 10\n",
        )
        .await;
        let mut s = RawStream::open(&node.stream_url(), "alice").await;
        s.established().await;

        node.edit_config("heartbeat_secs = 3", "heartbeat_secs = 1");
        node.signal(1);
        // Old cadence 3s: at most one old-interval wait, then one every second:
        // 4 heartbeats in 6.5 s (3 + 3 * 1 + margin), 8 or more at 3 s would take 12 s.
        let started = Instant::now();
        s.wait_for_heartbeats(4, Duration::from_millis(6500)).await;
        assert!(
            started.elapsed() < Duration::from_millis(6500),
            "4 heartbeats took {:?} after SIGHUP to heartbeat_secs = 1; log:\n{}",
            started.elapsed(),
            node.log()
        );
    }

    async fn sighup_with_an_invalid_file_keeps_the_old_config(env: Env) {
        let mut node = BinaryNode::on(&env, "[stream]\nretry_ms = 1500\n").await;
        let (mut tab, tab_id) = SseClient::connect_url(&node.stream_url(), "alice").await;

        // A typo, and a change that would otherwise apply.
        node.edit_config("retry_ms = 1500", "retry_ms = 2500\nheartbeat_sec = 3");
        node.signal(1);
        assert!(
            node.logged("heartbeat_sec", Duration::from_secs(5)).await,
            "the invalid file is logged, naming the key; log:\n{}",
            node.log()
        );
        assert_eq!(healthz(&node).await, Some(200));
        assert!(
            node.still_running(),
            "an invalid file must not stop the node"
        );

        // The old config is in force.
        let mut s = RawStream::open(&node.stream_url(), "bob").await;
        let s_id = s.established().await;
        assert_eq!(s.retry_ms(), Some(1500), "old retry_ms kept");

        // Still serving: the live stream is registered and receives.
        listed_ids_become(&node.admin_base(), &[&tab_id, &s_id]).await;
        let (status, _) = send(&node.admin_url(""), json!({"to": "alice", "data": 1})).await;
        assert_eq!(status, 200);
        assert!(tab
            .next_named("message", Duration::from_secs(5))
            .await
            .is_some());

        // A later SIGTERM still stops it cleanly.
        node.signal(15);
        assert_eq!(node.wait_exit(Duration::from_secs(5)), Some(0));
    }

    async fn sighup_logs_keys_that_need_a_restart_and_keeps_serving(env: Env) {
        let mut node = BinaryNode::on(&env, "").await;
        let new_public = free_addr();
        // The line of server.listen only (admin_listen ends the same way).
        node.edit_config(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"{new_public}\""),
        );
        node.signal(1);
        assert!(
            node.logged("server.listen", Duration::from_secs(5)).await,
            "names server.listen as needing a restart; log:\n{}",
            node.log()
        );
        assert!(node.still_running());
        // Still on the old address.
        let (_tab, id) = SseClient::connect_url(&node.stream_url(), "alice").await;
        assert!(listed_ids(&node.admin_base()).await.contains(&id));
    }
}

// ------------------------------------------------------------------ sweep

const SWEEPY: &str =
    "[stream]\nheartbeat_secs = 1\n[sweep]\ninterval_secs = 1\nstale_timeout_secs = 3\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_the_records_of_a_killed_node() {
    let redis = RedisServer::start();
    let survivor = BinaryNode::spawn(&redis.url(), SWEEPY).await;
    let (mut s1, s1_id) = SseClient::connect_url(&survivor.stream_url(), "alice").await;
    let (_s2, s2_id) = SseClient::connect_url(&survivor.stream_url(), "bob").await;

    let victim =
        BinaryNode::spawn(&redis.url(), &format!("{SWEEPY}[startup]\nclear = false\n")).await;
    let (_v1, v1_id) = SseClient::connect_url(&victim.stream_url(), "alice").await;
    let (_v2, v2_id) = SseClient::connect_url(&victim.stream_url(), "dora").await;
    let all = vec![s1_id.clone(), s2_id.clone(), v1_id.clone(), v2_id.clone()];
    assert!(
        registry_becomes(&redis, &all).await,
        "{:?}",
        ids_now(&redis)
    );

    victim.signal(9);
    let survivors = vec![s1_id.clone(), s2_id.clone()];
    // stale 3s + sweep every 1s + margin.
    assert!(
        registry_becomes(&redis, &survivors).await,
        "the dead node's records must be swept, the live ones kept; got {:?}; survivor log:\n{}",
        ids_now(&redis),
        survivor.log()
    );
    let mut conn = redis.conn();
    assert_eq!(redis.users(), sorted(&["alice", "bob"]));
    assert!(
        !redis.registry_keys().iter().any(|k| k.contains("dora")),
        "no orphans: {:?}",
        redis.registry_keys()
    );
    let alice: Vec<String> = redis::cmd("ZRANGE")
        .arg("sse:user:alice")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(alice, vec![s1_id.clone()]);

    // Live connections are not swept later either (stale after 3 s).
    wait_for_sweeps(&survivor.admin_base(), 4).await;
    assert_eq!(ids_now(&redis), sorted(&survivors));
    let (status, body) = send(&survivor.admin_url(""), json!({"to": "alice", "data": "x"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["connections"], 1, "{body}");
    assert!(s1
        .next_named("message", Duration::from_secs(5))
        .await
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_clears_and_the_running_node_re_registers() {
    let redis = RedisServer::start();
    let first = BinaryNode::spawn(&redis.url(), SWEEPY).await;
    let (mut a, a_id) = SseClient::connect_url(&first.stream_url(), "alice").await;
    let mut conn = redis.conn();
    let t = now();
    inject_record(&mut conn, "zombie-x", "zed", t - 50.0, t, "dead-node");

    // Default startup.clear = true.
    let second = BinaryNode::spawn(&redis.url(), SWEEPY).await;
    let (_b, b_id) = SseClient::connect_url(&second.stream_url(), "bob").await;
    let live = vec![a_id.clone(), b_id.clone()];
    assert!(
        registry_becomes(&redis, &live).await,
        "only live connections of both nodes; got {:?}; first log:\n{}",
        ids_now(&redis),
        first.log()
    );
    let (status, body) = send(&first.admin_url(""), json!({"to": "alice", "data": "y"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["connections"], 1, "{body}");
    assert!(a
        .next_named("message", Duration::from_secs(5))
        .await
        .is_some());
}

// ---------------------------------------------------------- Redis outage

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_streams_and_recovers_registrations() {
    let mut redis = RedisServer::start();
    let mut node = BinaryNode::spawn(
        &redis.url(),
        "[stream]\nheartbeat_secs = 1\n[sweep]\ninterval_secs = 1\nstale_timeout_secs = 5\n",
    )
    .await;
    let mut tab = RawStream::open(&node.stream_url(), "alice").await;
    let id = tab.established().await;
    let mut leaving = RawStream::open(&node.stream_url(), "bob").await;
    let leaving_id = leaving.established().await;
    assert_eq!(ids_now(&redis), sorted(&[&id, &leaving_id]));

    redis.kill();

    // /healthz reports it.
    let url = node.admin_url("/healthz");
    let unhealthy = eventually(Duration::from_secs(5), || {
        let url = url.clone();
        async move {
            matches!(http().get(&url).timeout(Duration::from_secs(2)).send().await,
                     Ok(r) if r.status().as_u16() == 503)
        }
    })
    .await;
    assert!(
        unhealthy,
        "/healthz must answer 503 while Redis is down; log:\n{}",
        node.log()
    );

    // The stream stays open and heartbeat comments go on.
    tab.mark_read();
    tab.wait_for_heartbeats(2, Duration::from_millis(2600))
        .await;
    assert!(!tab.ended, "stream closed during the outage");

    // send answers 503 and delivers nothing.
    let (status, body) = send(&node.admin_url(""), json!({"to": "alice", "data": "lost"})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 503, "{body}");
    // The CLI reports it as a runtime failure.
    let cfg = node.cli_config();
    let (rc, stdout, stderr) = tokio::task::spawn_blocking(move || {
        cli(&["send", "--to", "alice", "\"lost-too\"", "-c", &cfg])
    })
    .await
    .unwrap();
    assert_eq!(
        rc, 1,
        "send while Redis is down; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A client leaves during the outage: it must not come back as a zombie.
    drop(leaving);
    wait_until(
        Duration::from_secs(5),
        "the node noticed the leaving stream",
        || async { metric(&node.admin_base(), "sse_notify_live_connections").await == 1.0 },
    )
    .await;

    redis.restart();
    assert!(
        registry_becomes(&redis, std::slice::from_ref(&id)).await,
        "after Redis is back the live connection (only) is re-registered; got {:?}; log:\n{}",
        ids_now(&redis),
        node.log()
    );
    assert_eq!(redis.users(), vec!["alice".to_string()]);
    let healthy = eventually(Duration::from_secs(5), || {
        let url = url.clone();
        async move { matches!(http().get(&url).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
    assert!(healthy, "/healthz back to 200");

    let (status, body) = send(&node.admin_url(""), json!({"to": "alice", "data": "back"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 1, "{body}");
    assert!(
        tab.wait_for("data: \"back\"", Duration::from_secs(5)).await,
        "the tab receives again: {:?}",
        tab.text()
    );
    assert!(
        !tab.text().contains("\"lost\""),
        "the 503 send delivered nothing"
    );

    // Still registered after sweeps past the stale timeout (5 s):
    // heartbeats are written again.
    wait_for_sweeps(&node.admin_base(), 6).await;
    assert_eq!(ids_now(&redis), vec![id.clone()], "log:\n{}", node.log());
    assert!(node.still_running());
    assert!(!node.log().contains("panicked"), "log:\n{}", node.log());
}
