//! Targeted delivery (Redis engine): a user's message reaches only the
//! nodes that hold the user's streams, on their own channel
//! `{prefix}:bus:{node_id}`; broadcasts and control events reach every node
//! on `{prefix}:bus`. What a user checks: every stream still gets its
//! messages in id order, exactly once, across the two channels, a tab that
//! connects while messages for its user are in flight, a node that dies
//! and its stale records, and the moments after a clear or a short cleanup
//! when the registry lacks live streams; what an operator checks: each
//! node's bus metrics. A topic's messages likewise reach only the nodes
//! holding its followers.
mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);
const RECEIVED: &str = "sse_notify_bus_messages_received_total";
const UNMATCHED: &str = "sse_notify_bus_messages_unmatched_total";

/// Nodes on one Redis that do not clear the registry at start (a clear
/// sends every message to every node while the nodes re-register).
fn config(redis: &RedisServer, history: bool) -> sse_notify::config::Config {
    let mut c = test_config(&redis.url());
    c.startup.clear = false;
    c.history.enabled = history;
    c.history.size = 1000;
    c.auth.public_topics = vec!["*".into()];
    c
}

/// `n` nodes on a registry known to be whole: a fresh Redis has no
/// `registry_since` and sends every user's message to every node for the
/// first re-registration window (as after a data loss: tested last), which
/// the exact counts here would see.
async fn start(redis: &RedisServer, n: usize, history: bool) -> Vec<TestNode> {
    redis
        .query::<()>(redis::cmd("SET").arg("sse:registry_since").arg("1"))
        .unwrap();
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestNode::start(config(redis, history)).await);
    }
    nodes
}

/// `{ms}-{seq}` as numbers, for order checks.
fn key(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("not a history id: {id}"));
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// Message ids until the one whose data is `marker` (included).
async fn ids_until(tab: &mut SseClient, marker: &str, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let ev = tab
            .next_named("message", WAIT)
            .await
            .unwrap_or_else(|| panic!("{what}: {marker} never came; got {out:?}"));
        out.push(ev.id.clone());
        if ev.data.contains(marker) {
            return out;
        }
    }
}

async fn metrics_of(node: &TestNode) -> (f64, f64) {
    let text = metrics_text(&node.admin_base()).await;
    let get = |name| metric_value(&text, name).unwrap_or_else(|| panic!("no {name}"));
    (get(RECEIVED), get(UNMATCHED))
}

async fn only_nodes_holding_the_user_receive(history: bool) {
    let redis = RedisServer::start();
    let nodes = start(&redis, 3, history).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // One channel per node, each node also on the shared one.
    for n in &nodes {
        let (_, subs): (String, i64) = redis
            .query(
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(format!("sse:bus:{}", n.daemon.node_id())),
            )
            .unwrap();
        assert_eq!(subs, 1, "node {} on its own channel", n.daemon.node_id());
    }
    let (_, shared): (String, i64) = redis
        .query(redis::cmd("PUBSUB").arg("NUMSUB").arg("sse:bus"))
        .unwrap();
    assert_eq!(shared, 3, "every node on sse:bus");

    let (mut ann, _) = SseClient::connect(a, "ann").await;
    let (mut bob, _) = SseClient::connect(b, "bob").await;
    let before: Vec<(f64, f64)> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(metrics_of(n).await);
        }
        v
    };
    // Posted through a node that holds neither user.
    for i in 0..10 {
        send_ok(&c.admin_base(), json!({"to": "ann", "data": i})).await;
    }
    for i in 0..5 {
        send_ok(&a.admin_base(), json!({"to": "bob", "data": i})).await;
    }
    send_ok(&a.admin_base(), json!({"data": "end"})).await;
    assert_eq!(ids_until(&mut ann, "end", "ann").await.len(), 11);
    assert_eq!(ids_until(&mut bob, "end", "bob").await.len(), 6);

    // Each tab got the broadcast sent last, so its node applied everything
    // before it; c holds no stream and gets the broadcast only.
    wait_until(WAIT, "c heard the broadcast", || async {
        metrics_of(c).await.0 > before[2].0
    })
    .await;
    let delta = |i: usize, now: (f64, f64)| (now.0 - before[i].0, now.1 - before[i].1);
    assert_eq!(
        delta(0, metrics_of(a).await),
        (11.0, 0.0),
        "a: ann's 10 and the broadcast, each taken by ann's tab"
    );
    assert_eq!(
        delta(1, metrics_of(b).await),
        (6.0, 0.0),
        "b: bob's 5 and the broadcast"
    );
    assert_eq!(
        delta(2, metrics_of(c).await),
        (1.0, 1.0),
        "c: only the broadcast, which no stream of c took"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_messages_reach_only_the_nodes_holding_the_user() {
    only_nodes_holding_the_user_receive(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_off_too() {
    only_nodes_holding_the_user_receive(false).await;
}

/// A stream of `user` on `node` that follows `topics` (comma-separated).
async fn follow(node: &TestNode, user: &str, topics: &str) -> SseClient {
    let url = format!("{}?topics={topics}", node.stream_url());
    SseClient::connect_url(&url, user).await.0
}

/// A topic's messages go only to the nodes that hold its followers: one
/// followed on a alone never reaches b's channel; one followed on both
/// reaches both; a stream on a follower's node that does not follow it
/// gets none of them.
async fn only_nodes_holding_the_topic_receive(history: bool) {
    let redis = RedisServer::start();
    let nodes = start(&redis, 2, history).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut ann = follow(a, "ann", "doc:1,team:7").await;
    let (mut carl, _) = SseClient::connect(a, "carl").await;
    let mut bob = follow(b, "bob", "team:7").await;
    let before = [metrics_of(a).await, metrics_of(b).await];
    // Posted through b, which holds no follower of doc:1.
    for i in 0..10 {
        let (status, resp) = send(&b.admin_base(), json!({"topic": "doc:1", "data": i})).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["data"]["connections"], 1, "{resp}");
    }
    for i in 0..5 {
        send_ok(&b.admin_base(), json!({"topic": "team:7", "data": i})).await;
    }
    send_ok(&a.admin_base(), json!({"data": "end"})).await;
    let got = ids_until(&mut ann, "end", "ann").await;
    assert_eq!(got.len(), 16, "doc:1's 10, team:7's 5, the broadcast");
    if history {
        for w in got.windows(2) {
            assert!(key(&w[0]) < key(&w[1]), "ann: {} then {}", w[0], w[1]);
        }
    }
    assert_eq!(ids_until(&mut bob, "end", "bob").await.len(), 6);
    assert_eq!(ids_until(&mut carl, "end", "carl").await.len(), 1);
    wait_until(WAIT, "b heard the broadcast", || async {
        metrics_of(b).await.0 > before[1].0
    })
    .await;
    let delta = |i: usize, now: (f64, f64)| (now.0 - before[i].0, now.1 - before[i].1);
    assert_eq!(
        delta(0, metrics_of(a).await),
        (16.0, 0.0),
        "a: both topics' messages and the broadcast"
    );
    assert_eq!(
        delta(1, metrics_of(b).await),
        (6.0, 0.0),
        "b: team:7's 5 and the broadcast, never doc:1's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_messages_reach_only_the_nodes_holding_its_followers() {
    only_nodes_holding_the_topic_receive(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_messages_with_history_off_too() {
    only_nodes_holding_the_topic_receive(false).await;
}

/// Concurrent batches from three nodes mixing broadcasts (shared channel),
/// messages to a user on two nodes (two node channels) and one-tab
/// messages: each stream gets exactly its messages, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_get_both_channels_in_id_order() {
    let redis = RedisServer::start();
    let nodes = start(&redis, 3, true).await;
    let (mut ann_a, _) = SseClient::connect(&nodes[0], "ann").await;
    let (mut ann_b, _) = SseClient::connect(&nodes[1], "ann").await;
    let (mut bob_c, _) = SseClient::connect(&nodes[2], "bob").await;

    const ROUNDS: usize = 20;
    let mut senders = Vec::new();
    for n in &nodes {
        let url = n.admin_url("/notifications/send/batch/");
        senders.push(tokio::spawn(async move {
            // (id, to, first_only)
            let mut sent: Vec<(String, Option<String>, bool)> = Vec::new();
            for r in 0..ROUNDS {
                let msgs = vec![
                    json!({"to": "ann", "data": r}),
                    json!({"data": r}),
                    json!({"to": "ann", "data": r, "all_connections": false}),
                    json!({"to": "bob", "data": r}),
                    json!({"to": "ann", "data": r}),
                    json!({"to": "bob", "data": r}),
                    json!({"data": r}),
                ];
                let body = json!({ "messages": msgs }).to_string();
                let (status, resp) = admin(reqwest::Method::POST, &url, Some(&body)).await;
                assert_eq!(status, 200, "{resp}");
                let results = resp["data"]["results"].as_array().unwrap();
                for (m, res) in msgs.iter().zip(results) {
                    sent.push((
                        res["message_id"].as_str().unwrap().to_string(),
                        m["to"].as_str().map(String::from),
                        m.get("all_connections") == Some(&json!(false)),
                    ));
                }
            }
            sent
        }));
    }
    let mut sent = Vec::new();
    for s in senders {
        sent.extend(s.await.unwrap());
    }
    let end = send_ok(&nodes[2].admin_base(), json!({"data": "end"})).await;
    sent.push((end, None, false));

    let expect = |user: &str, first_tab: bool| -> HashSet<String> {
        sent.iter()
            .filter(|(_, to, first_only)| match to {
                None => true,
                Some(u) => u == user && (!first_only || first_tab),
            })
            .map(|(id, _, _)| id.clone())
            .collect()
    };
    // ann's tab on a is her oldest: it gets the one-tab messages.
    for (tab, name, want) in [
        (&mut ann_a, "ann on a", expect("ann", true)),
        (&mut ann_b, "ann on b", expect("ann", false)),
        (&mut bob_c, "bob on c", expect("bob", false)),
    ] {
        let got = ids_until(tab, "end", name).await;
        for w in got.windows(2) {
            assert!(key(&w[0]) < key(&w[1]), "{name}: {} then {}", w[0], w[1]);
        }
        let set: HashSet<String> = got.iter().cloned().collect();
        assert_eq!(set.len(), got.len(), "{name}: duplicates in {got:?}");
        assert_eq!(set, want, "{name}: exactly its messages");
    }
}

/// Tabs connect on a node that holds none of the user's streams and no
/// follower of the topic while messages for the user, for the topic and
/// broadcasts flow (to another node's channel, and the shared one): each
/// tab, come back with `Last-Event-ID`, gets every message after that id
/// exactly once and in order, by replay or live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_connecting_while_messages_are_in_flight_gets_each_once() {
    let redis = RedisServer::start();
    let nodes = start(&redis, 3, true).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // ann's anchor tab on a: her messages and doc:1's are routed there.
    let _anchor = follow(a, "ann", "doc:1").await;
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let first = send_ok(&c.admin_base(), json!({"to": "ann", "data": "first"})).await;
    accepted.lock().unwrap().push(first);
    let sender = {
        let accepted = accepted.clone();
        let admin = c.admin_base();
        tokio::spawn(async move {
            for i in 0..400 {
                let body = match i % 4 {
                    0 => json!({"data": i}),
                    1 => json!({"topic": "doc:1", "data": i}),
                    _ => json!({"to": "ann", "data": i}),
                };
                let id = send_ok(&admin, body).await;
                accepted.lock().unwrap().push(id);
            }
        })
    };
    // (Last-Event-ID, what the session received)
    let mut sessions: Vec<(String, Vec<String>)> = Vec::new();
    while !sender.is_finished() {
        let last = accepted.lock().unwrap().last().cloned().unwrap();
        let mut tab = SseClient::open(
            &format!("{}?topics=doc:1", b.stream_url()),
            &[("X-Remote-User", "ann"), ("Last-Event-ID", &last)],
        )
        .await;
        assert_eq!(tab.status, 200);
        let ev = tab.next_event(WAIT).await.expect("established");
        assert_eq!(ev.event, "connection_established");
        let mut got = Vec::new();
        while got.len() < 4 {
            match tab.next_event(Duration::from_millis(500)).await {
                Some(ev) => {
                    assert_eq!(ev.event, "message", "{ev:?}");
                    got.push(ev.id);
                }
                None => break,
            }
        }
        sessions.push((last, got));
    }
    sender.await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    let mut checked = 0;
    for (last, got) in &sessions {
        let Some(upto) = got.last() else { continue };
        let want: Vec<String> = accepted
            .iter()
            .filter(|id| key(id) > key(last) && key(id) <= key(upto))
            .cloned()
            .collect();
        assert_eq!(got, &want, "session after {last}");
        checked += 1;
    }
    println!(
        "in flight: {} sessions, {checked} with messages",
        sessions.len()
    );
    assert!(checked >= 10, "too few sessions got messages: {sessions:?}");
}

/// A node killed with its streams open leaves records naming it. Messages
/// for its users go to every node until the sweep removes those records
/// (a channel nobody hears is never the only way), then only to the nodes
/// that hold the users again; what the dead node's tabs missed is in the
/// history for their reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_stale_records_cost_nothing_but_a_detour() {
    let redis = RedisServer::start();
    let nodes = start(&redis, 2, true).await;
    let (a, c) = (&nodes[0], &nodes[1]);
    let mut b = BinaryNode::spawn(
        &redis.url(),
        "[startup]\nclear = false\n[stream]\nheartbeat_secs = 1\n\
         [sweep]\ninterval_secs = 1\nstale_timeout_secs = 5\n",
    )
    .await;
    let (_on_b, _) = SseClient::connect(&b, "ann").await;
    let (mut on_c, _) = SseClient::connect(c, "ann").await;
    let before = send_ok(&a.admin_base(), json!({"to": "ann", "data": "before"})).await;
    assert_eq!(on_c.next_named("message", WAIT).await.unwrap().id, before);

    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let (received_a, unmatched_a) = metrics_of(a).await;
    let (status, resp) = send(&a.admin_base(), json!({"to": "ann", "data": "stale"})).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp["data"]["connections"], 2,
        "the registry still names the dead tab"
    );
    let stale = resp["data"]["message_id"].as_str().unwrap().to_string();
    let ev = on_c.next_named("message", WAIT).await.expect("live on c");
    assert_eq!(ev.id, stale);
    // Went to every node: a heard it and had no stream for it.
    wait_until(WAIT, "a heard the detour", || async {
        metrics_of(a).await.1 > unmatched_a
    })
    .await;
    // The dead node's tab comes back on a and replays it.
    let mut back = SseClient::open(
        &a.stream_url(),
        &[("X-Remote-User", "ann"), ("Last-Event-ID", &before)],
    )
    .await;
    assert_eq!(
        back.next_event(WAIT).await.unwrap().event,
        "connection_established"
    );
    assert_eq!(back.next_named("message", WAIT).await.unwrap().id, stale);
    drop(back);

    // The sweep removes the dead node's record...
    wait_until(
        Duration::from_secs(15),
        "the stale record swept",
        || async { listed_user(&a.admin_base(), "ann").await["connection_count"] == json!(1) },
    )
    .await;
    // ...and ann's messages go to c only again: a hears the broadcast only.
    let (received_a, _) = (metrics_of(a).await.0.max(received_a), ());
    send_ok(&a.admin_base(), json!({"to": "ann", "data": "after"})).await;
    send_ok(&a.admin_base(), json!({"data": "end"})).await;
    let got = ids_until(&mut on_c, "end", "ann on c").await;
    assert_eq!(got.len(), 2, "{got:?}");
    wait_until(WAIT, "a heard the broadcast", || async {
        metrics_of(a).await.0 > received_a
    })
    .await;
    assert_eq!(metrics_of(a).await.0, received_a + 1.0);
}

/// A clear removes every record, and a short cleanup removes live ones,
/// until the nodes write them back: a message sent right then still
/// reaches the live streams (it goes to every node meanwhile), to a user
/// or to a topic the stream follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_after_a_clear_or_a_short_cleanup_live_tabs_still_get_messages() {
    let redis = RedisServer::start();
    let nodes = start(&redis, 2, true).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut tab = follow(a, "ann", "doc:1").await;
    for round in 0..12 {
        let (path, body) = if round % 2 == 0 {
            ("/notifications/connections/", None)
        } else {
            ("/notifications/cleanup/", Some(r#"{"timeout": 0}"#))
        };
        let (status, resp) = admin(reqwest::Method::POST, &b.admin_url(path), body).await;
        assert_eq!(status, 200, "{resp}");
        let to = if round / 2 % 2 == 0 {
            json!({"to": "ann", "data": round})
        } else {
            json!({"topic": "doc:1", "data": round})
        };
        let id = send_ok(&b.admin_base(), to).await;
        let ev = tab
            .next_named("message", WAIT)
            .await
            .unwrap_or_else(|| panic!("round {round}: message after {path} never came"));
        assert_eq!(ev.id, id, "round {round}");
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(data, json!(round));
    }
    window_closes(&redis, b).await;
}

/// Sends (each evaluates the window) until the re-registration window is
/// gone: every node wrote its streams back and said so. Far sooner than
/// its 10 s upper bound.
async fn window_closes(redis: &RedisServer, via: &TestNode) {
    wait_until(
        Duration::from_secs(4),
        "the re-registration window closing once every node wrote back",
        || async {
            send_ok(&via.admin_base(), json!({"to": "nobody", "data": 0})).await;
            redis
                .query::<i64>(redis::cmd("EXISTS").arg("sse:resyncing"))
                .unwrap()
                == 0
        },
    )
    .await;
}

/// Every start clears the registry (`startup.clear`): with three nodes
/// started one after another, the window each start opens closes as soon
/// as every node wrote its streams back, so a user's message sent right
/// after the last start already goes only to the node holding the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_nodes_start_one_after_another_messages_are_targeted_at_once() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    let mut tabs = Vec::new();
    for user in ["ann", "bob", "cat"] {
        let mut c = config(&redis, true);
        c.startup.clear = true;
        let node = TestNode::start(c).await;
        tabs.push(SseClient::connect(&node, user).await.0);
        nodes.push(node);
    }
    window_closes(&redis, &nodes[2]).await;
    let mut before = Vec::new();
    for n in &nodes {
        before.push(metrics_of(n).await.0);
    }
    for i in 0..5 {
        send_ok(&nodes[2].admin_base(), json!({"to": "ann", "data": i})).await;
    }
    send_ok(&nodes[2].admin_base(), json!({"data": "end"})).await;
    assert_eq!(ids_until(&mut tabs[0], "end", "ann").await.len(), 6);
    for (i, tab) in tabs.iter_mut().enumerate().skip(1) {
        ids_until(tab, "end", "the others").await;
        let got = metrics_of(&nodes[i]).await.0 - before[i];
        assert_eq!(got, 1.0, "node {i} heard only the broadcast, not ann's 5");
    }
    assert_eq!(metrics_of(&nodes[0]).await.0 - before[0], 6.0);
}

/// Redis that lost its data (restarted without persistence, or flushed)
/// holds no record of the live streams until their nodes write them back:
/// a message sent meanwhile still reaches them (it goes to every node, and
/// the first such message opens the re-registration window), with history
/// on and off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_lost_its_data_live_tabs_still_get_messages() {
    let redis = RedisServer::start();
    for history in [true, false] {
        let nodes = start(&redis, 2, history).await;
        let (a, b) = (&nodes[0], &nodes[1]);
        let (mut tab, _) = SseClient::connect(a, "ann").await;
        let _ = send_ok(&b.admin_base(), json!({"to": "ann", "data": "before"})).await;
        assert!(tab.next_named("message", WAIT).await.is_some());
        redis.query::<()>(&mut redis::cmd("FLUSHALL")).unwrap();
        assert!(redis.ids().is_empty(), "the registry is gone");
        let id = send_ok(&b.admin_base(), json!({"to": "ann", "data": "after"})).await;
        let ev = tab
            .next_named("message", WAIT)
            .await
            .unwrap_or_else(|| panic!("history {history}: the message after the loss never came"));
        assert_eq!(
            (ev.id.as_str(), ev.data.as_str()),
            (id.as_str(), "\"after\"")
        );
        let window: i64 = redis
            .query(redis::cmd("PTTL").arg("sse:resyncing"))
            .unwrap();
        assert!(
            window > 0,
            "history {history}: no re-registration window ({window})"
        );
        let since: i64 = redis
            .query(redis::cmd("EXISTS").arg("sse:registry_since"))
            .unwrap();
        assert_eq!(
            since, 1,
            "history {history}: the registry is marked whole again"
        );
    }
}
