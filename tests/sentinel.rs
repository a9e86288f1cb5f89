//! Redis Sentinel: the node finds the primary through a sentinel, and
//! after the primary dies and the sentinel promotes the replica, the node
//! moves there by itself: streams stay open, sends and registry work again.
mod common;

use std::cell::Cell;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The primary's address as the sentinel gives it.
fn primary_of(sentinel: &RedisServer) -> Option<(String, u16)> {
    sentinel
        .query::<Option<(String, u16)>>(
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("svc"),
        )
        .ok()
        .flatten()
}

fn heartbeat_ids(server: &RedisServer) -> Vec<String> {
    server
        .query(redis::cmd("ZRANGE").arg("sse:heartbeats").arg(0).arg(-1))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_follows_a_sentinel_failover() {
    let mut primary = Some(RedisServer::start());
    let first = primary.as_ref().expect("primary");
    let replica = RedisServer::replica_of(first);
    let sentinel = RedisServer::sentinel_for(first);
    assert!(
        eventually_blocking(Duration::from_secs(20), || {
            replica
                .query::<String>(redis::cmd("INFO").arg("replication"))
                .is_ok_and(|i| i.contains("master_link_status:up"))
                && primary_of(&sentinel).is_some()
                // The sentinel learns of replicas from the primary's INFO,
                // every 10 s: no failover before it knows one.
                && sentinel
                    .query::<Vec<redis::Value>>(redis::cmd("SENTINEL").arg("replicas").arg("svc"))
                    .is_ok_and(|r| !r.is_empty())
        }),
        "replica and sentinel never came up"
    );

    let node = TestNode::start(test_config(&sentinel.sentinel_url())).await;
    let (tab, id) = SseClient::connect(&node, "erin").await;
    assert_eq!(
        heartbeat_ids(first),
        vec![id.clone()],
        "registered on the primary found through the sentinel"
    );

    // The primary dies; the sentinel promotes the replica.
    let t0 = Instant::now();
    drop(primary.take());
    assert!(
        eventually_blocking(Duration::from_secs(20), || {
            primary_of(&sentinel).is_some_and(|(_, port)| port == replica.port)
        }),
        "the sentinel never promoted the replica"
    );
    let promoted = t0.elapsed();

    // The node moves to the new primary: sends work and reach the open tab.
    let delivered = Cell::new(None);
    let tab = tokio::sync::Mutex::new(tab);
    let admin_base = node.admin_base();
    wait_until(
        Duration::from_secs(15),
        "delivery after the failover",
        || {
            let (admin_base, tab, delivered) = (&admin_base, &tab, &delivered);
            async move {
                let (status, _) =
                    send(admin_base, json!({"to": "erin", "data": "after failover"})).await;
                let got = status == 200
                    && tab
                        .lock()
                        .await
                        .next_named("message", Duration::from_millis(500))
                        .await
                        .is_some();
                if got {
                    delivered.set(Some(t0.elapsed()));
                }
                got
            }
        },
    )
    .await;
    let delivered = delivered.get().unwrap_or_default();
    wait_until(
        Duration::from_secs(10),
        "the live connection registered on the new primary",
        || {
            let ok = heartbeat_ids(&replica) == vec![id.clone()];
            async move { ok }
        },
    )
    .await;
    let (status, health) = admin(reqwest::Method::GET, &node.admin_url("/healthz"), None).await;
    assert_eq!(status, 200, "{health}");
    println!(
        "sentinel failover: replica promoted {} ms after the primary died, delivery again after {} ms",
        promoted.as_millis(),
        delivered.as_millis()
    );
}
