//! The shortest path a user takes: open a stream, send, receive.
mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn stream_receives_a_message_sent_to_its_user() {
    let redis = RedisServer::start();
    let node = TestNode::start(test_config(&redis.url())).await;
    let (mut tab, id) = SseClient::connect(&node, "alice").await;
    assert_eq!(tab.headers["content-type"], "text/event-stream");

    let (status, body) = send(
        &node.admin_url(""),
        json!({"to": "alice", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 1);

    let ev = tab
        .next_named("message", Duration::from_secs(5))
        .await
        .expect("message");
    assert_eq!(ev.data, r#"{"n":1}"#);
    assert_eq!(ev.id, body["data"]["message_id"].as_str().unwrap());

    let mut conn = redis.conn();
    assert_eq!(registry_ids(&mut conn, "sse"), vec![id]);
}
