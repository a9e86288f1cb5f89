//! `POST {base}/send/batch/`: many messages in one request, validated as a
//! whole, delivered in order, on both engines.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn post_batch(node: &TestNode, body: &str) -> (u16, Value) {
    admin(
        reqwest::Method::POST,
        &node.admin_url("/notifications/send/batch/"),
        Some(body),
    )
    .await
}

on_every_engine! {
    async fn a_batch_reaches_each_target_in_order_with_one_result_per_message(env: Env) {
        let node = TestNode::start(env.config()).await;
        let (mut a1, _) = SseClient::connect(&node, "alice").await;
        let (mut a2, _) = SseClient::connect(&node, "alice").await;
        let (mut b, _) = SseClient::connect(&node, "bob").await;
        let body = json!({"messages": [
            {"to": "alice", "data": {"n": 1}},
            {"to": "bob", "data": {"n": 2}, "event": "news"},
            {"data": {"n": 3}},
            {"to": "alice", "data": {"n": 4}, "all_connections": false},
            {"to": "nobody", "data": 5},
        ]});
        let (status, answer) = post_batch(&node, &body.to_string()).await;
        assert_eq!(status, 200, "{answer}");
        let results = answer["data"]["results"].as_array().expect("results");
        let summary: Vec<(Value, Value, Value, Value)> = results
            .iter()
            .map(|r| (r["to"].clone(), r["event"].clone(), r["all_connections"].clone(), r["connections"].clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (json!("alice"), json!("message"), json!(true), json!(2)),
                (json!("bob"), json!("news"), json!(true), json!(1)),
                (Value::Null, json!("message"), json!(true), json!(3)),
                (json!("alice"), json!("message"), json!(false), json!(1)),
                (json!("nobody"), json!("message"), json!(true), json!(0)),
            ],
            "results in the order of the messages: {answer}"
        );
        let ids: Vec<&str> = results.iter().map(|r| r["message_id"].as_str().expect("id")).collect();
        // Ids are ordered within what one user can receive (on a cluster
        // each partition of users has its own sequence): alice's differ.
        let mut alices = vec![ids[0], ids[2], ids[3]];
        alices.sort();
        alices.dedup();
        assert_eq!(alices.len(), 3, "every message of alice has its own id: {ids:?}");
        let all: Vec<String> = ids.iter().map(|id| id.to_string()).collect();

        let within = Duration::from_secs(5);
        // The oldest alice tab: 1, 3, 4 in that order (4 is first-only).
        let mut frames = Vec::new();
        for _ in 0..3 {
            let e = a1.next_named("message", within).await.expect("alice's first tab got its messages");
            frames.push((e.id, e.data));
        }
        let frame_ids: Vec<String> = frames.iter().map(|(id, _)| id.clone()).collect();
        let mut seen: Vec<(String, String)> = api_ids(&frame_ids, &all)
            .into_iter()
            .zip(frames.into_iter().map(|(_, data)| data))
            .collect();
        let want = vec![
            (ids[0].to_string(), r#"{"n":1}"#.to_string()),
            (ids[2].to_string(), r#"{"n":3}"#.to_string()),
            (ids[3].to_string(), r#"{"n":4}"#.to_string()),
        ];
        if env.engine() == "redis-cluster" {
            // Two sequences: in order within each (alice's 1 then 4).
            let order = |seen: &[(String, String)]| -> Vec<String> {
                seen.iter().filter(|(id, _)| id.ends_with('.')).map(|(_, d)| d.clone()).collect()
            };
            assert_eq!(order(&seen), [r#"{"n":1}"#, r#"{"n":4}"#], "{seen:?}");
            seen.sort();
            let mut want = want;
            want.sort();
            assert_eq!(seen, want);
        } else {
            assert_eq!(seen, want);
        }
        let mut second = Vec::new();
        for _ in [0, 2] {
            second.push(a2.next_named("message", within).await.expect("alice's second tab").id);
        }
        let mut second = api_ids(&second, &all);
        let mut expected = vec![ids[0].to_string(), ids[2].to_string()];
        if env.engine() == "redis-cluster" {
            second.sort();
            expected.sort();
        }
        assert_eq!(second, expected);
        let news = b.next_named("news", within).await.expect("bob's news");
        assert_eq!(news.data, r#"{"n":2}"#);
        let bcast = b.next_named("message", within).await.expect("bob's broadcast");
        let mut bobs = api_ids(&[news.id, bcast.id], &all);
        let mut expected = vec![ids[1].to_string(), ids[2].to_string()];
        if env.engine() == "redis-cluster" {
            bobs.sort();
            expected.sort();
        }
        assert_eq!(bobs, expected);
    }

    async fn one_bad_message_rejects_the_batch_naming_it_and_nothing_is_sent(env: Env) {
        let mut config = env.config();
        config.api.max_batch = 3;
        let node = TestNode::start(config).await;
        let (mut a, _) = SseClient::connect(&node, "alice").await;
        for (body, names) in [
            (json!({"messages": [{"to": "alice", "data": 1}, {"to": "alice", "data": 2, "event": "a b"}]}), "messages[1].event"),
            (json!({"messages": [{"to": "alice", "data": 1}, {"to": "alice"}]}), "messages[1].data"),
            (json!({"messages": [{"to": "alice", "data": 1, "all_conections": false}]}), "all_conections"),
            (json!({"messages": [{"to": "alice", "data": 1}, 7]}), "messages[1]"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": [{"data": 1}, {"data": 2}, {"data": 3}, {"data": 4}]}), "max_batch"),
            (json!({"message": [{"data": 1}]}), "messages"),
        ] {
            let (status, answer) = post_batch(&node, &body.to_string()).await;
            assert_eq!(status, 400, "{body} -> {answer}");
            let message = answer["message"].as_str().unwrap_or_default();
            assert!(message.contains(names), "{body}: the error names {names}: {message}");
        }
        // Nothing of those batches arrived: the next message is the marker.
        let (status, answer) = admin(
            reqwest::Method::POST,
            &node.admin_url("/notifications/send/"),
            Some(r#"{"to":"alice","data":"marker"}"#),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let e = a.next_named("message", Duration::from_secs(5)).await.expect("marker");
        assert_eq!(e.data, r#""marker""#, "a rejected batch delivered something");
    }
}

/// `sse-notify send --batch FILE` posts a JSON-lines file through a running
/// node (here the embedded engine, as installed by default).
#[tokio::test]
async fn cli_send_batch_posts_a_file_of_messages() {
    let node = BinaryNode::spawn("", "").await;
    let (mut alice, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
    let (mut bob, _) = SseClient::connect_url(&node.stream_url(), "bob").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("messages.jsonl");
    std::fs::write(
        &file,
        "{\"to\":\"alice\",\"data\":{\"n\":1}}\n\n{\"to\":\"bob\",\"data\":2,\"event\":\"news\"}\n",
    )
    .expect("write");
    let cfg = node.cli_config_path.to_str().expect("path").to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&args)
        })
    };
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = vec!["send".into(), "-c".into(), cfg.clone()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (rc, stdout, stderr) = run(args(&["--batch", file.to_str().expect("path")]))
        .await
        .expect("cli");
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("sent 2 messages to 2 connections"),
        "{stdout}"
    );
    let e = alice
        .next_named("message", Duration::from_secs(5))
        .await
        .expect("alice");
    assert_eq!(e.data, r#"{"n":1}"#);
    let e = bob
        .next_named("news", Duration::from_secs(5))
        .await
        .expect("bob");
    assert_eq!(e.data, "2");

    // A bad line is a usage error naming it; nothing is sent.
    std::fs::write(&file, "{\"to\":\"alice\",\"data\":3}\nnot json\n").expect("write");
    let (rc, _, stderr) = run(args(&["--batch", file.to_str().expect("path")]))
        .await
        .expect("cli");
    assert_eq!(rc, 2, "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    // A message the node refuses names its index.
    std::fs::write(
        &file,
        "{\"to\":\"alice\",\"data\":3}\n{\"data\":4,\"event\":\"a b\"}\n",
    )
    .expect("write");
    let (rc, _, stderr) = run(args(&["--batch", file.to_str().expect("path")]))
        .await
        .expect("cli");
    assert_eq!(rc, 2, "{stderr}");
    assert!(stderr.contains("messages[1].event"), "{stderr}");
    let (status, _) = admin(
        reqwest::Method::POST,
        &node.admin_url("/notifications/send/"),
        Some(r#"{"to":"alice","data":"marker"}"#),
    )
    .await;
    assert_eq!(status, 200);
    let e = alice
        .next_named("message", Duration::from_secs(5))
        .await
        .expect("marker");
    assert_eq!(e.data, r#""marker""#, "a refused batch delivered something");
}
