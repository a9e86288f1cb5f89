//! Redis Sentinel: the node finds the primary through a sentinel, and
//! after the primary dies and the sentinel promotes the replica, the node
//! moves there by itself: streams stay open, sends and registry work again.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_proc(args: &[&str]) -> Proc {
    Proc(
        Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"),
    )
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    cmd.query(&mut conn)
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_follows_a_sentinel_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, ps) = (free_port(), free_port(), free_port());
    let (s1, s2) = (p1.to_string(), p2.to_string());
    // Replicas write the RDB of a full sync into --dir: keep it in the tempdir.
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let common = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir_arg,
    ];
    let mut primary = Some(redis_proc(&[&["--port", &s1][..], &common].concat()));
    let _replica = redis_proc(
        &[
            &["--port", &s2, "--replicaof", "127.0.0.1", &s1][..],
            &common,
        ]
        .concat(),
    );
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {ps}\nbind 127.0.0.1\ndir {}\nsentinel monitor svc 127.0.0.1 {p1} 1\n\
             sentinel down-after-milliseconds svc 1000\nsentinel failover-timeout svc 5000\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let _sentinel = Proc(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            query::<String>(p2, redis::cmd("INFO").arg("replication"))
                .is_ok_and(|i| i.contains("master_link_status:up"))
                && query::<Option<(String, u16)>>(
                    ps,
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg("svc"),
                )
                .is_ok_and(|m| m.is_some())
                // The sentinel learns of replicas from the primary's INFO,
                // every 10 s: no failover before it knows one.
                && query::<Vec<redis::Value>>(ps, redis::cmd("SENTINEL").arg("replicas").arg("svc"))
                    .is_ok_and(|r| !r.is_empty())
        }),
        "replica and sentinel up"
    );

    let url = format!("redis+sentinel://127.0.0.1:{ps}/svc/0");
    let node = TestNode::start(test_config(&url)).await;
    let (mut tab, id) = SseClient::connect(&node, "erin").await;
    let ids: Vec<String> = query(
        p1,
        redis::cmd("ZRANGE").arg("sse:heartbeats").arg(0).arg(-1),
    )
    .unwrap();
    assert_eq!(
        ids,
        vec![id.clone()],
        "registered on the primary found through the sentinel"
    );

    // The primary dies; the sentinel promotes the replica.
    let t0 = Instant::now();
    drop(primary.take());
    assert!(
        wait_until(Duration::from_secs(20), || {
            query::<Option<(String, u16)>>(
                ps,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg("svc"),
            )
            .is_ok_and(|m| m.is_some_and(|(_, port)| port == p2))
        }),
        "sentinel promoted the replica"
    );
    let promoted = t0.elapsed();

    // The node moves to the new primary: sends work and reach the open tab.
    let mut delivered = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && delivered.is_none() {
        let (status, _) = send(
            &node.admin_url(""),
            json!({"to": "erin", "data": "after failover"}),
        )
        .await;
        if status == 200
            && tab
                .next_named("message", Duration::from_millis(500))
                .await
                .is_some()
        {
            delivered = Some(t0.elapsed());
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let delivered = delivered.expect("delivery after the failover");
    let mut registered = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !registered {
        let ids: Vec<String> = query(
            p2,
            redis::cmd("ZRANGE").arg("sse:heartbeats").arg(0).arg(-1),
        )
        .unwrap_or_default();
        registered = ids == vec![id.clone()];
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        registered,
        "the live connection is registered on the new primary"
    );
    let (status, health) = admin(reqwest::Method::GET, &node.admin_url("/healthz"), None).await;
    assert_eq!(status, 200, "{health}");
    println!(
        "sentinel failover: replica promoted {} ms after the primary died, delivery again after {} ms",
        promoted.as_millis(),
        delivered.as_millis()
    );
}
