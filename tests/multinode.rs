//! Several real `sse-notify` processes sharing one `redis-server`: what a
//! user of a multi-node deployment checks (README "The stream", "HTTP API", "Redis layout", "Signals and lifecycle", "Limits"). The in-process
//! versions are in `tests/nodes.rs`; these run the binary.
mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);
/// How long a tab must stay silent to count as "no duplicate".
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------- helpers

async fn healthz(node: &BinaryNode) -> Option<(u16, Value)> {
    let resp = http()
        .get(node.admin_url("/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

fn logs(nodes: &[(&str, &BinaryNode)]) -> String {
    nodes
        .iter()
        .map(|(name, n)| format!("--- log of node {name}:\n{}", n.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints the nodes' logs when the test fails anywhere (a panic inside a
/// harness helper too).
struct LogsOnPanic<'a>(&'a [(&'a str, &'a BinaryNode)]);

impl Drop for LogsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", logs(self.0));
        }
    }
}

fn assert_no_panic(nodes: &[(&str, &BinaryNode)]) {
    for (name, n) in nodes {
        let log = n.log();
        assert!(
            !log.contains("panicked"),
            "node {name} panicked; log:\n{log}"
        );
    }
}

/// Expects `message_id`'s event on `tab` and then nothing for `QUIET`.
async fn receives_once(tab: &mut SseClient, name: &str, message_id: &str, event: &str, data: &str) {
    let ev = tab
        .next_event(WAIT)
        .await
        .unwrap_or_else(|| panic!("tab {name}: no {event} {data} within {WAIT:?}"));
    assert_eq!(
        (ev.id.as_str(), ev.event.as_str(), ev.data.as_str()),
        (message_id, event, data),
        "tab {name}"
    );
    let extra = tab.next_event(QUIET).await;
    assert!(
        extra.is_none(),
        "tab {name}: a second event followed: {extra:?}"
    );
}

async fn receives_nothing(tab: &mut SseClient, name: &str) {
    let ev = tab.next_event(QUIET).await;
    assert!(ev.is_none(), "tab {name} must receive nothing, got {ev:?}");
}

// ------------------------------------------------------------- 1. delivery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_across_three_processes_exactly_once() {
    let redis = RedisServer::start();
    let open = "[auth]\npublic_topics = [\"*\"]\n";
    // Following doc:1: alice's tabs on A and B, and bob's.
    let doc = |n: &BinaryNode| format!("{}?topics=doc:1", n.stream_url());
    let a = BinaryNode::spawn(&redis.url(), open).await;
    let (mut a1, a1_id) = SseClient::connect_url(&doc(&a), "alice").await;
    let b = BinaryNode::spawn(&redis.url(), &format!("{open}[startup]\nclear = false\n")).await;
    let (mut b1, b1_id) = SseClient::connect_url(&doc(&b), "alice").await;
    let (mut bob, bob_id) = SseClient::connect_url(&doc(&b), "bob").await;
    // C starts with the default startup clear, after A and B have tabs:
    // both must re-register theirs (keeping their connection times and
    // their topics).
    let c = BinaryNode::spawn(&redis.url(), open).await;
    let (mut c1, c1_id) = SseClient::connect_url(&c.stream_url(), "alice").await;
    let all = [&a, &b, &c];
    let named = [("A", &a), ("B", &b), ("C", &c)];
    let _logs = LogsOnPanic(&named);

    let want = RedisRegistry::of(&[
        ("alice", &a1_id),
        ("alice", &b1_id),
        ("bob", &bob_id),
        ("alice", &c1_id),
    ])
    .following(&a1_id, &["doc:1"])
    .following(&b1_id, &["doc:1"])
    .following(&bob_id, &["doc:1"]);
    if let Err(got) = redis.registry_becomes(&want).await {
        panic!(
            "after C's startup clear the registry must be exactly the 4 live tabs, alice's oldest first\nwant {want:?}\ngot  {got:?}\n{}",
            logs(&named)
        );
    }
    for n in all {
        let (status, body) = admin(
            reqwest::Method::GET,
            &n.admin_url("/notifications/connections/alice/"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["data"]["connection_ids"],
            json!([a1_id, b1_id, c1_id]),
            "alice's connections, oldest first: {body}"
        );
    }

    // Posted to A, to alice: her tab on each node, once.
    let (status, body) = send(&a.admin_url(""), json!({"to": "alice", "data": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 3, "{body}");
    let mid = body["data"]["message_id"].as_str().unwrap().to_string();
    for (name, tab) in [("a1", &mut a1), ("b1", &mut b1), ("c1", &mut c1)] {
        receives_once(tab, name, &mid, "message", "\"hi\"").await;
    }
    receives_nothing(&mut bob, "bob").await;

    // all_connections: false, posted to C: only the oldest tab (on A).
    let (status, body) = send(
        &c.admin_url(""),
        json!({"to": "alice", "data": {"n": 1}, "all_connections": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 1, "{body}");
    assert_eq!(body["data"]["all_connections"], false, "{body}");
    let mid = body["data"]["message_id"].as_str().unwrap().to_string();
    receives_once(&mut a1, "a1", &mid, "message", "{\"n\":1}").await;
    for (name, tab) in [("b1", &mut b1), ("c1", &mut c1), ("bob", &mut bob)] {
        receives_nothing(tab, name).await;
    }

    // Broadcast posted to B: all 4 tabs, once.
    let (status, body) = send(&b.admin_url(""), json!({"data": [7], "event": "news"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 4, "{body}");
    assert_eq!(body["data"]["to"], Value::Null, "{body}");
    let mid = body["data"]["message_id"].as_str().unwrap().to_string();
    for (name, tab) in [
        ("a1", &mut a1),
        ("b1", &mut b1),
        ("bob", &mut bob),
        ("c1", &mut c1),
    ] {
        receives_once(tab, name, &mid, "news", "[7]").await;
    }

    // To doc:1, posted to C, which holds no follower: its 3 followers on
    // A and B, once; alice's tab on C, which does not follow it, nothing.
    let (status, body) = send(&c.admin_url(""), json!({"topic": "doc:1", "data": 8})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 3, "{body}");
    let mid = body["data"]["message_id"].as_str().unwrap().to_string();
    for (name, tab) in [("a1", &mut a1), ("b1", &mut b1), ("bob", &mut bob)] {
        receives_once(tab, name, &mid, "message", "8").await;
    }
    receives_nothing(&mut c1, "c1").await;

    // Logout posted to C: alice's streams on A, B and C close; bob stays.
    let (status, body) = admin(
        reqwest::Method::DELETE,
        &c.admin_url("/notifications/connections/alice/"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let deleted = body;
    for (name, tab) in [("a1", &mut a1), ("b1", &mut b1), ("c1", &mut c1)] {
        assert!(
            tab.ends_within(WAIT).await,
            "alice's stream {name} still open after DELETE on C\n{}",
            logs(&named)
        );
    }
    let want = RedisRegistry::of(&[("bob", &bob_id)]).following(&bob_id, &["doc:1"]);
    if let Err(got) = redis.registry_becomes(&want).await {
        panic!("after alice's logout only bob stays\nwant {want:?}\ngot  {got:?}");
    }
    for (name, n) in named {
        let (status, body) = send(&n.admin_url(""), json!({"to": "bob", "data": name})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["connections"], 1, "{body}");
        let mid = body["data"]["message_id"].as_str().unwrap().to_string();
        receives_once(&mut bob, "bob", &mid, "message", &format!("\"{name}\"")).await;
    }
    assert_no_panic(&named);
    // README "HTTP API": the response counts the records removed, like the clear:
    // alice's 3, of 1 user, wherever they were held.
    assert_eq!(
        deleted["data"],
        json!({"connection_count": 3, "user_count": 1}),
        "DELETE connections/alice/ on C removed alice's 3 records (on A, B and C)\n{}",
        logs(&named)
    );
}

// ------------------------------------------------------ 2. clear + zombies

/// Starts a node that keeps the registry (`startup.clear = false`), opens
/// one tab per user on it, waits until they are registered and SIGKILLs it:
/// its records are zombies now.
async fn zombie_node(redis: &RedisServer, users: &[&str]) -> Vec<String> {
    let mut node = BinaryNode::spawn(&redis.url(), "[startup]\nclear = false\n").await;
    let mut tabs = Vec::new();
    let mut ids = Vec::new();
    for user in users {
        let (tab, id) = SseClient::connect_url(&node.stream_url(), user).await;
        tabs.push(tab);
        ids.push(id);
    }
    let registered = eventually(WAIT, || {
        let now = redis.ids();
        let ok = ids.iter().all(|id| now.contains(id));
        async move { ok }
    })
    .await;
    assert!(registered, "the tabs of the node to kill are registered");
    node.signal(9);
    let status = node.child.wait().expect("wait for the killed node");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    for tab in &mut tabs {
        assert!(tab.ends_within(WAIT).await, "a killed node's stream ends");
    }
    // Nobody removed them: stale_timeout_secs is the default 300.
    let now = redis.ids();
    assert!(
        ids.iter().all(|id| now.contains(id)),
        "the killed node's records stay as zombies: {now:?} vs {ids:?}"
    );
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_clear_with_a_sigkilled_node_leaves_only_live_connections() {
    let redis = RedisServer::start();
    let a = BinaryNode::spawn(&redis.url(), "").await;
    let (mut a_alice, a_alice_id) = SseClient::connect_url(&a.stream_url(), "alice").await;
    let (_a_bob, a_bob_id) = SseClient::connect_url(&a.stream_url(), "bob").await;
    let b = BinaryNode::spawn(&redis.url(), "[startup]\nclear = false\n").await;
    let (mut b_alice, b_alice_id) = SseClient::connect_url(&b.stream_url(), "alice").await;
    let (_b_carol, b_carol_id) = SseClient::connect_url(&b.stream_url(), "carol").await;
    let named = [("A", &a), ("B", &b)];
    let _logs = LogsOnPanic(&named);
    let live = RedisRegistry::of(&[
        ("alice", &a_alice_id),
        ("bob", &a_bob_id),
        ("alice", &b_alice_id),
        ("carol", &b_carol_id),
    ]);
    let cfg = b.cli_config();

    for how in [
        "POST connections/ on A",
        "sse-notify clear --force",
        "SIGHUP to B",
    ] {
        // Node C: alice (a user with live tabs elsewhere too) and dora
        // (only on C), SIGKILLed.
        let zombies = zombie_node(&redis, &["alice", "dora"]).await;
        let mut with_zombies: Vec<String> = live.heartbeats.clone();
        with_zombies.extend(zombies.iter().cloned());
        assert_eq!(
            redis.ids(),
            sorted(&with_zombies),
            "before the clear ({how})"
        );

        match how {
            "POST connections/ on A" => {
                let (status, body) = admin(
                    reqwest::Method::POST,
                    &a.admin_url("/notifications/connections/"),
                    None,
                )
                .await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(
                    body["data"],
                    json!({"connection_count": 6, "user_count": 4}),
                    "records removed: 4 live + 2 zombies of alice, bob, carol, dora"
                );
            }
            "sse-notify clear --force" => {
                let cfg = cfg.clone();
                let (rc, stdout, stderr) =
                    tokio::task::spawn_blocking(move || cli(&["clear", "--force", "-c", &cfg]))
                        .await
                        .unwrap();
                assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
                assert!(
                    stdout.contains("removed 6 connections of 4 users"),
                    "stdout:\n{stdout}\nstderr:\n{stderr}"
                );
            }
            _ => b.signal(1),
        }

        if let Err(got) = redis.registry_becomes(&live).await {
            panic!(
                "after {how} the registry must be exactly the live connections of A and B, no record of the killed node\nwant {live:?}\ngot  {got:?}\n{}",
                logs(&named)
            );
        }

        // The live tabs still receive, wherever the send is posted.
        for (name, n) in named {
            let (status, body) = send(&n.admin_url(""), json!({"to": "alice", "data": how})).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["data"]["connections"], 2, "after {how}: {body}");
            let mid = body["data"]["message_id"].as_str().unwrap().to_string();
            let data = serde_json::to_string(how).unwrap();
            receives_once(
                &mut a_alice,
                &format!("A alice, posted to {name}"),
                &mid,
                "message",
                &data,
            )
            .await;
            receives_once(
                &mut b_alice,
                &format!("B alice, posted to {name}"),
                &mid,
                "message",
                &data,
            )
            .await;
        }
    }
    for n in [&a, &b] {
        assert_eq!(healthz(n).await.map(|h| h.0), Some(200));
    }
    assert_no_panic(&named);
}

// ---------------------------------------------------------- 3. Redis restart

const FAST: &str =
    "[stream]\nheartbeat_secs = 1\n[sweep]\ninterval_secs = 1\nstale_timeout_secs = 5\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_two_nodes_recovers_delivery_across_nodes() {
    let mut redis = RedisServer::start();
    let a = BinaryNode::spawn(&redis.url(), FAST).await;
    let b = BinaryNode::spawn(&redis.url(), &format!("{FAST}[startup]\nclear = false\n")).await;
    let named = [("A", &a), ("B", &b)];
    let _logs = LogsOnPanic(&named);
    let mut tab_a = RawStream::open(&a.stream_url(), "alice").await;
    let tab_a_id = tab_a.established().await;
    let mut tab_b = RawStream::open(&b.stream_url(), "bob").await;
    let tab_b_id = tab_b.established().await;
    // A tab on B that leaves during the outage must not come back.
    let mut leaving = RawStream::open(&b.stream_url(), "carol").await;
    let leaving_id = leaving.established().await;
    assert!(
        redis
            .ids_become(&[&tab_a_id, &tab_b_id, &leaving_id])
            .await
            .is_ok(),
        "{:?}",
        redis.ids()
    );

    redis.kill();
    let down_at = Instant::now();

    for (name, n) in named {
        let unhealthy = eventually(WAIT, || async {
            matches!(healthz(n).await, Some((503, _)))
        })
        .await;
        assert!(
            unhealthy,
            "/healthz of {name} must be 503 while Redis is down\n{}",
            logs(&named)
        );
    }
    // Sends answer 503 on both nodes (and deliver nothing, checked below).
    for (name, n) in named {
        for to in ["alice", "bob"] {
            let (status, body) = send(&n.admin_url(""), json!({"to": to, "data": "lost"})).await;
            assert_eq!(
                (status, &body["code"]),
                (503, &json!(503)),
                "send on {name}: {body}"
            );
        }
    }
    drop(leaving);
    // Both streams stay open, heartbeat comments go on.
    tab_a.mark_read();
    tab_b.mark_read();
    let (during_a, during_b) = tokio::join!(
        tab_a.wait_for_heartbeats(2, Duration::from_millis(2500)),
        tab_b.wait_for_heartbeats(2, Duration::from_millis(2500))
    );
    for (name, during, tab) in [("A", &during_a, &tab_a), ("B", &during_b, &tab_b)] {
        assert!(
            !tab.ended,
            "the stream on {name} closed during the outage\n{}",
            logs(&named)
        );
        assert!(
            during.matches(": heartbeat").count() >= 2,
            "heartbeats on {name} during the outage: {during:?}"
        );
    }
    let outage = down_at.elapsed();

    redis.restart();
    let t0 = Instant::now();
    let live = sorted(&[&tab_a_id, &tab_b_id]);
    let limit = Duration::from_secs(10);

    let healthy = async {
        let mut up = [None, None];
        while t0.elapsed() < limit && up.iter().any(Option::is_none) {
            for (i, n) in [&a, &b].into_iter().enumerate() {
                if up[i].is_none() && matches!(healthz(n).await, Some((200, _))) {
                    up[i] = Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match up {
            [Some(x), Some(y)] => Some(x.max(y)),
            _ => None,
        }
    };
    let registry = async {
        while t0.elapsed() < limit {
            if redis.ping() && redis.ids() == live {
                return Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    let delivery = async {
        let mut n = 0;
        while t0.elapsed() < limit {
            n += 1;
            let (status, _) = send(
                &a.admin_url(""),
                json!({"to": "bob", "data": format!("recover-{n}")}),
            )
            .await;
            if status == 200 {
                if tab_b
                    .wait_for("data: \"recover-", Duration::from_millis(50))
                    .await
                {
                    return Some(t0.elapsed());
                }
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if tab_b.wait_for("data: \"recover-", Duration::ZERO).await {
                return Some(t0.elapsed());
            }
        }
        None
    };
    let (healthy, registry, delivery) = tokio::join!(healthy, registry, delivery);
    let ms = |d: Option<Duration>| d.map_or("never".to_string(), |d| d.as_millis().to_string());
    println!(
        "recovery (outage {} ms): healthz {} ms, registry {} ms, cross-node delivery {} ms",
        outage.as_millis(),
        ms(healthy),
        ms(registry),
        ms(delivery)
    );
    assert!(
        healthy.is_some(),
        "/healthz of both nodes 200 within 10 s of Redis's restart\n{}",
        logs(&named)
    );
    assert!(
        registry.is_some(),
        "the registry is exactly the live tabs {live:?} within 10 s; got {:?}\n{}",
        redis.ids(),
        logs(&named)
    );
    assert!(
        delivery.is_some(),
        "a send posted to A reaches bob's tab on B within 10 s\n{}",
        logs(&named)
    );

    // The other direction, and the whole registry.
    let (status, body) = send(&b.admin_url(""), json!({"to": "alice", "data": "back"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 1, "{body}");
    assert!(
        tab_a.wait_for("data: \"back\"", WAIT).await,
        "{:?}",
        tab_a.text()
    );
    let want = RedisRegistry::of(&[("alice", &tab_a_id), ("bob", &tab_b_id)]);
    if let Err(got) = redis.registry_becomes(&want).await {
        panic!(
            "no zombie after the outage\nwant {want:?}\ngot  {got:?}\n{}",
            logs(&named)
        );
    }
    // And it stays so over more than a heartbeat and a sweep interval
    // (the tab that left during the outage must not come back later).
    for n in [&a, &b] {
        wait_for_sweeps(&n.admin_base(), 2).await;
    }
    tab_a.wait_for_heartbeats(1, WAIT).await;
    assert_eq!(
        redis.registry(),
        want,
        "registry 1.5 s later\n{}",
        logs(&named)
    );
    for (name, tab) in [("A", &tab_a), ("B", &tab_b)] {
        assert!(
            !tab.text().contains("\"lost\""),
            "the 503 sends delivered nothing on {name}: {:?}",
            tab.text()
        );
    }
    assert_no_panic(&named);
}

// ------------------------------------------------------------ 4. bus killed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_bus_subscription_rebuilt_across_processes() {
    let redis = RedisServer::start();
    // Default [stream] and [sweep]: what runs in production.
    let a = BinaryNode::spawn(&redis.url(), "").await;
    let b = BinaryNode::spawn(&redis.url(), "").await;
    let named = [("A", &a), ("B", &b)];
    let _logs = LogsOnPanic(&named);
    let (mut on_a, on_a_id) = SseClient::connect_url(&a.stream_url(), "erin").await;
    let (mut on_b, on_b_id) = SseClient::connect_url(&b.stream_url(), "dora").await;
    assert!(
        redis.ids_become(&[&on_a_id, &on_b_id]).await.is_ok(),
        "{:?}",
        redis.ids()
    );

    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.conn())
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(killed, 2, "one bus subscription per node");

    // Posted to one node for a tab on the other: it needs the other's bus.
    async fn resumes(
        from: &BinaryNode,
        to: &str,
        tab: &mut SseClient,
        t0: Instant,
    ) -> Option<Duration> {
        let mut n = 0;
        while t0.elapsed() < Duration::from_secs(10) {
            n += 1;
            let (status, body) = send(&from.admin_url(""), json!({"to": to, "data": n})).await;
            // 503 while the posting node's own bus is being rebuilt.
            assert!(status == 200 || status == 503, "{status}: {body}");
            if status == 503 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            if tab
                .next_named("message", Duration::from_millis(50))
                .await
                .is_some()
            {
                return Some(t0.elapsed());
            }
        }
        None
    }
    let (a_to_b, b_to_a) = tokio::join!(
        resumes(&a, "dora", &mut on_b, t0),
        resumes(&b, "erin", &mut on_a, t0)
    );
    let ms = |d: Option<Duration>| d.map_or("never".to_string(), |d| d.as_millis().to_string());
    println!(
        "bus rebuilt after CLIENT KILL TYPE pubsub: A->B delivery {} ms, B->A delivery {} ms",
        ms(a_to_b),
        ms(b_to_a)
    );
    assert!(
        a_to_b.is_some(),
        "delivery posted on A to the tab on B resumed within 10 s\n{}",
        logs(&named)
    );
    assert!(
        b_to_a.is_some(),
        "delivery posted on B to the tab on A resumed within 10 s\n{}",
        logs(&named)
    );

    // Exactly once from now on.
    for (from, to, tab, name) in [
        (&a, "dora", &mut on_b, "dora on B"),
        (&b, "erin", &mut on_a, "erin on A"),
    ] {
        let (status, body) = send(&from.admin_url(""), json!({"to": to, "data": "once"})).await;
        assert_eq!(status, 200, "{body}");
        let mid = body["data"]["message_id"].as_str().unwrap().to_string();
        // Late copies of the probing sends may still be on their way.
        let mut got = None;
        let deadline = Instant::now() + WAIT;
        while let Some(ev) = tab
            .next_event(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            if ev.id == mid {
                got = Some(ev);
                break;
            }
        }
        let ev = got.unwrap_or_else(|| panic!("{name} got the message"));
        assert_eq!(ev.data, "\"once\"");
        let extra = tab.next_event(QUIET).await;
        assert!(extra.is_none(), "{name}: duplicate {extra:?}");
    }
    for (name, n) in named {
        let (status, health) = healthz(n).await.expect("healthz");
        assert_eq!(
            (status, health["bus"].as_str()),
            (200, Some("ok")),
            "{name}: {health}"
        );
        let metrics = metrics_text(&n.admin_url("")).await;
        assert!(
            metrics.contains("sse_notify_bus_resubscribes_total 1"),
            "{name} resubscribed once:\n{metrics}"
        );
    }
    assert_eq!(redis.ids(), sorted(&[&on_a_id, &on_b_id]));
    assert_no_panic(&named);
}

// ----------------------------------------------------------- 5. per-user cap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_cap_counts_all_processes() {
    let redis = RedisServer::start();
    let cap = "[limits]\nmax_connections_per_user = 2\n";
    let a = BinaryNode::spawn(&redis.url(), cap).await;
    let b = BinaryNode::spawn(&redis.url(), cap).await;
    let named = [("A", &a), ("B", &b)];
    let _logs = LogsOnPanic(&named);

    let (mut first, first_id) = SseClient::connect_url(&a.stream_url(), "carol").await;
    let (mut second, second_id) = SseClient::connect_url(&b.stream_url(), "carol").await;
    assert!(
        redis.ids_become(&[&first_id, &second_id]).await.is_ok(),
        "{:?}",
        redis.ids()
    );
    receives_nothing(&mut first, "1st (A)").await;

    let (mut third, third_id) = SseClient::connect_url(&b.stream_url(), "carol").await;
    let ev = first
        .next_named("evicted", WAIT)
        .await
        .unwrap_or_else(|| panic!("the 1st tab (on A) gets evicted\n{}", logs(&named)));
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        data,
        json!({"connection_id": first_id, "reason": "max_connections_per_user"})
    );
    assert!(first.ends_within(WAIT).await, "the evicted tab is closed");
    receives_nothing(&mut second, "2nd (B)").await;
    receives_nothing(&mut third, "3rd (B)").await;
    let want = RedisRegistry::of(&[("carol", &second_id), ("carol", &third_id)]);
    if let Err(got) = redis.registry_becomes(&want).await {
        panic!(
            "exactly 2 records for carol\nwant {want:?}\ngot  {got:?}\n{}",
            logs(&named)
        );
    }
    for n in [&a, &b] {
        let (status, body) = admin(
            reqwest::Method::GET,
            &n.admin_url("/notifications/connections/carol/"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["connection_count"], 2, "{body}");
        assert_eq!(
            body["data"]["connection_ids"],
            json!([second_id, third_id]),
            "{body}"
        );
    }

    // The other way round: a 4th on A evicts the oldest, now on B.
    let (_fourth, fourth_id) = SseClient::connect_url(&a.stream_url(), "carol").await;
    let ev = second
        .next_named("evicted", WAIT)
        .await
        .unwrap_or_else(|| panic!("the 2nd tab (on B) gets evicted\n{}", logs(&named)));
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        data,
        json!({"connection_id": second_id, "reason": "max_connections_per_user"})
    );
    assert!(second.ends_within(WAIT).await, "the evicted tab is closed");
    receives_nothing(&mut third, "3rd (B)").await;
    let want = RedisRegistry::of(&[("carol", &third_id), ("carol", &fourth_id)]);
    if let Err(got) = redis.registry_becomes(&want).await {
        panic!(
            "exactly 2 records for carol\nwant {want:?}\ngot  {got:?}\n{}",
            logs(&named)
        );
    }
    let (status, body) = send(&a.admin_url(""), json!({"to": "carol", "data": 1})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 2, "{body}");

    // A tab renewing its stream (a fresh token) names the one it replaces:
    // that one goes, not the user's oldest tab, which is another's.
    let (mut fourth, fourth_id) = (_fourth, fourth_id);
    let renewal = format!("{}?replaces={fourth_id}", b.stream_url());
    let (_fifth, fifth_id) = SseClient::connect_url(&renewal, "carol").await;
    let ev = fourth
        .next_named("evicted", WAIT)
        .await
        .unwrap_or_else(|| panic!("the replaced stream (on A) is closed\n{}", logs(&named)));
    assert!(ev.data.contains(&fourth_id), "{}", ev.data);
    let got = third.next_named("message", WAIT).await;
    assert_eq!(
        got.map(|e| e.data),
        Some("1".to_string()),
        "the 3rd got the send"
    );
    receives_nothing(&mut third, "the older tab (3rd, on B) stays").await;
    let want = RedisRegistry::of(&[("carol", &third_id), ("carol", &fifth_id)]);
    if let Err(got) = redis.registry_becomes(&want).await {
        panic!("want {want:?}\ngot  {got:?}\n{}", logs(&named));
    }
    assert_no_panic(&named);
}
