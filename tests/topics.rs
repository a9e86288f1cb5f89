//! Topics as a user sees them (README "Topics"): streams follow them with
//! `?topics=`, who may follow what (`auth.public_topics`, the proxy's
//! topics header, a token's `topics` claim), sends to a topic and their
//! answers, refusals that name the topic, limit or pair and leave nothing
//! behind, replay, join/leave, the listing's `topics` and the metrics.
//! Every scenario runs on both engines with an in-process node.
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sse_notify::config::{AuthMode, Config};

const WAIT: Duration = Duration::from_secs(5);

/// A config where anyone may follow any topic (`auth.public_topics = ["*"]`).
fn open_topics(env: &Env) -> Config {
    let mut c = env.config();
    c.auth.public_topics = vec!["*".into()];
    c
}

/// `GET {stream}?{query}` with the given headers.
async fn stream_get(node: &TestNode, query: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = stream_client().get(format!("{}?{query}", node.stream_url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap_or_else(|_| panic!("?{query}: no response head within 5s"))
        .unwrap_or_else(|e| panic!("?{query}: {e}"))
}

/// The `data` of the first event, which must be `connection_established`.
async fn established(c: &mut SseClient) -> Value {
    let ev = c
        .next_event(WAIT)
        .await
        .expect("connection_established within 5s");
    assert_eq!(ev.event, "connection_established");
    serde_json::from_str(&ev.data).expect("connection_established data is JSON")
}

/// A stream opened with `headers` asking `?{query}`: the stream and its
/// `connection_established` data.
async fn follow_with(node: &TestNode, query: &str, headers: &[(&str, &str)]) -> (SseClient, Value) {
    let url = format!("{}?{query}", node.stream_url());
    let mut c = SseClient::open(&url, headers).await;
    assert_eq!(c.status, 200, "stream with ?{query} and {headers:?}");
    let data = established(&mut c).await;
    (c, data)
}

/// A stream of `user` (header auth from loopback) asking `?{query}`.
async fn follow(node: &TestNode, user: &str, query: &str) -> (SseClient, Value) {
    follow_with(node, query, &[("X-Remote-User", user)]).await
}

/// The message of an error envelope of `status`.
async fn refused(resp: reqwest::Response, status: u16, what: &str) -> String {
    let body = expect_envelope(resp, status, what).await;
    body["message"].as_str().unwrap_or_default().to_string()
}

/// The datas of the events `c` got before the broadcast `marker` (sends
/// reach one stream in order: nothing sent before it is still on its way).
async fn datas_before(c: &mut SseClient, marker: &str) -> Vec<String> {
    c.events_before(marker, WAIT)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect()
}

/// Sends a broadcast whose data is `marker`.
async fn mark(node: &TestNode, marker: &str) {
    send_ok(&node.admin_base(), json!({"data": marker})).await;
}

on_every_engine! {
    async fn a_topic_message_reaches_exactly_its_followers(env: Env) {
        let node = TestNode::start(open_topics(&env)).await;
        let admin = node.admin_base();
        let (mut alice_doc, a1) = follow(&node, "alice", "topics=doc:42").await;
        let (mut alice_plain, a2) = follow(&node, "alice", "").await;
        // Repeated parameters add up, duplicates count once, sorted.
        let (mut bob, b) = follow(&node, "bob", "topics=team:7,doc:42&topics=doc:42").await;
        let (mut carol, _) = follow(&node, "carol", "topics=team:7").await;
        assert_eq!(a1["topics"], json!(["doc:42"]));
        assert_eq!(a2["topics"], json!([]));
        assert_eq!(b["topics"], json!(["doc:42", "team:7"]));

        let (status, resp) = send(&admin, json!({"topic": "doc:42", "data": {"n": 1}})).await;
        assert_eq!(status, 200, "{resp}");
        let id = resp["data"]["message_id"].as_str().expect("message_id").to_string();
        assert_eq!(
            resp["data"],
            json!({"message_id": id, "topic": "doc:42", "event": "message", "connections": 2})
        );
        // Nobody follows it: sent to nobody, not an error.
        let (status, resp) = send(&admin, json!({"topic": "doc:43", "data": 1})).await;
        assert_eq!((status, &resp["data"]["connections"]), (200, &json!(0)), "{resp}");
        mark(&node, "end").await;
        assert_eq!(datas_before(&mut alice_doc, "end").await, vec![r#"{"n":1}"#]);
        assert_eq!(datas_before(&mut bob, "end").await, vec![r#"{"n":1}"#]);
        assert!(datas_before(&mut alice_plain, "end").await.is_empty());
        assert!(datas_before(&mut carol, "end").await.is_empty());

        // The registry's records carry the topics, in every listing.
        let whole = listing(&admin).await;
        assert_eq!(whole["connection_details"]["bob"][0]["topics"], json!(["doc:42", "team:7"]));
        let alice = listed_user(&admin, "alice").await;
        let mut topics: Vec<Value> = alice["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| c["topics"].clone())
            .collect();
        topics.sort_by_key(|t| t.as_array().map(Vec::len));
        assert_eq!(topics, vec![json!([]), json!(["doc:42"])]);

        assert_eq!(metric(&admin, "sse_notify_topic_messages_sent_total").await, 2.0);
        assert_eq!(metric(&admin, "sse_notify_followed_topics").await, 2.0);
        drop((bob, carol));
        wait_until(WAIT, "team:7 no longer followed on the node", || {
            let admin = admin.clone();
            async move { metric(&admin, "sse_notify_followed_topics").await == 1.0 }
        })
        .await;
    }

    async fn bad_or_refused_topics_name_what_and_leave_nothing(env: Env) {
        let mut c = env.config();
        c.auth.public_topics = vec!["doc:*".into()];
        c.limits.max_topics_per_stream = 2;
        let node = TestNode::start(c).await;
        let admin = node.admin_base();
        let user = [("X-Remote-User", "alice")];
        let m = refused(stream_get(&node, "topics=doc:1,a%20b", &user).await, 400, "bad name").await;
        assert!(m.starts_with("topics: \"a b\""), "{m}");
        let m = refused(stream_get(&node, "topics=doc:*", &user).await, 400, "a pattern").await;
        assert!(m.starts_with("topics: \"doc:*\""), "{m}");
        let long = "x".repeat(129);
        let m = refused(stream_get(&node, &format!("topics={long}"), &user).await, 400, "long").await;
        assert!(m.contains("128"), "{m}");
        let m = refused(
            stream_get(&node, "topics=doc:1,doc:2&topics=doc:3", &user).await,
            400,
            "three topics, two allowed",
        )
        .await;
        assert!(m.contains("limits.max_topics_per_stream (2)"), "{m}");
        let m = refused(stream_get(&node, "topics=doc:1,team:7", &user).await, 403, "team:7").await;
        assert!(m.contains("\"team:7\""), "{m}");
        assert!(listed_ids(&admin).await.is_empty(), "a refused stream was registered");
        assert_eq!(metric(&admin, "sse_notify_followed_topics").await, 0.0);

        // Duplicates and blanks do not count against the limit.
        let (mut tab, data) = follow(&node, "alice", "topics=doc:1,,doc:1,doc:2&topics=").await;
        assert_eq!(data["topics"], json!(["doc:1", "doc:2"]));

        for (body, starts) in [
            (json!({"topic": "doc:1", "to": "alice", "data": 1}), "topic and to:"),
            (
                json!({"topic": "doc:1", "all_connections": false, "data": 1}),
                "topic and all_connections:",
            ),
            (json!({"topic": "doc 1", "data": 1}), "topic: \"doc 1\""),
            (json!({"topic": ["doc:1"], "data": 1}), "topic: must be a topic name"),
            (json!({"topic": null, "data": 1}), "topic: must be a topic name"),
        ] {
            let (status, resp) = send(&admin, body.clone()).await;
            let m = resp["message"].as_str().unwrap_or_default();
            assert_eq!(status, 400, "{body}: {resp}");
            assert!(m.starts_with(starts), "{body}: {m}");
        }
        let batch = json!({"messages": [
            {"topic": "doc:1", "data": "not sent"},
            {"data": "not sent"},
            {"to": "alice", "data": "not sent"},
            {"topic": "doc:1,doc:2", "data": "not sent"},
        ]});
        let (status, resp) = admin_post(&admin, "send/batch/", &batch).await;
        let m = resp["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{resp}");
        assert!(m.starts_with("messages[3].topic: \"doc:1,doc:2\""), "{m}");
        mark(&node, "end").await;
        assert!(datas_before(&mut tab, "end").await.is_empty(), "a refused send reached a follower");
        assert_eq!(metric(&admin, "sse_notify_topic_messages_sent_total").await, 0.0);
    }

    async fn the_proxy_header_is_trusted_from_trusted_proxies_only(env: Env) {
        let node = TestNode::start(env.config()).await;
        let admin = node.admin_base();
        let both = |topics| [("X-Remote-User", "alice"), ("X-Remote-Topics", topics)];
        let (_tab, data) = follow_with(&node, "topics=team:7,doc:42", &both("doc:*, team:7")).await;
        assert_eq!(data["topics"], json!(["doc:42", "team:7"]));
        let m = refused(
            stream_get(&node, "topics=doc:42,team:8", &both("doc:*,team:7")).await,
            403,
            "team:8 not in the header",
        )
        .await;
        assert!(m.contains("\"team:8\"") && m.contains("X-Remote-Topics"), "{m}");
        let m = refused(
            stream_get(&node, "topics=doc:42", &[("X-Remote-User", "alice")]).await,
            403,
            "no header, no public topics",
        )
        .await;
        assert!(m.contains("\"doc:42\""), "{m}");
        let m = refused(
            stream_get(&node, "topics=doc:42", &both("doc:*,bad topic")).await,
            400,
            "a bad pattern from the proxy",
        )
        .await;
        assert!(m.contains("X-Remote-Topics") && m.contains("bad topic"), "{m}");

        // The same headers from a peer that is not a trusted proxy.
        let mut c = env.config();
        c.auth.trusted_proxies = vec!["10.0.0.0/8".into()];
        let far = TestNode::start(c).await;
        refused(stream_get(&far, "topics=doc:42", &both("*")).await, 403, "untrusted").await;
        let m = refused(
            stream_get(&far, "topics=doc:42", &[("X-Remote-Topics", "*")]).await,
            403,
            "the topics header alone from an untrusted peer",
        )
        .await;
        assert!(m.contains("X-Remote-Topics"), "{m}");
        assert_eq!(far.daemon.live_streams(), 0, "an untrusted peer's stream was admitted");
        listed_ids_become(&admin, &[conn_id(&data)]).await;
    }

    async fn a_token_says_what_its_user_may_follow(env: Env) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("jwt.secret");
        std::fs::write(&secret, "topic-test-secret\n").unwrap();
        let mut c = env.config();
        c.auth.mode = AuthMode::Token;
        c.auth.token_secret_file = secret.to_string_lossy().into_owned();
        c.auth.public_topics = vec!["news".into()];
        let node = TestNode::start(c).await;
        let token = |topics: Option<Value>| {
            let mut claims = json!({"sub": "alice", "exp": now() as u64 + 600});
            if let Some(t) = topics {
                claims["topics"] = t;
            }
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(b"topic-test-secret"),
            )
            .unwrap()
        };
        let docs = token(Some(json!(["doc:*"])));
        // Percent-encoded, as a browser's URLSearchParams writes it.
        let (_tab, data) =
            follow_with(&node, &format!("token={docs}&topics=doc%3A42%2Cnews"), &[]).await;
        assert_eq!(data["topics"], json!(["doc:42", "news"]));
        let m = refused(
            stream_get(&node, &format!("token={docs}&topics=doc:42,team:7"), &[]).await,
            403,
            "team:7 not in the claim",
        )
        .await;
        assert!(m.contains("\"team:7\"") && m.contains("topics claim"), "{m}");
        let m = refused(
            stream_get(&node, &format!("token={}&topics=doc:1", token(None)), &[]).await,
            403,
            "no claim",
        )
        .await;
        assert!(m.contains("\"doc:1\""), "{m}");
        for bad in [json!("doc:*"), json!(["doc:*", 7]), json!(["a b"])] {
            let m = refused(
                stream_get(&node, &format!("token={}", token(Some(bad.clone()))), &[]).await,
                401,
                "a bad claim",
            )
            .await;
            assert!(m.contains("topics claim"), "{bad}: {m}");
        }
        listed_ids_become(&node.admin_base(), &[conn_id(&data)]).await;
    }

    async fn without_auth_only_public_topics_may_be_followed(env: Env) {
        let mut c = env.config();
        c.auth.mode = AuthMode::None;
        c.auth.public_topics = vec!["news:*".into()];
        let node = TestNode::start(c).await;
        let (_tab, data) = follow_with(&node, "user=al&topics=news:1", &[]).await;
        assert_eq!(data["topics"], json!(["news:1"]));
        // Nobody vouches for a topics header here.
        let m = refused(
            stream_get(&node, "user=al&topics=doc:1", &[("X-Remote-Topics", "*")]).await,
            403,
            "doc:1 is not public",
        )
        .await;
        assert!(m.contains("\"doc:1\"") && m.contains("auth.public_topics"), "{m}");
        listed_ids_become(&node.admin_base(), &[conn_id(&data)]).await;
    }

    async fn join_and_leave_reach_the_other_followers_only(env: Env) {
        let mut c = open_topics(&env);
        c.topics.join_leave = true;
        let node = TestNode::start(c).await;
        let resp = stream_get(&node, "topics=doc:42", &[("X-Remote-User", "alice")]).await;
        assert_eq!(resp.status().as_u16(), 200);
        let mut alice = RawStream::of(resp);
        alice.established().await;
        let (mut bob, b) = follow(&node, "bob", "topics=doc:42,team:7").await;
        let bob_id = b["connection_id"].as_str().expect("connection_id").to_string();
        let (carol, _) = follow(&node, "carol", "topics=team:9").await;

        let join = next_event_frame(&mut alice).await;
        assert!(!join.contains("\nid:") && !join.starts_with("id:"), "a join has no id: {join:?}");
        let (event, data) = join.split_once('\n').expect("event and data lines");
        assert_eq!(event, "event: join");
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
        assert_eq!(data, json!({"topic": "doc:42", "username": "bob", "connection_id": bob_id}));
        // Carol shares no topic with alice; bob hears no join of his own.
        drop(carol);
        mark(&node, "after carol").await;
        // (Alice's own join may reach bob too: it travels on the bus, and
        // bob may be registered before it arrives, as on a cluster, where
        // it comes through another primary than bob's registration.)
        let heard: Vec<String> = datas_before(&mut bob, "after carol")
            .await
            .into_iter()
            .filter(|d| !d.contains(r#""username":"alice""#))
            .collect();
        assert!(heard.is_empty(), "bob heard neither carol nor himself: {heard:?}");
        assert!(next_event_frame(&mut alice).await.contains("after carol"));

        drop(bob);
        let leave = next_event_frame(&mut alice).await;
        let (event, data) = leave.split_once('\n').expect("event and data lines");
        assert_eq!(event, "event: leave");
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
        assert_eq!(data, json!({"topic": "doc:42", "username": "bob", "connection_id": bob_id}));
    }
}

// A replay: history.
on_every_engine! {
    async fn a_replay_merges_user_broadcast_and_topic_messages_once_in_order(env: Env) {
        let node = TestNode::start(open_topics(&env)).await;
        let admin = node.admin_base();
        let (mut tab, _) = follow(&node, "alice", "topics=doc:42").await;
        let sent = send_ok(&admin, json!({"to": "alice", "data": 0})).await;
        // Where the tab stood after it (on a cluster, its own position).
        let first = tab.next_named("message", WAIT).await.expect("first message").id;
        assert_eq!(api_id(&first, &sent), sent);
        drop(tab);
        wait_until(WAIT, "alice's stream gone from the node", || {
            let n = node.daemon.live_streams();
            async move { n == 0 }
        })
        .await;

        let u1 = send_ok(&admin, json!({"to": "alice", "data": "u1"})).await;
        let t1 = send_ok(&admin, json!({"topic": "doc:42", "data": "t1"})).await;
        let b1 = send_ok(&admin, json!({"data": "b1", "event": "news"})).await;
        send_ok(&admin, json!({"topic": "team:7", "data": "not followed"})).await;
        send_ok(&admin, json!({"to": "bob", "data": "not hers"})).await;
        let t2 = send_ok(&admin, json!({"topic": "doc:42", "data": "t2", "event": "comment"})).await;
        let sent = [u1.clone(), t1.clone(), b1.clone(), t2.clone()];

        let replayed = |query: &'static str| {
            let (node, first, sent) = (&node, first.clone(), &sent);
            async move {
                let url = format!("{}?{query}", node.stream_url());
                let resp = stream_client()
                    .get(url)
                    .header("X-Remote-User", "alice")
                    .header("Last-Event-ID", &first)
                    .send()
                    .await
                    .expect("stream request");
                assert_eq!(resp.status().as_u16(), 200);
                let mut raw = RawStream::of(resp);
                raw.established().await;
                // A heartbeat follows the replay in the stream's queue.
                let text = raw.wait_for_heartbeats(1, WAIT).await;
                let got = frames(&text);
                let ids: Vec<String> = got.iter().map(|(id, _, _)| id.clone()).collect();
                api_ids_after(&first, &ids, sent)
                    .into_iter()
                    .zip(got)
                    .map(|(id, (_, event, data))| (id, event, data))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            replayed("topics=doc:42").await,
            vec![
                (u1.clone(), "message".into(), "\"u1\"".into()),
                (t1, "message".into(), "\"t1\"".into()),
                (b1.clone(), "news".into(), "\"b1\"".into()),
                (t2, "comment".into(), "\"t2\"".into()),
            ]
        );
        // A stream gets the topics it follows now, no others.
        assert_eq!(
            replayed("").await,
            vec![
                (u1, "message".into(), "\"u1\"".into()),
                (b1, "news".into(), "\"b1\"".into()),
            ]
        );
    }
}

on_every_engine! {
    async fn presence_says_who_follows_what_now(env: Env) {
        let node = TestNode::start(open_topics(&env)).await;
        let admin = node.admin_base();
        let (a1, d1) = follow(&node, "alice", "topics=doc:1,doc:2").await;
        let (a2, d2) = follow(&node, "alice", "topics=doc:1").await;
        let (b1, d3) = follow(&node, "bob", "topics=doc:1,team:7,doc%2F42").await;
        let (c1, _) = follow(&node, "carol", "").await;

        let whole = get_data(&admin, "topics/").await;
        assert_eq!(
            whole,
            json!({"topics": [
                {"topic": "doc/42", "connection_count": 1, "user_count": 1},
                {"topic": "doc:1", "connection_count": 3, "user_count": 2},
                {"topic": "doc:2", "connection_count": 1, "user_count": 1},
                {"topic": "team:7", "connection_count": 1, "user_count": 1},
            ], "topic_count": 4})
        );
        let first = get_data(&admin, "topics/?limit=3").await;
        assert_eq!(first["topics"], json!(whole["topics"].as_array().unwrap()[..3]));
        assert_eq!(first["topic_count"], json!(4));
        let cursor = first["next_cursor"].as_str().expect("a next_cursor after 3 of 4");
        let rest = get_data(&admin, &format!("topics/?limit=3&cursor={cursor}")).await;
        assert_eq!(rest["topics"], json!(whole["topics"].as_array().unwrap()[3..]));
        assert_eq!(rest["next_cursor"], Value::Null);

        let doc1 = get_data(&admin, "topics/doc:1/").await;
        assert_eq!(
            (&doc1["topic"], &doc1["connection_count"], &doc1["user_count"], &doc1["users"]),
            (&json!("doc:1"), &json!(3), &json!(2), &json!(["alice", "bob"]))
        );
        let records = doc1["connections"].as_array().expect("connections");
        let ids: Vec<&str> = records.iter().map(|r| r["connection_id"].as_str().unwrap()).collect();
        // By connection time: in the order they opened.
        assert_eq!(ids, [conn_id(&d1), conn_id(&d2), conn_id(&d3)]);
        assert_eq!(records[2]["topics"], json!(["doc/42", "doc:1", "team:7"]));
        assert_eq!(records[2]["username"], json!("bob"));
        let slash = get_data(&admin, "topics/doc%2F42").await;
        assert_eq!(slash["users"], json!(["bob"]));
        // Presence, not existence: nobody follows it, so zeros.
        assert_eq!(
            get_data(&admin, "topics/nobody:here/").await,
            json!({"topic": "nobody:here", "connection_count": 0, "user_count": 0,
                   "users": [], "connections": []})
        );
        let (status, body) = admin_call(reqwest::Method::GET, &admin, "topics/a%20b/").await;
        assert_eq!(status, 400, "{body}");
        assert!(body["message"].as_str().unwrap_or_default().starts_with("topic: \"a b\""), "{body}");
        let (status, body) = admin_call(reqwest::Method::POST, &admin, "topics/").await;
        assert_eq!(status, 405, "{body}");

        // The last follower gone, the topic is gone.
        drop((a1, b1, c1));
        wait_until(WAIT, "only alice's second tab's doc:1 listed", || {
            let admin = admin.clone();
            async move {
                get_data(&admin, "topics/").await
                    == json!({"topics": [{"topic": "doc:1", "connection_count": 1, "user_count": 1}],
                              "topic_count": 1})
            }
        })
        .await;
        drop(a2);
        wait_until(WAIT, "no topic listed", || {
            let admin = admin.clone();
            async move { get_data(&admin, "topics/").await == json!({"topics": [], "topic_count": 0}) }
        })
        .await;
    }

    async fn the_whole_topic_listing_is_the_pages_joined(env: Env) {
        let mut c = open_topics(&env);
        c.limits.max_topics_per_stream = 600;
        let node = TestNode::start(c).await;
        let admin = node.admin_base();
        // More than one piece of the streamed answer.
        let names: Vec<String> = (0..600).map(|i| format!("t:{i:03}")).collect();
        let (_tab, data) = follow(&node, "alice", &format!("topics={}", names.join(","))).await;
        assert_eq!(data["topics"].as_array().map(Vec::len), Some(600));
        let whole = get_data(&admin, "topics/").await;
        assert_eq!(whole["topic_count"], json!(600));
        let listed: Vec<&str> = whole["topics"]
            .as_array()
            .expect("topics")
            .iter()
            .map(|t| t["topic"].as_str().unwrap())
            .collect();
        assert_eq!(listed, names);
        let mut paged = Vec::new();
        let mut query = "limit=250".to_string();
        loop {
            let page = get_data(&admin, &format!("topics/?{query}")).await;
            paged.extend(page["topics"].as_array().expect("topics").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => query = format!("limit=250&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(json!(paged), whole["topics"]);
    }
}

/// With Redis, presence and sends span the nodes: either node lists the
/// followers of both and a send to either reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_sends_span_the_nodes_with_redis() {
    let env = Env::redis();
    let a = TestNode::start(open_topics(&env)).await;
    let b = TestNode::start(open_topics(&env)).await;
    let (mut alice, _) = follow(&a, "alice", "topics=doc:1").await;
    let (mut bob, _) = follow(&b, "bob", "topics=doc:1,team:7").await;
    for node in [&a, &b] {
        let admin = node.admin_base();
        let doc1 = get_data(&admin, "topics/doc:1/").await;
        assert_eq!(
            (&doc1["connection_count"], &doc1["users"]),
            (&json!(2), &json!(["alice", "bob"])),
            "{doc1}"
        );
        assert_eq!(get_data(&admin, "topics/").await["topic_count"], json!(2));
    }
    let (status, resp) = send(&a.admin_base(), json!({"topic": "doc:1", "data": "both"})).await;
    assert_eq!(
        (status, &resp["data"]["connections"]),
        (200, &json!(2)),
        "{resp}"
    );
    for (who, tab) in [("alice", &mut alice), ("bob", &mut bob)] {
        let ev = tab.next_named("message", WAIT).await;
        assert_eq!(ev.map(|e| e.data), Some("\"both\"".into()), "{who}");
    }
}

/// The connection id of a stream's `connection_established` data.
fn conn_id(data: &Value) -> &str {
    data["connection_id"].as_str().expect("connection_id")
}

/// `{method} {admin}/notifications/{path}` without a body.
async fn admin_call(method: reqwest::Method, admin_base: &str, path: &str) -> (u16, Value) {
    admin(method, &format!("{admin_base}/notifications/{path}"), None).await
}

/// The `data` of a `GET {admin}/notifications/{path}` that must answer 200.
async fn get_data(admin_base: &str, path: &str) -> Value {
    let (status, body) = admin_call(reqwest::Method::GET, admin_base, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body["data"].clone()
}

/// `POST {admin}/notifications/{path}` with a JSON body.
async fn admin_post(admin_base: &str, path: &str, body: &Value) -> (u16, Value) {
    admin(
        reqwest::Method::POST,
        &format!("{admin_base}/notifications/{path}"),
        Some(&body.to_string()),
    )
    .await
}

/// The next frame of `raw` that is not a comment (heartbeats).
async fn next_event_frame(raw: &mut RawStream) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let frame = raw
            .next_frame(left)
            .await
            .unwrap_or_else(|| panic!("no event within 5s after {:?}", raw.text()));
        // `established` leaves the blank line that ends its frame.
        let frame = frame.trim_start_matches('\n');
        if !frame.lines().all(|l| l.starts_with(':')) {
            return frame.to_string();
        }
    }
}

/// (id, event, data) of each message frame in `text`.
fn frames(text: &str) -> Vec<(String, String, String)> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (String::new(), "message".to_string(), None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_string();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_string());
                }
            }
            Some((id, event, data?))
        })
        .collect()
}
