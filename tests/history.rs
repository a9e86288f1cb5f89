//! History and Last-Event-ID replay (README "Missed messages: history and `Last-Event-ID`"): what a tab missed
//! comes back in order, exactly once, with no gap or duplicate at the seam
//! between replay and live messages. Both engines keep the same window and
//! give the same ids and gaps; several nodes sharing history is Redis only.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

async fn send_to(node: &TestNode, body: Value) -> String {
    send_ok(&node.admin_base(), body).await
}

/// One event of a raw stream.
#[derive(Debug)]
struct Frame {
    id: String,
    event: String,
    data: String,
}

/// Opens a stream as `user` with extra headers; returns it after
/// `connection_established`.
async fn reconnect(
    node: &TestNode,
    user: &str,
    headers: &[(&str, &str)],
    query: &str,
) -> RawStream {
    let mut req = stream_client()
        .get(format!("{}{query}", node.stream_url()))
        .header("X-Remote-User", user);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("stream request");
    assert_eq!(resp.status().as_u16(), 200);
    let mut tab = RawStream::of(resp);
    // Marks `connection_established` read, and nothing after it.
    tab.established().await;
    tab
}

/// Every event before the next heartbeat comment. A heartbeat travels a
/// stream's queue behind its replay and behind every live message sent
/// before it, and it is never kept in history: when it arrives, nothing
/// that was on its way is still missing (no quiet period to guess), and
/// it does not shift the small history windows these tests check.
async fn until_heartbeat(tab: &mut RawStream) -> Vec<Frame> {
    let text = tab.wait_for_heartbeats(1, WAIT).await;
    text.split("\n\n")
        .filter_map(|block| {
            let mut f = Frame {
                id: String::new(),
                event: "message".into(),
                data: String::new(),
            };
            let mut has_data = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    f.id = v.to_string();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    f.event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    f.data = v.to_string();
                    has_data = true;
                }
            }
            has_data.then_some(f)
        })
        .collect()
}

/// A config whose streams send a heartbeat every second (see
/// [`until_heartbeat`]).
fn beating(env: &Env) -> sse_notify::config::Config {
    let mut config = env.config();
    config.stream.heartbeat_secs = 1;
    config
}

on_every_engine! {
    async fn missed_messages_and_broadcasts_come_back_in_order_exactly_once(env: Env) {
        let node = TestNode::start(beating(&env)).await;
        let (mut tab, _) = SseClient::connect(&node, "alice").await;
        let sent = send_to(&node, json!({"to": "alice", "data": 1})).await;
        // Where the tab stood after it: what a browser sends back.
        let first = tab.next_named("message", WAIT).await.unwrap().id;
        assert_eq!(api_id(&first, &sent), sent);
        drop(tab);
        assert!(
            eventually(WAIT, || {
                let n = node.daemon.live_streams();
                async move { n == 0 }
            })
            .await
        );

        // Sent while alice has no connection at all: kept for her.
        let m2 = send_to(&node, json!({"to": "alice", "data": 2})).await;
        let b1 = send_to(&node, json!({"data": "b", "event": "news"})).await;
        let m3 = send_to(&node, json!({"to": "alice", "data": 3, "event": "ping"})).await;
        let _other = send_to(&node, json!({"to": "bob", "data": "not for alice"})).await;

        let all = [m2.clone(), b1.clone(), m3.clone(), _other.clone()];
        let mut tab = reconnect(&node, "alice", &[("Last-Event-ID", &first)], "").await;
        let got = until_heartbeat(&mut tab).await;
        let ids = api_ids(&ids_of(&got), &all);
        let seen: Vec<(&str, &str, &str)> = got
            .iter()
            .zip(&ids)
            .map(|(e, id)| (id.as_str(), e.event.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (m2.as_str(), "message", "2"),
                (b1.as_str(), "news", "\"b\""),
                (m3.as_str(), "ping", "3"),
            ]
        );
        let at_m3 = got[2].id.clone();
        // Then live ones, once.
        let m4 = send_to(&node, json!({"to": "alice", "data": 4})).await;
        let got = until_heartbeat(&mut tab).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(api_id(&got[0].id, &m4), m4);
        let at_m4 = got[0].id.clone();

        // The query parameter works like the header.
        let mut tab2 =
            reconnect(&node, "alice", &[], &format!("?last_event_id={}", urlencode(&at_m3))).await;
        let got = until_heartbeat(&mut tab2).await;
        // The same message, with the same id, wherever it is read.
        assert_eq!(ids_of(&got), vec![at_m4]);
    }
}

on_every_engine! {
    async fn old_unknown_or_malformed_ids_get_history_gap_then_what_is_kept(env: Env) {
        let mut config = beating(&env);
        config.history.size = 3;
        let node = TestNode::start(config).await;
        // Open while they are sent: where it stood after each.
        let (mut watcher, _) = SseClient::connect(&node, "carol").await;
        let mut ids = Vec::new();
        let mut at = Vec::new();
        for i in 0..6 {
            ids.push(send_to(&node, json!({"to": "carol", "data": i})).await);
            at.push(watcher.next_named("message", WAIT).await.unwrap().id);
        }
        drop(watcher);
        let kept: Vec<String> = ids[3..].to_vec();

        for last in [
            at[0].as_str(),
            "1-0",
            "1-0.1-0",
            "not-an-id",
            "99999999999999-0",
            "99999999999999-0.99999999999999-0",
            "x\u{1}y",
        ] {
            let mut tab = reconnect(
                &node,
                "carol",
                &[],
                &format!("?last_event_id={}", urlencode(last)),
            )
            .await;
            let got = until_heartbeat(&mut tab).await;
            assert_eq!(got[0].event, "history_gap", "{last}: {got:?}");
            let data: Value = serde_json::from_str(&got[0].data).unwrap();
            assert_eq!(data["last_event_id"], last);
            assert_eq!(api_ids(&ids_of(&got[1..]), &ids), kept, "{last}");
        }
        // A kept id: no gap, only what follows.
        let mut tab = reconnect(&node, "carol", &[("Last-Event-ID", &at[3])], "").await;
        let got = until_heartbeat(&mut tab).await;
        assert_eq!(api_ids(&ids_of(&got), &ids), kept[1..].to_vec());
    }
}

fn ids_of(events: &[Frame]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

on_every_engine! {
    /// Redis trims a stream only by whole nodes (the cheap kind), so it may
    /// hold more than `history.size`; what a replay serves is still exactly the
    /// newest `size`, and a gap is told when something after the client's id is
    /// no longer served, by count or by age, in the user's stream or in the
    /// broadcasts. On a cluster each part of a position has its own gap: the
    /// user's messages after its part are given exactly when only the
    /// broadcasts fell out.
    async fn what_is_served_is_exactly_the_newest_size_and_age(env: Env) {
        let mut config = beating(&env);
        config.history.size = 3;
        config.history.ttl_secs = 1;
        let node = TestNode::start(config).await;
        let per_part = env.engine() == "redis-cluster";

        // Open while they are sent: where it stood after each.
        let (mut watcher, _) = SseClient::connect(&node, "dave").await;
        let mut ids = Vec::new();
        let mut at = Vec::new();
        for i in 0..250 {
            ids.push(send_to(&node, json!({"to": "dave", "data": i})).await);
            at.push(watcher.next_named("message", WAIT).await.unwrap().id);
        }
        drop(watcher);
        if let Some(redis) = env.redis_server() {
            let len: usize = redis::cmd("XLEN")
                .arg("sse:history:user:dave")
                .query(&mut redis.conn())
                .unwrap();
            // size + 1 kept at least, plus at most one stream node (100 entries
            // by Redis's default stream-node-max-entries).
            assert!((4..=104).contains(&len), "stream length {len}");
        }
        // The id just before the served window: nothing after it is lost.
        let mut tab = reconnect(&node, "dave", &[("Last-Event-ID", &at[246])], "").await;
        assert_eq!(
            api_ids(&ids_of(&until_heartbeat(&mut tab).await), &ids),
            ids[247..]
        );
        // One further back: ids[246] is no longer served, a gap.
        let mut tab = reconnect(&node, "dave", &[("Last-Event-ID", &at[245])], "").await;
        let got = until_heartbeat(&mut tab).await;
        assert_eq!(got[0].event, "history_gap", "{got:?}");
        assert_eq!(api_ids(&ids_of(&got[1..]), &ids), ids[247..]);

        // The user's own message is kept, but broadcasts after it fell out of
        // the broadcast window: a gap, then everything served, in id order.
        let (mut watcher, _) = SseClient::connect(&node, "erin").await;
        let mine = send_to(&node, json!({"to": "erin", "data": "m"})).await;
        let at_mine = watcher.next_named("message", WAIT).await.unwrap().id;
        drop(watcher);
        let mut bcast = Vec::new();
        for i in 0..5 {
            bcast.push(send_to(&node, json!({"data": i})).await);
        }
        let mut sent = bcast.clone();
        sent.push(mine.clone());
        let mut tab = reconnect(&node, "erin", &[("Last-Event-ID", &at_mine)], "").await;
        let got = until_heartbeat(&mut tab).await;
        assert_eq!(got[0].event, "history_gap", "{got:?}");
        let mut want = if per_part { vec![] } else { vec![mine.clone()] };
        want.extend_from_slice(&bcast[2..]);
        assert_eq!(api_ids_after(&at_mine, &ids_of(&got[1..]), &sent), want);

        // By age: what is older than ttl_secs is not served. Ids are
        // `{unix ms}-{seq}`: wait until the clock is past the age limit of
        // the newest message so far (the last broadcast; on a loaded
        // machine it can be much younger than `mine`).
        let newest = bcast.last().expect("broadcasts were sent").clone();
        let newest_ms: f64 = newest
            .trim_matches('.')
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("message id {newest} is not ms-seq"));
        wait_until(
            Duration::from_secs(5),
            format_args!("{newest} older than history.ttl_secs = 1"),
            || async move { now() * 1000.0 > newest_ms + 1000.0 },
        )
        .await;
        let fresh = send_to(&node, json!({"to": "erin", "data": "fresh"})).await;
        sent.push(fresh.clone());
        let mut tab = reconnect(&node, "erin", &[("Last-Event-ID", &at_mine)], "").await;
        let got = until_heartbeat(&mut tab).await;
        assert_eq!(got[0].event, "history_gap", "{got:?}");
        assert_eq!(api_ids(&ids_of(&got[1..]), &sent), vec![fresh.clone()]);
        // Nothing missed after the newest id, however old the rest is.
        let at_fresh = got[1].id.clone();
        let mut tab = reconnect(&node, "erin", &[("Last-Event-ID", &at_fresh)], "").await;
        assert!(until_heartbeat(&mut tab).await.is_empty());
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

on_every_engine! {
    async fn disabled_history_writes_nothing_and_ignores_last_event_id(env: Env) {
        let mut config = beating(&env);
        config.history.enabled = false;
        let node = TestNode::start(config).await;
        let (mut tab, _) = SseClient::connect(&node, "dan").await;
        let id = send_to(&node, json!({"to": "dan", "data": 1})).await;
        let _ = send_to(&node, json!({"data": 2})).await;
        assert!(tab.next_named("message", WAIT).await.is_some());
        if let Some(redis) = env.redis_server() {
            let keys = redis.keys("sse:history*");
            assert!(keys.is_empty(), "history keys written: {keys:?}");
        }
        let mut again = reconnect(&node, "dan", &[("Last-Event-ID", &id)], "").await;
        assert!(until_heartbeat(&mut again).await.is_empty());
        let mut again = reconnect(&node, "dan", &[("Last-Event-ID", "garbage")], "").await;
        assert!(
            until_heartbeat(&mut again).await.is_empty(),
            "no history_gap when disabled"
        );
    }
}

on_every_engine! {
    async fn one_tab_messages_are_replayed_once_at_most(env: Env) {
        let node = TestNode::start(beating(&env)).await;
        let (mut keeper, _) = SseClient::connect(&node, "eve").await;
        let (mut other, _) = SseClient::connect(&node, "eve").await;
        send_to(&node, json!({"to": "eve", "data": 0})).await;
        let base = keeper.next_named("message", WAIT).await.unwrap().id;
        assert!(other.next_named("message", WAIT).await.is_some());
        drop(other);
        // Delivered live to the first tab: no returning tab gets it again.
        let sent = send_to(
            &node,
            json!({"to": "eve", "data": "one tab", "all_connections": false}),
        )
        .await;
        let live = keeper.next_named("message", WAIT).await.unwrap().id;
        assert_eq!(api_id(&live, &sent), sent);
        let mut back = reconnect(&node, "eve", &[("Last-Event-ID", &base)], "").await;
        assert!(until_heartbeat(&mut back).await.is_empty());
        drop(back);
        drop(keeper);
        assert!(
            eventually(WAIT, || {
                let n = node.daemon.live_streams();
                async move { n == 0 }
            })
            .await
        );
        let mut alone = reconnect(&node, "eve", &[("Last-Event-ID", &base)], "").await;
        assert!(
            until_heartbeat(&mut alone).await.is_empty(),
            "a one-tab message that reached a tab is not replayed"
        );
        drop(alone);
        assert!(
            eventually(WAIT, || {
                let n = node.daemon.live_streams();
                async move { n == 0 }
            })
            .await
        );

        // Sent while eve has no connection: kept for the first tab back only.
        let kept = send_to(
            &node,
            json!({"to": "eve", "data": "kept", "all_connections": false}),
        )
        .await;
        let mut first = reconnect(&node, "eve", &[("Last-Event-ID", &live)], "").await;
        let got = until_heartbeat(&mut first).await;
        assert_eq!(api_ids(&ids_of(&got), std::slice::from_ref(&kept)), vec![kept]);
        let mut second = reconnect(&node, "eve", &[("Last-Event-ID", &live)], "").await;
        assert!(
            until_heartbeat(&mut second).await.is_empty(),
            "only the first tab back gets a kept one-tab message"
        );
    }
}

/// A tab back after `last` as an event client (for reading mid-flow),
/// following `topics` (comma-separated).
async fn reopen(node: &TestNode, user: &str, topics: &str, last: &str) -> SseClient {
    let mut tab = SseClient::open(
        &format!("{}?topics={topics}", node.stream_url()),
        &[("X-Remote-User", user), ("Last-Event-ID", last)],
    )
    .await;
    assert_eq!(tab.status, 200);
    let ev = tab.next_event(WAIT).await.expect("first event");
    assert_eq!(ev.event, "connection_established");
    tab
}

on_every_engine! {
    /// A tab that follows a topic drops its stream again and again while
    /// its user's messages, its topic's, another topic's and broadcasts
    /// are sent; each time it comes back with the last id it saw: it gets
    /// every message for it exactly once, in id order, by replay or live.
    /// With Redis, three nodes share the history: the tab moves between
    /// two of them; the third, which never holds it, posts a third of the
    /// sends.
    async fn reconnects_during_a_send_storm_lose_and_duplicate_nothing(env: Env) {
    let mut config = env.config();
    config.history.size = 1000;
    config.auth.public_topics = vec!["*".into()];
    let mut nodes = vec![TestNode::start(config.clone()).await];
    if env.uses_redis() {
        for name in ["history-b", "history-c"] {
            let mut more = config.clone();
            more.server.node_id = name.into();
            more.startup.clear = false;
            nodes.push(TestNode::start(more).await);
        }
    }
    let first = format!("{}?topics=doc:1", nodes[0].stream_url());
    let (mut tab, _) = SseClient::connect_url(&first, "frank").await;

    const N: usize = 400;
    let admins: Vec<String> = nodes.iter().map(|n| n.admin_url("")).collect();
    let sender = tokio::spawn(async move {
        // (id, whether frank's tab is to get it)
        let mut sent = Vec::new();
        for i in 0..N {
            // Alternate the posting node; mix in broadcasts and topics.
            let (body, mine) = match i % 5 {
                0 => (json!({"data": i}), true),
                1 => (json!({"topic": "doc:1", "data": i}), true),
                2 => (json!({"topic": "doc:2", "data": i}), false),
                _ => (json!({"to": "frank", "data": i}), true),
            };
            let (status, resp) = send(&admins[i % admins.len()], body).await;
            assert_eq!(status, 200, "{resp}");
            sent.push((resp["data"]["message_id"].as_str().unwrap().to_string(), mine));
        }
        sent
    });

    let mut received: Vec<String> = Vec::new();
    let mut reconnects = 0;
    let holders = &nodes[..nodes.len().min(2)];
    while !sender.is_finished() || reconnects < 3 {
        // Read a little, then drop the stream mid-flow and come back with
        // the last id seen, alternating nodes.
        for _ in 0..(15 + reconnects * 7) {
            match tab.next_event(Duration::from_millis(300)).await {
                Some(ev) if ev.event == "message" => received.push(ev.id),
                Some(ev) => panic!("unexpected {ev:?}"),
                None => break,
            }
        }
        let last = received.last().cloned().unwrap_or_default();
        drop(tab);
        reconnects += 1;
        let node = &holders[reconnects % holders.len()];
        tab = reopen(node, "frank", "doc:1", &last).await;
        if reconnects > 40 {
            break;
        }
    }
    let sent = sender.await.unwrap();
    // Sends to one stream arrive in order: what comes before a last
    // message is everything that was still on its way.
    send_to(
        &nodes[0],
        json!({"to": "frank", "event": "marker", "data": "end-of-storm"}),
    )
    .await;
    for ev in tab.events_before("end-of-storm", WAIT).await {
        assert_eq!(ev.event, "message", "{ev:?}");
        received.push(ev.id);
    }
    let frames = received;
    let sent_ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let received = api_ids(&frames, &sent_ids);
    let dups = received.len()
        - received
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len();
    let want: Vec<&String> = sent.iter().filter(|(_, mine)| *mine).map(|(id, _)| id).collect();
    let missing: Vec<&&String> = want.iter().filter(|id| !received.contains(id)).collect();
    let strangers: Vec<&String> = sent
        .iter()
        .filter(|(id, mine)| !mine && received.contains(id))
        .map(|(id, _)| id)
        .collect();
    println!(
        "seam: sent {} for the tab {} received {} duplicated {dups} missing {} over {reconnects} reconnects",
        sent.len(),
        want.len(),
        received.len(),
        missing.len()
    );
    assert_eq!(dups, 0, "duplicates");
    assert!(strangers.is_empty(), "another topic's messages: {strangers:?}");
    // In order across the reconnects: each replay starts after the last
    // id (a position `{user}.{home}` moves one part forward at a time).
    let key = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').expect("a history id");
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    for w in frames.windows(2) {
        match (w[0].split_once('.'), w[1].split_once('.')) {
            (Some((u0, h0)), Some((u1, h1))) => assert!(
                (key(u0) < key(u1) && h0 == h1) || (u0 == u1 && key(h0) < key(h1)),
                "{} then {}",
                w[0],
                w[1]
            ),
            _ => assert!(key(&w[0]) < key(&w[1]), "{} then {}", w[0], w[1]),
        }
    }
    assert!(missing.is_empty(), "missing {missing:?}");
    assert_eq!(received.len(), want.len());
    }
}
