//! Several nodes on one Redis: delivery, closes and clears reach every node.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn messages_reach_tabs_on_every_node_exactly_once() {
    reach_every_node_once(true).await;
}

/// Without history the sender delivers to its own streams and publishes
/// single events for the others (with history, batches of kept messages
/// travel as one event): both must reach every node the same way.
#[tokio::test]
async fn without_history_messages_reach_tabs_on_every_node_exactly_once() {
    reach_every_node_once(false).await;
}

async fn reach_every_node_once(history: bool) {
    let redis = RedisServer::start();
    let config = || {
        let mut c = test_config(&redis.url());
        c.history.enabled = history;
        c
    };
    let a = TestNode::start(config()).await;
    let (mut a1, a1_id) = SseClient::connect(&a, "alice").await;
    // b's startup clear wipes a's records; a re-registers over the bus.
    let b = TestNode::start(config()).await;
    let (mut b1, b1_id) = SseClient::connect(&b, "alice").await;
    let (mut bob, bob_id) = SseClient::connect(&b, "bob").await;
    let mut conn = redis.conn();
    let mut expected = [a1_id, b1_id, bob_id];
    expected.sort();
    assert!(
        eventually(WAIT, || {
            let ids = registry_ids(&mut conn, "sse");
            let same = ids == expected;
            async move { same }
        })
        .await,
        "registry holds exactly the 3 live connections after b's startup clear"
    );

    // Posted to a: alice's tab on a and on b, once each.
    let (status, body) = send(&a.admin_url(""), json!({"to": "alice", "data": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 2);
    for tab in [&mut a1, &mut b1] {
        let ev = tab.next_named("message", WAIT).await.expect("message");
        assert_eq!(ev.data, "\"hi\"");
    }

    // Broadcast posted to b: every tab of every node, once.
    let (status, body) = send(&b.admin_url(""), json!({"data": 7, "event": "news"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 3);
    for tab in [&mut a1, &mut b1, &mut bob] {
        let ev = tab.next_event(WAIT).await.expect("broadcast");
        assert_eq!((ev.event.as_str(), ev.data.as_str()), ("news", "7"));
    }
    // No duplicate follows on any tab: a later broadcast from the other
    // node is the next thing each tab sees.
    let (status, _) = send(&a.admin_url(""), json!({"data": "after-news"})).await;
    assert_eq!(status, 200);
    for tab in [&mut a1, &mut b1, &mut bob] {
        let dup = tab.events_before("after-news", WAIT).await;
        assert!(dup.is_empty(), "unexpected second event {dup:?}");
    }

    // first connection only: the oldest is a1, held by a; posted to b.
    let (status, body) = send(
        &b.admin_url(""),
        json!({"to": "alice", "data": 1, "all_connections": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 1);
    assert!(a1.next_named("message", WAIT).await.is_some());
    let (status, _) = send(
        &a.admin_url(""),
        json!({"to": "alice", "data": "after-first"}),
    )
    .await;
    assert_eq!(status, 200);
    let early = b1.events_before("after-first", WAIT).await;
    assert!(
        early.is_empty(),
        "the newer tab got a first-connection message: {early:?}"
    );

    // Logout posted to b closes alice's streams on a and b; bob stays.
    let (status, body) = admin(
        reqwest::Method::DELETE,
        &b.admin_url("/notifications/connections/alice/"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connection_count"], 2);
    assert!(a1.ends_within(WAIT).await, "a's alice stream closed");
    assert!(b1.ends_within(WAIT).await, "b's alice stream closed");
    let (status, _) = send(&a.admin_url(""), json!({"to": "bob", "data": 2})).await;
    assert_eq!(status, 200);
    assert!(bob.next_named("message", WAIT).await.is_some());
}

#[tokio::test]
async fn per_user_limit_evicts_the_oldest_wherever_it_is() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    config.limits.max_connections_per_user = 2;
    let a = TestNode::start(config.clone()).await;
    let (mut oldest, oldest_id) = SseClient::connect(&a, "carol").await;
    let mut config_b = test_config(&redis.url());
    config_b.limits.max_connections_per_user = 2;
    config_b.startup.clear = false;
    let b = TestNode::start(config_b).await;
    let (mut second, _) = SseClient::connect(&b, "carol").await;
    let (_third, third_id) = SseClient::connect(&b, "carol").await;

    let ev = oldest
        .next_named("evicted", WAIT)
        .await
        .expect("evicted notice");
    let data: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["connection_id"], oldest_id.as_str());
    assert_eq!(data["reason"], "max_connections_per_user");
    assert!(oldest.ends_within(WAIT).await);
    let (status, _) = send(
        &a.admin_url(""),
        json!({"to": "carol", "data": "after-evict"}),
    )
    .await;
    assert_eq!(status, 200);
    let early = second.events_before("after-evict", WAIT).await;
    assert!(early.is_empty(), "a kept tab was told something: {early:?}");

    let (status, body) = admin(
        reqwest::Method::GET,
        &a.admin_url("/notifications/connections/carol/"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["connection_count"], 2, "{body}");
    let ids = body["data"]["connection_ids"].as_array().unwrap();
    assert!(!ids.iter().any(|i| i == oldest_id.as_str()));
    assert!(ids.iter().any(|i| i == third_id.as_str()));
}

#[tokio::test]
async fn killed_bus_subscription_is_rebuilt_and_delivery_resumes() {
    let redis = RedisServer::start();
    let a = TestNode::start(test_config(&redis.url())).await;
    let mut config_b = test_config(&redis.url());
    config_b.startup.clear = false;
    let b = TestNode::start(config_b).await;
    let (mut tab, _) = SseClient::connect(&b, "dora").await;

    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.conn())
        .unwrap();
    // One subscription per node; under heavy load a node may be between
    // two subscriptions (missed probes) at this very moment.
    assert!(
        (1..=2).contains(&killed),
        "one bus subscription per node: {killed}"
    );

    // Posted to a, the tab lives on b: it needs b's bus to be back.
    let mut delivered = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && !delivered {
        let (status, _) = send(&a.admin_url(""), json!({"to": "dora", "data": "ping"})).await;
        // 503 while a's own bus is being rebuilt: nothing was sent.
        assert!(status == 200 || status == 503, "{status}");
        delivered = tab
            .next_named("message", Duration::from_millis(500))
            .await
            .is_some();
    }
    assert!(
        delivered,
        "delivery across nodes resumed after CLIENT KILL TYPE pubsub"
    );
    let (status, health) = admin(reqwest::Method::GET, &b.admin_url("/healthz"), None).await;
    assert_eq!(
        (status, health["bus"].as_str()),
        (200, Some("ok")),
        "{health}"
    );
    let metrics = metrics_text(&b.admin_url("")).await;
    let resubscribes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sse_notify_bus_resubscribes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(resubscribes >= 1, "{metrics}");
}

#[tokio::test]
async fn two_nodes_with_the_same_node_id_still_hear_each_other() {
    // Containers cloned from one image often share a hostname.
    let redis = RedisServer::start();
    let config = test_config(&redis.url());
    let a = TestNode::start(config.clone()).await;
    let mut config_b = config;
    config_b.startup.clear = false;
    let b = TestNode::start(config_b).await;
    let (mut tab, _) = SseClient::connect(&b, "gina").await;
    let (status, _) = send(&a.admin_url(""), json!({"to": "gina", "data": 1})).await;
    assert_eq!(status, 200);
    assert!(tab.next_named("message", WAIT).await.is_some());
}
