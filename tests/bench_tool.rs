//! `sse-bench`, the load test shipped for users' own deployments: each mode
//! run briefly against the real daemon binary; its JSON line is checked.

mod common;

use std::process::Command;

use common::{BinaryNode, Env, Node, RedisServer, UnixNode};
use serde_json::Value;

/// Runs `sse-bench MODE --conns 50 ... EXTRA` against `node`; returns the
/// parsed JSON line (stdout must hold exactly one).
async fn bench(node: &BinaryNode, mode: &str, extra: &[&str]) -> Value {
    let log = node.log();
    bench_at(
        (&node.stream_url(), &node.admin_url(""), node.child.id()),
        mode,
        extra,
        || log.clone(),
    )
    .await
}

/// [`bench`] against a node given as (stream URL, admin URL, pid).
async fn bench_at(
    (stream_url, admin_url, pid): (&str, &str, u32),
    mode: &str,
    extra: &[&str],
    daemon_log: impl Fn() -> String,
) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sse-bench"));
    cmd.arg(mode)
        .args(["--stream-url", stream_url])
        .args(["--admin-url", admin_url])
        .args(["--conns", "50", "--users", "50", "--settle", "0.2"])
        .args(["--server-pid", &pid.to_string()])
        .args(["--max-runtime", "25"])
        .args(extra)
        .env_remove("SSE_BENCH_API_TOKEN");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run sse-bench"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sse-bench {mode} failed: {:?}\nstdout: {stdout}\nstderr: {stderr}\ndaemon log:\n{}",
        out.status,
        daemon_log()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {stdout}");
    let v: Value = serde_json::from_str(lines[0]).expect("JSON line");
    assert_eq!(v["mode"], mode);
    assert_eq!(v["established"], 50, "{v}\n{stderr}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["ended_by_server"], 0, "{v}");
    assert!(v["connect_rate"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["server"]["rss_connected_kb"].as_u64().unwrap() > 0, "{v}");
    v
}

/// Every sent message reached every stream it was meant for, once.
fn assert_delivered(v: &Value, expected: u64) {
    let d = &v["delivery"];
    assert_eq!(d["send_errors"], 0, "{v}");
    assert_eq!(d["expected"], expected, "{v}");
    assert_eq!(d["received"], expected, "{v}");
    assert_eq!(d["lost"], 0, "{v}");
    assert_eq!(d["delivery_ratio"].as_f64(), Some(1.0), "{v}");
    assert_eq!(d["duplicates"], 0, "{v}");
    assert_eq!(d["misrouted"], 0, "{v}");
    assert_eq!(d["unknown_seq"], 0, "{v}");
    assert_eq!(
        d["e2e"]["count"].as_u64(),
        Some(d["delivered"].as_u64().unwrap())
    );
    assert!(d["e2e"]["p99_ms"].as_f64().unwrap() >= d["e2e"]["p50_ms"].as_f64().unwrap());
    assert!(d["delivered_per_sec"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test]
async fn hold_mode() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), "").await;
    let v = bench(&node, "hold", &["--duration", "1"]).await;
    assert_eq!(v["hold"]["live_end"], 50, "{v}");
    assert_eq!(v["hold"]["dropped"], 0, "{v}");
    assert_eq!(v["registry_baseline"], 0, "{v}");
    assert_eq!(v["registry_end"], 50, "{v}");
}

#[tokio::test]
async fn unicast_mode() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), "").await;
    let v = bench(
        &node,
        "unicast",
        &["--messages", "200", "--publishers", "4", "--drain", "5"],
    )
    .await;
    // one stream per user: every message has exactly one recipient
    assert_delivered(&v, 200);
    let d = &v["delivery"];
    assert_eq!(d["sends_ok"], 200, "{v}");
    assert_eq!(d["routed_by_server"], 200, "{v}");
    assert_eq!(d["routed_mismatch"], 0, "{v}");
    assert_eq!(d["extra"], 0, "{v}");
}

/// `--admin-url unix:/path`: the sends and the registry figures go over
/// the node's admin socket.
#[tokio::test]
async fn unicast_over_the_admin_socket() {
    let node = UnixNode::start(&Env::memory(), "").await;
    let admin = format!("unix:{}", node.sock.display());
    let v = bench_at(
        (&node.stream_url(), &admin, node.child.id()),
        "unicast",
        &["--messages", "100", "--publishers", "2", "--drain", "5"],
        || node.log(),
    )
    .await;
    assert_delivered(&v, 100);
    assert_eq!(v["delivery"]["sends_ok"], 100, "{v}");
    assert_eq!(
        v["registry_baseline"], 0,
        "the listing over the socket: {v}"
    );
}

#[tokio::test]
async fn broadcast_mode() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), "").await;
    let v = bench(
        &node,
        "broadcast",
        &["--broadcasts", "2", "--interval-ms", "200", "--drain", "5"],
    )
    .await;
    assert_delivered(&v, 100);
    let d = &v["delivery"];
    assert_eq!(d["routed_by_server"], 100, "{v}");
    assert_eq!(d["broadcast_completion"]["count"], 2, "{v}");
    assert_eq!(d["broadcast_incomplete"], 0, "{v}");
}

/// Streams follow topics (`--topics`: asked in `?topics=`, allowed by the
/// proxy's topics header); `topic` sends reach the followers only, each
/// once, beside broadcasts to the same streams.
#[tokio::test]
async fn topic_mode() {
    let node = BinaryNode::on(&Env::memory(), "").await;
    let follow = ["--topics", "bench,s{i},{user}:x"];
    let mut args = vec!["--topic", "bench", "--sends", "3", "--beside-broadcast"];
    args.extend(["--interval-ms", "100", "--drain", "5"]);
    args.extend(follow);
    let v = bench(&node, "topic", &args).await;
    // 3 messages to the topic and 3 broadcasts, each to the 50 streams
    assert_delivered(&v, 300);
    let d = &v["delivery"];
    assert_eq!(v["followers"], 50, "{v}");
    assert_eq!(d["routed_by_server"], 300, "{v}");
    assert_eq!(d["routed_mismatch"], 0, "{v}");
    assert_eq!(d["topic_completion"]["count"], 3, "{v}");
    assert_eq!(d["topic_incomplete"], 0, "{v}");
    assert_eq!(d["broadcast_completion"]["count"], 3, "{v}");
    assert_eq!(d["broadcast_incomplete"], 0, "{v}");

    // a topic one stream follows: the 49 others get nothing
    let mut args = vec!["--topic", "u7:x", "--sends", "2", "--interval-ms", "50"];
    args.extend(["--drain", "5"]);
    args.extend(follow);
    let v = bench(&node, "topic", &args).await;
    assert_eq!(v["followers"], 1, "{v}");
    assert_delivered(&v, 2);
    assert_eq!(v["delivery"]["routed_by_server"], 2, "{v}");
    assert_eq!(v["delivery"]["broadcast_completion"]["count"], 0, "{v}");
}

#[tokio::test]
async fn churn_mode() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), "").await;
    let v = bench(
        &node,
        "churn",
        &[
            "--duration",
            "3",
            "--reconnect-pct",
            "10",
            "--send-rate",
            "50",
            "--sample-secs",
            "1",
            "--drain",
            "1",
        ],
    )
    .await;
    let ch = &v["churn"];
    // 10 % of 50 streams every second, for 3 seconds
    assert_eq!(ch["reconnects_requested"], 15, "{v}");
    assert_eq!(ch["reconnects_done"], 15, "{v}");
    assert_eq!(ch["reconnect_failures"], 0, "{v}");
    assert_eq!(ch["errors"], 0, "{v}");
    assert_eq!(ch["live_end"], 50, "{v}");
    assert_eq!(ch["registry_end"], 50, "{v}");
    assert_eq!(ch["registry_matches_live"], true, "{v}");
    assert_eq!(ch["registry_back_to_baseline"], true, "{v}");
    // sampled between churn rounds: off by no more than one round in flight
    assert!(ch["registry_max_gap_during"].as_u64().unwrap() <= 5, "{v}");
    let d = &v["delivery"];
    let sent = d["sends_ok"].as_u64().unwrap();
    assert!(sent >= 100, "about 50 msg/s for 3 s: {v}");
    let expected = d["expected"].as_u64().unwrap();
    assert!(expected > 0 && expected <= sent, "{v}");
    assert_delivered(&v, expected);
    // the daemon logged no error while streams came and went (the only
    // warnings allowed are the start-up ones about a low open-file limit
    // and about the admin API without api.token)
    let log = node.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN") || l.contains("panicked"))
        .filter(|l| !l.contains("open-file limit") && !l.contains("api.token is empty"))
        .collect();
    assert!(bad.is_empty(), "daemon log:\n{log}");
}

#[test]
fn refuses_what_it_cannot_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_sse-bench"))
        .args([
            "hold",
            "--stream-url",
            "https://127.0.0.1:1/x",
            "--conns",
            "1",
        ])
        .args(["--admin-url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error line");
    assert!(v["error"].as_str().unwrap().contains("only http://"), "{v}");

    // nothing listens there: each is refused before a stream is opened
    let nowhere = ["--stream-url", "http://127.0.0.1:1/s/", "--admin-url"];
    for (args, why) in [
        (
            &["hold", "--topics", "ok,a b"][..],
            "--topics: \"a b\" is not a topic name",
        ),
        (
            &["topic", "--topics", "a,s{i}", "--topic", "b"][..],
            "--topic b: no stream follows it",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sse-bench"))
            .args(args)
            .args(nowhere)
            .arg("http://127.0.0.1:1")
            .args(["--conns", "3"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("JSON error line");
        assert!(v["error"].as_str().unwrap().contains(why), "{args:?}: {v}");
    }
}
