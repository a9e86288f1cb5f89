//! The admin REST API (README "HTTP API") as the existing app and a sysadmin use it:
//! an in-process node, a private redis-server, real SSE clients.
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use eventsource_stream::Event;
use reqwest::Method;
use serde_json::{json, Value};
use sse_notify::config::{Config, Secret};

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

/// One HTTP answer of the admin listener.
struct Resp {
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.status, self.content_type, self.text)
    }
}

async fn finish(resp: reqwest::Response) -> Resp {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.expect("response body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        content_type,
        headers,
        text,
        json,
    }
}

/// A request with optional raw body and extra headers.
async fn call(method: Method, url: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Resp {
    let mut req = http().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    finish(req.send().await.expect("admin request")).await
}

async fn get(url: &str) -> Resp {
    call(Method::GET, url, None, &[]).await
}

async fn post_send(node: &TestNode, body: &str) -> Resp {
    call(
        Method::POST,
        &node.admin_url("/notifications/send/"),
        Some(body),
        &[],
    )
    .await
}

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// True if `field` appears in `msg` as a whole word.
fn names_field(msg: &str, field: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    msg.match_indices(field).any(|(i, _)| {
        !ident(msg[..i].chars().next_back()) && !ident(msg[i + field.len()..].chars().next())
    })
}

/// An error envelope: that HTTP status, `application/json`, exactly
/// `{"code": status, "message": "..."}`, the message naming `field`.
#[track_caller]
fn assert_error(r: &Resp, status: u16, field: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "{what}: content-type {r:?}"
    );
    assert_eq!(
        keys_of(&r.json),
        set(&["code", "message"]),
        "{what}: envelope {r:?}"
    );
    assert_eq!(r.json["code"], json!(status), "{what}: {r:?}");
    let msg = r.json["message"].as_str().unwrap_or("");
    assert!(!msg.trim().is_empty(), "{what}: empty message {r:?}");
    if let Some(f) = field {
        assert!(
            names_field(msg, f),
            "{what}: message should name `{f}`: {r:?}"
        );
    }
}

/// A success envelope `{"code":200,"data":{...}}`; returns `data`.
#[track_caller]
fn ok_data(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "{what}: content-type {r:?}"
    );
    assert_eq!(keys_of(&r.json), set(&["code", "data"]), "{what}: {r:?}");
    assert_eq!(r.json["code"], json!(200), "{what}: {r:?}");
    r.json["data"].clone()
}

/// A send response of exactly the README "HTTP API" shape; returns the message id.
#[track_caller]
fn assert_sent(
    r: &Resp,
    to: Option<&str>,
    event: &str,
    all_connections: Option<bool>,
    connections: usize,
) -> String {
    let data = ok_data(r, "send");
    assert_eq!(
        keys_of(&data),
        set(&[
            "message_id",
            "to",
            "event",
            "all_connections",
            "connections"
        ]),
        "send data keys: {r:?}"
    );
    assert_eq!(data["to"], json!(to), "to: {r:?}");
    assert_eq!(data["event"], json!(event), "event: {r:?}");
    assert!(data["all_connections"].is_boolean(), "{r:?}");
    if let Some(all) = all_connections {
        assert_eq!(data["all_connections"], json!(all), "{r:?}");
    }
    assert_eq!(
        data["connections"],
        json!(connections),
        "connections: {r:?}"
    );
    let id = data["message_id"].as_str().expect("message_id string");
    assert!(!id.is_empty(), "{r:?}");
    id.to_string()
}

/// The next event on `tab`, which must be `event` with `id`.
async fn expect_event(tab: &mut SseClient, event: &str, id: &str, what: &str) -> Event {
    let ev = tab
        .next_event(WAIT)
        .await
        .unwrap_or_else(|| panic!("{what}: no event `{event}` within {WAIT:?}"));
    assert_eq!(ev.event, event, "{what}: got {ev:?}");
    assert_eq!(api_id(&ev.id, id), id, "{what}: got {ev:?}");
    ev
}

/// Sends a `marker` event to every tab of `user`; returns its id. A tab
/// whose next event is the marker received nothing in between.
async fn send_marker(node: &TestNode, user: &str, tabs: usize) -> String {
    let r = post_send(
        node,
        &json!({"to": user, "event": "marker", "data": "marker"}).to_string(),
    )
    .await;
    assert_sent(&r, Some(user), "marker", Some(true), tabs)
}

async fn expect_nothing_before_marker(tab: &mut SseClient, marker: &str, what: &str) {
    expect_event(tab, "marker", marker, what).await;
}

/// What a tab saw during `within`.
#[derive(Debug, PartialEq)]
enum Seen {
    Nothing,
    Ended,
    Event(String, String),
}

/// Waits `within`: the stream must neither deliver anything nor end.
async fn watch(tab: &mut SseClient, within: Duration) -> Seen {
    let start = std::time::Instant::now();
    match tab.next_event(within).await {
        Some(ev) => Seen::Event(ev.event, ev.data),
        None if start.elapsed() + Duration::from_millis(50) < within => Seen::Ended,
        None => Seen::Nothing,
    }
}

/// Writes a connection record exactly as README "Redis layout" lays it out, as another
/// (possibly dead) node would have.
fn inject(
    conn: &mut redis::Connection,
    id: &str,
    user: &str,
    connection_time: f64,
    last_heartbeat: f64,
) {
    inject_record(
        conn,
        id,
        user,
        connection_time,
        last_heartbeat,
        "dead-node-0",
    );
}

/// What the registry in Redis must be when exactly `live` (user, id) of
/// `node` are connected, ids of each user in connection order.
fn expected_registry(live: &[(&str, &str)]) -> RedisRegistry {
    RedisRegistry::of(live)
}

/// Waits until the registry in Redis is `want`, every record `node`'s.
async fn registry_becomes(redis: &RedisServer, want: &RedisRegistry, node: &TestNode) {
    if let Err(got) = redis.registry_becomes(want).await {
        panic!("registry\n got: {got:#?}\nwant: {want:#?}");
    }
    let mut conn = redis.conn();
    for id in want.conns.keys() {
        let owner: Option<String> = redis::cmd("HGET")
            .arg(format!("sse:conn:{id}"))
            .arg("node_id")
            .query(&mut conn)
            .unwrap();
        assert_eq!(
            owner.as_deref(),
            Some(node_id(node).as_str()),
            "node_id of {id}"
        );
    }
}

/// A config whose sweeper does not run during the test, so that records
/// injected as stale stay until the test removes them.
fn no_sweep_config(redis: &RedisServer) -> Config {
    let mut c = test_config(&redis.url());
    c.sweep.interval_secs = 3600;
    c
}

fn node_id(node: &TestNode) -> String {
    node.daemon.node_id().to_string()
}

fn enc(user: &str) -> String {
    percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC).to_string()
}

// ---------------------------------------------------------------- send

on_every_engine! {
    async fn send_to_user_reaches_every_tab(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut a1, _) = SseClient::connect(&node, "alice").await;
    let (mut a2, _) = SseClient::connect(&node, "alice").await;
    let (mut b1, _) = SseClient::connect(&node, "bob").await;

    // all_connections explicit true, then absent (default true).
    for body in [
        json!({"to": "alice", "data": {"n": 1}, "all_connections": true}),
        json!({"to": "alice", "data": {"n": 1}}),
    ] {
        let r = post_send(&node, &body.to_string()).await;
        let id = assert_sent(&r, Some("alice"), "message", Some(true), 2);
        for (i, tab) in [&mut a1, &mut a2].into_iter().enumerate() {
            let ev = expect_event(tab, "message", &id, &format!("alice tab {i}")).await;
            assert_eq!(ev.data, r#"{"n":1}"#);
        }
    }
    // The route without its trailing slash.
    let r = call(
        Method::POST,
        &node.admin_url("/notifications/send"),
        Some(r#"{"to":"alice","data":2}"#),
        &[],
    )
    .await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 2);
    for tab in [&mut a1, &mut a2] {
        expect_event(tab, "message", &id, "send without trailing slash").await;
    }
    let marker = send_marker(&node, "bob", 1).await;
    expect_nothing_before_marker(&mut b1, &marker, "bob got alice's message").await;
}
}

on_every_engine! {
    async fn send_first_connection_only_reaches_the_oldest_tab(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut oldest, oldest_id) = SseClient::connect(&node, "alice").await;
    let (mut newer, newer_id) = SseClient::connect(&node, "alice").await;

    let r = post_send(
        &node,
        r#"{"to":"alice","data":"first","all_connections":false}"#,
    )
    .await;
    let id = assert_sent(&r, Some("alice"), "message", Some(false), 1);
    let ev = expect_event(&mut oldest, "message", &id, "oldest tab").await;
    assert_eq!(ev.data, r#""first""#);
    let marker = send_marker(&node, "alice", 2).await;
    expect_nothing_before_marker(&mut newer, &marker, "newer tab got a first-only message").await;
    expect_nothing_before_marker(&mut oldest, &marker, "oldest tab").await;

    // The oldest tab leaves: the other one is now the first connection.
    drop(oldest);
    listed_ids_become(&node.admin_url(""), &[&newer_id]).await;
    assert_ne!(oldest_id, newer_id);
    let r = post_send(
        &node,
        r#"{"to":"alice","data":"again","all_connections":false}"#,
    )
    .await;
    let id = assert_sent(&r, Some("alice"), "message", Some(false), 1);
    expect_event(&mut newer, "message", &id, "remaining tab").await;
}
}

on_every_engine! {
    async fn broadcast_reaches_every_users_tabs_with_to_null(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut a1, _) = SseClient::connect(&node, "alice").await;
    let (mut a2, _) = SseClient::connect(&node, "alice").await;
    let (mut b1, _) = SseClient::connect(&node, "bob").await;

    for body in [
        json!({"data": {"all": true}}),
        json!({"to": null, "data": {"all": true}}),
        // all_connections is ignored for broadcasts.
        json!({"to": null, "data": {"all": true}, "all_connections": false}),
    ] {
        let r = post_send(&node, &body.to_string()).await;
        let id = assert_sent(&r, None, "message", None, 3);
        assert!(
            r.json["data"].as_object().unwrap().contains_key("to"),
            "`to` must be present (null) for a broadcast: {r:?}"
        );
        for (i, tab) in [&mut a1, &mut a2, &mut b1].into_iter().enumerate() {
            let ev = expect_event(tab, "message", &id, &format!("tab {i} of {body}")).await;
            assert_eq!(ev.data, r#"{"all":true}"#);
        }
    }
}
}

on_every_engine! {
    async fn send_to_user_without_connection_is_200_with_zero(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut other, _) = SseClient::connect(&node, "alice").await;
    for (body, all) in [
        (json!({"to": "nobody", "data": 1}), true),
        (
            json!({"to": "nobody", "data": 1, "all_connections": false}),
            false,
        ),
        (json!({"to": "nobody", "data": null, "event": "x"}), true),
    ] {
        let r = post_send(&node, &body.to_string()).await;
        let event = body["event"].as_str().unwrap_or("message");
        assert_sent(&r, Some("nobody"), event, Some(all), 0);
    }
    let marker = send_marker(&node, "alice", 1).await;
    expect_nothing_before_marker(&mut other, &marker, "alice got nobody's message").await;
}
}

on_every_engine! {
    async fn custom_event_names_and_any_json_data_arrive(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut tab, _) = SseClient::connect(&node, "alice").await;
    let max_event = "e".repeat(64);
    let cases = [
        ("order.updated", json!({"order": 7})),
        ("a:b-c_d.E9", json!([1, 2, 3])),
        (max_event.as_str(), json!("text")),
        ("message", json!(null)),
        ("n", json!(1.5)),
        ("t", json!(true)),
    ];
    for (event, data) in cases {
        let body = json!({"to": "alice", "event": event, "data": data});
        let r = post_send(&node, &body.to_string()).await;
        let id = assert_sent(&r, Some("alice"), event, Some(true), 1);
        let ev = expect_event(&mut tab, event, &id, event).await;
        assert_eq!(ev.data, serde_json::to_string(&data).unwrap(), "{event}");
    }
}
}

on_every_engine! {
    async fn data_with_unicode_and_newlines_arrives_as_compact_one_line_json(env: Env) {
    let node = TestNode::start(env.config()).await;
    let user = "zoé 李";
    let (mut tab, _) = SseClient::connect(&node, user).await;
    let data = json!({
        "title": "Héllo wörld 🎉 李",
        "body": "line one\nline two\r\nline three\rend",
        "nested": {"list": [1, "two\n", {"three": "\u{2028}\u{2029}"}], "empty": {}},
        "tab": "a\tb",
        "quote": "say \"hi\" \\ there",
    });
    // Sent pretty-printed, with newlines between fields.
    let body = serde_json::to_string_pretty(&json!({"to": user, "data": data})).unwrap();
    assert!(body.contains('\n'));
    let r = post_send(&node, &body).await;
    let id = assert_sent(&r, Some(user), "message", Some(true), 1);
    let ev = expect_event(&mut tab, "message", &id, "unicode data").await;
    assert!(
        !ev.data.contains('\n') && !ev.data.contains('\r'),
        "data must be one line: {:?}",
        ev.data
    );
    let got: Value = serde_json::from_str(&ev.data).expect("data is JSON");
    assert_eq!(got, data);
    assert_eq!(ev.data, serde_json::to_string(&data).unwrap(), "compact");
    assert!(
        ev.data.contains("🎉") || ev.data.contains("\\ud83c"),
        "{}",
        ev.data
    );
}
}

on_every_engine! {
    async fn data_numbers_arrive_unchanged(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut tab, _) = SseClient::connect(&node, "alice").await;
    // Integers the existing (Python) app may well send: within and beyond
    // 64 bits. The payload is the app's, and must not be rounded.
    for data in [
        "9007199254740993",
        "18446744073709551615",
        "-9223372036854775808",
        "18446744073709551616",
        "123456789012345678901234567890",
        r#"{"id":98765432109876543210}"#,
    ] {
        let body = format!(r#"{{"to":"alice","data":{data}}}"#);
        let r = post_send(&node, &body).await;
        let id = assert_sent(&r, Some("alice"), "message", Some(true), 1);
        let ev = expect_event(&mut tab, "message", &id, data).await;
        assert_eq!(ev.data, data, "the number in data was changed");
    }
}
}

// ---------------------------------------------------------------- bad input

on_every_engine! {
    async fn bad_send_bodies_are_400_naming_the_field_and_deliver_nothing(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut tab, _) = SseClient::connect(&node, "alice").await;
    let long_user = "u".repeat(151);
    let long_unicode_user = "é".repeat(151);
    let long_event = "e".repeat(65);
    let cases: Vec<(String, Option<&str>)> = vec![
        // Not JSON / not an object: the body is what is wrong.
        ("not json".into(), None),
        ("{\"to\":\"alice\",\"data\":1".into(), None),
        ("".into(), None),
        ("[{\"to\":\"alice\",\"data\":1}]".into(), None),
        ("\"alice\"".into(), None),
        ("42".into(), None),
        ("null".into(), None),
        // data
        (json!({"to": "alice"}).to_string(), Some("data")),
        (
            json!({"to": "alice", "event": "x"}).to_string(),
            Some("data"),
        ),
        // to
        (json!({"to": 5, "data": 1}).to_string(), Some("to")),
        (json!({"to": ["alice"], "data": 1}).to_string(), Some("to")),
        (
            json!({"to": {"u": "alice"}, "data": 1}).to_string(),
            Some("to"),
        ),
        (json!({"to": true, "data": 1}).to_string(), Some("to")),
        (json!({"to": "", "data": 1}).to_string(), Some("to")),
        (json!({"to": long_user, "data": 1}).to_string(), Some("to")),
        (
            json!({"to": long_unicode_user, "data": 1}).to_string(),
            Some("to"),
        ),
        (json!({"to": "ali\nce", "data": 1}).to_string(), Some("to")),
        (
            json!({"to": "alice\u{0}", "data": 1}).to_string(),
            Some("to"),
        ),
        (
            json!({"to": "al\u{7f}ice", "data": 1}).to_string(),
            Some("to"),
        ),
        (
            json!({"to": "al\u{1b}ice", "data": 1}).to_string(),
            Some("to"),
        ),
        // event
        (
            json!({"to": "alice", "data": 1, "event": "a\r\nb"}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": "a\nb"}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": "a\rb"}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": "msg\ndata: x"}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": "a b"}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": "évent"}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": "a/b"}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": long_event}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": ""}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": null}).to_string(),
            Some("event"),
        ),
        (
            json!({"to": "alice", "data": 1, "event": 7}).to_string(),
            Some("event"),
        ),
        // all_connections
        (
            json!({"to": "alice", "data": 1, "all_connections": null}).to_string(),
            Some("all_connections"),
        ),
        (
            json!({"data": 1, "all_connections": null}).to_string(),
            Some("all_connections"),
        ),
        (
            json!({"to": null, "data": 1, "all_connections": null}).to_string(),
            Some("all_connections"),
        ),
        (
            json!({"to": "alice", "data": 1, "all_connections": "false"}).to_string(),
            Some("all_connections"),
        ),
        (
            json!({"to": "alice", "data": 1, "all_connections": 0}).to_string(),
            Some("all_connections"),
        ),
        // unknown fields
        (
            json!({"to": "alice", "data": 1, "all_conections": false}).to_string(),
            Some("all_conections"),
        ),
        (
            json!({"data": 1, "user": "alice"}).to_string(),
            Some("user"),
        ),
        (
            json!({"to": "alice", "data": 1, "Event": "x"}).to_string(),
            Some("Event"),
        ),
    ];
    for (body, field) in &cases {
        let r = post_send(&node, body).await;
        assert_error(&r, 400, *field, &format!("send {body:?}"));
    }
    // Nothing of the above reached the open tab.
    let marker = send_marker(&node, "alice", 1).await;
    expect_nothing_before_marker(&mut tab, &marker, "a rejected send was delivered").await;

    // Boundaries that are fine.
    let user150 = "é".repeat(150);
    let r = post_send(&node, &json!({"to": user150, "data": 1}).to_string()).await;
    assert_sent(&r, Some(&user150), "message", Some(true), 0);
}
}

on_every_engine! {
    async fn duplicate_keys_are_400_naming_the_key_and_data_passes_through(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut tab, _) = SseClient::connect(&node, "alice").await;
    for (body, field) in [
        (r#"{"to":"alice","to":"bob","data":1}"#, "to"),
        (r#"{"to":"bob","data":1,"to":"alice"}"#, "to"),
        (r#"{"to":null,"data":1,"to":"alice"}"#, "to"),
        (r#"{"to":"alice","data":1,"data":2}"#, "data"),
        (r#"{"to":"alice","data":1,"event":"a","event":"b"}"#, "event"),
        (
            r#"{"to":"alice","data":1,"all_connections":true,"all_connections":false}"#,
            "all_connections",
        ),
        // An escaped name is the same name.
        (r#"{"to":"bob","\u0074o":"alice","data":1}"#, "to"),
    ] {
        assert_error(&post_send(&node, body).await, 400, Some(field), body);
    }
    let batch = node.admin_url("/notifications/send/batch/");
    for (body, field) in [
        (
            r#"{"messages":[{"to":"alice","data":1},{"to":"bob","data":2,"to":"alice"}]}"#,
            "to",
        ),
        (
            r#"{"messages":[{"to":"bob","data":1}],"messages":[{"to":"alice","data":1}]}"#,
            "messages",
        ),
    ] {
        let r = call(Method::POST, &batch, Some(body), &[]).await;
        assert_error(&r, 400, Some(field), body);
    }
    let r = call(
        Method::POST,
        &batch,
        Some(r#"{"messages":[{"to":"alice","data":1},{"to":"bob","to":"alice","data":2}]}"#),
        &[],
    )
    .await;
    assert!(r.json["message"].as_str().unwrap_or_default().contains("messages[1]"), "{r:?}");
    let marker = send_marker(&node, "alice", 1).await;
    expect_nothing_before_marker(&mut tab, &marker, "a send with a duplicate key was delivered")
        .await;

    // Inside `data` the names are the application's: passed through as sent.
    let r = post_send(&node, r#"{"to":"alice","data":{"k":1,"k":2,"n":{"x":1,"x":[]}}}"#).await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 1);
    let ev = expect_event(&mut tab, "message", &id, "duplicate names inside data").await;
    assert_eq!(ev.data, r#"{"k":1,"k":2,"n":{"x":1,"x":[]}}"#);
}
}

on_every_engine! {
    async fn invisible_usernames_are_400_in_the_admin_api(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut tab, _) = SseClient::connect(&node, "alice").await;
    for user in ["ali\u{202E}ecn", "a\u{2067}b", "\u{200B}alice", "alice\u{FEFF}", "a\u{2061}b"] {
        let body = json!({"to": user, "data": 1}).to_string();
        assert_error(&post_send(&node, &body).await, 400, Some("to"), &body);
        let path = format!("/notifications/connections/{}/", enc(user));
        for method in [Method::GET, Method::DELETE] {
            let r = call(method.clone(), &node.admin_url(&path), None, &[]).await;
            assert_error(&r, 400, Some("username"), &format!("{method} {path}"));
        }
    }
    let marker = send_marker(&node, "alice", 1).await;
    expect_nothing_before_marker(&mut tab, &marker, "a send to an invisible name was delivered")
        .await;
}
}

on_every_engine! {
    async fn body_over_max_body_bytes_is_413_with_content_length(env: Env) {
    let node = TestNode::start(env.config()).await;
    let (mut tab, _) = SseClient::connect(&node, "alice").await;
    let limit = 65536; // api.max_body_bytes default
    let body_of = |len: usize| {
        let skeleton = json!({"to": "alice", "data": ""}).to_string();
        let pad = "x".repeat(len - skeleton.len());
        let b = json!({"to": "alice", "data": pad}).to_string();
        assert_eq!(b.len(), len);
        b
    };

    let r = post_send(&node, &body_of(limit + 1)).await;
    assert_error(&r, 413, None, "body one byte over the limit");
    let r = post_send(&node, &body_of(limit * 4)).await;
    assert_error(&r, 413, None, "body four times the limit");

    // Exactly the limit is fine.
    let r = post_send(&node, &body_of(limit)).await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 1);
    let ev = expect_event(
        &mut tab,
        "message",
        &id,
        "the oversized sends delivered something",
    )
    .await;
    assert_eq!(ev.data.len(), limit - r#"{"to":"alice","data":}"#.len());
}
}

on_every_engine! {
    async fn chunked_body_over_max_body_bytes_is_413(env: Env) {
    let mut config = env.config();
    config.api.max_body_bytes = 1000;
    let node = TestNode::start(config).await;
    let (mut tab, _) = SseClient::connect(&node, "alice").await;

    let chunked = |body: String| {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
            .into_bytes()
            .chunks(100)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    let url = node.admin_url("/notifications/send/");
    let big = json!({"to": "alice", "data": "x".repeat(1500)}).to_string();
    let resp = http()
        .post(&url)
        .header("content-type", "application/json")
        .body(chunked(big))
        .send()
        .await
        .expect("chunked request");
    let r = finish(resp).await;
    assert_error(&r, 413, None, "chunked body over the limit");

    // A small chunked body is read whole and sent.
    let small = json!({"to": "alice", "data": "y".repeat(500)}).to_string();
    let resp = http()
        .post(&url)
        .header("content-type", "application/json")
        .body(chunked(small))
        .send()
        .await
        .expect("chunked request");
    let r = finish(resp).await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 1);
    expect_event(
        &mut tab,
        "message",
        &id,
        "the oversized chunked send was delivered",
    )
    .await;

    // With Content-Length, the configured limit applies too.
    let r = post_send(
        &node,
        &json!({"to": "alice", "data": "x".repeat(1500)}).to_string(),
    )
    .await;
    assert_error(&r, 413, None, "body over the configured limit");
    let marker = send_marker(&node, "alice", 1).await;
    expect_nothing_before_marker(&mut tab, &marker, "an oversized send was delivered").await;

    // The cleanup body has the same limit.
    let big = format!(r#"{{"timeout": 60{}}}"#, " ".repeat(1500));
    let r = call(
        Method::POST,
        &node.admin_url("/notifications/cleanup/"),
        Some(&big),
        &[],
    )
    .await;
    assert_error(&r, 413, None, "cleanup body over the limit");
}
}

// ---------------------------------------------------------------- listings

#[tokio::test]
async fn list_connections_has_the_spec_shape_and_order() {
    let redis = RedisServer::start();
    let node = TestNode::start(no_sweep_config(&redis)).await;
    let empty = ok_data(
        &get(&node.admin_url("/notifications/connections/")).await,
        "empty",
    );
    assert_eq!(
        empty,
        json!({"active_users": [], "user_count": 0, "total_connections": 0, "connection_details": {}})
    );

    let mut tabs = Vec::new();
    let mut opened: Vec<(String, String, f64)> = Vec::new(); // user, id, connection_time
    for user in ["bob", "alice", "Zed", "émile", "alice", "bob", "alice"] {
        let mut c = SseClient::open(&node.stream_url(), &[("X-Remote-User", user)]).await;
        assert_eq!(c.status, 200);
        let ev = c.next_event(WAIT).await.expect("established");
        let d: Value = serde_json::from_str(&ev.data).unwrap();
        opened.push((
            user.to_string(),
            d["connection_id"].as_str().unwrap().to_string(),
            d["connection_time"].as_f64().unwrap(),
        ));
        tabs.push(c);
    }
    // Records whose insertion order, id order and time order all differ.
    let mut conn = redis.conn();
    let t = now();
    inject(&mut conn, "c-a", "carol", t - 10.0, t);
    inject(&mut conn, "c-z", "carol", t - 30.0, t);
    inject(&mut conn, "c-m", "carol", t - 20.0, t);

    for path in ["/notifications/connections/", "/notifications/connections"] {
        let data = ok_data(&get(&node.admin_url(path)).await, path);
        assert_eq!(
            keys_of(&data),
            set(&[
                "active_users",
                "user_count",
                "total_connections",
                "connection_details"
            ]),
            "{data}"
        );
        let mut users: Vec<String> = opened.iter().map(|o| o.0.clone()).collect();
        users.push("carol".into());
        users.sort();
        users.dedup();
        assert_eq!(data["active_users"], json!(users), "sorted active_users");
        assert_eq!(data["user_count"], json!(5));
        assert_eq!(data["total_connections"], json!(10));
        let details = data["connection_details"].as_object().unwrap();
        assert_eq!(
            details.keys().cloned().collect::<BTreeSet<_>>(),
            users.iter().cloned().collect::<BTreeSet<_>>()
        );
        for (user, list) in details {
            let list = list.as_array().unwrap();
            for rec in list {
                assert_eq!(
                    keys_of(rec),
                    set(&[
                        "connection_id",
                        "username",
                        "connection_time",
                        "last_heartbeat",
                        "topics"
                    ]),
                    "{rec}"
                );
                assert_eq!(rec["username"], json!(user));
                assert!(rec["connection_time"].is_f64(), "{rec}");
                assert!(rec["last_heartbeat"].is_f64(), "{rec}");
                assert_eq!(rec["topics"], json!([]), "{rec}");
            }
            let ids: Vec<&str> = list
                .iter()
                .map(|r| r["connection_id"].as_str().unwrap())
                .collect();
            if user == "carol" {
                assert_eq!(ids, ["c-z", "c-m", "c-a"], "sorted by connection_time");
                continue;
            }
            let want: Vec<&str> = opened
                .iter()
                .filter(|o| &o.0 == user)
                .map(|o| o.1.as_str())
                .collect();
            assert_eq!(ids, want, "{user}: by connection_time (= opening order)");
            for rec in list {
                let o = opened
                    .iter()
                    .find(|o| o.1 == rec["connection_id"].as_str().unwrap())
                    .unwrap();
                let ct = rec["connection_time"].as_f64().unwrap();
                assert!(
                    (ct - o.2).abs() < 1e-3,
                    "connection_time {ct} vs established {}",
                    o.2
                );
                assert!(rec["last_heartbeat"].as_f64().unwrap() >= ct - 1e-3);
            }
        }
        let times: Vec<f64> = details["alice"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["connection_time"].as_f64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }
}

#[tokio::test]
async fn user_connections_shape_unknown_user_and_trailing_slash() {
    let redis = RedisServer::start();
    let node = TestNode::start(no_sweep_config(&redis)).await;
    let (_a1, id1) = SseClient::connect(&node, "alice").await;
    let (_a2, id2) = SseClient::connect(&node, "alice").await;
    let (_b1, _) = SseClient::connect(&node, "bob").await;
    let mut conn = redis.conn();
    let t = now();
    // An older record of alice from another node comes first.
    inject(&mut conn, "zz-old", "alice", t - 100.0, t);

    for path in [
        "/notifications/connections/alice/",
        "/notifications/connections/alice",
    ] {
        let data = ok_data(&get(&node.admin_url(path)).await, path);
        assert_eq!(
            keys_of(&data),
            set(&[
                "username",
                "connection_count",
                "connection_ids",
                "connections"
            ]),
            "{data}"
        );
        assert_eq!(data["username"], json!("alice"));
        assert_eq!(data["connection_count"], json!(3));
        assert_eq!(
            data["connection_ids"],
            json!(["zz-old", id1, id2]),
            "{path}"
        );
        let conns = data["connections"].as_array().unwrap();
        let ids: Vec<&str> = conns
            .iter()
            .map(|c| c["connection_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["zz-old", id1.as_str(), id2.as_str()]);
        for c in conns {
            assert_eq!(
                keys_of(c),
                set(&[
                    "connection_id",
                    "username",
                    "connection_time",
                    "last_heartbeat",
                    "topics"
                ]),
                "{c}"
            );
            assert_eq!(c["username"], json!("alice"));
        }
    }
    for path in [
        "/notifications/connections/nobody/",
        "/notifications/connections/nobody",
    ] {
        let data = ok_data(&get(&node.admin_url(path)).await, path);
        assert_eq!(
            data,
            json!({"username": "nobody", "connection_count": 0, "connection_ids": [], "connections": []})
        );
    }
    // Usernames that are not usernames.
    for user in ["\u{7}", "a\nb", &"u".repeat(151)] {
        let path = format!("/notifications/connections/{}/", enc(user));
        let r = get(&node.admin_url(&path)).await;
        assert_error(&r, 400, Some("username"), &path);
    }
}

on_every_engine! {
    async fn usernames_with_unicode_and_reserved_chars_in_the_path(env: Env) {
    let node = TestNode::start(env.config()).await;
    let users = ["émile 李", "a/b", "a+b", "100%", "ü?x=1#y"];
    let mut tabs = Vec::new();
    for user in users {
        let (tab, id) = SseClient::connect(&node, user).await;
        tabs.push((user, tab, id));
    }
    for (user, tab, id) in &mut tabs {
        for slash in ["/", ""] {
            let path = format!("/notifications/connections/{}{slash}", enc(user));
            let data = ok_data(&get(&node.admin_url(&path)).await, &path);
            assert_eq!(data["username"], json!(user), "{path}");
            assert_eq!(data["connection_count"], json!(1), "{path}");
            assert_eq!(data["connection_ids"], json!([id]), "{path}");
        }
        let r = post_send(&node, &json!({"to": user, "data": user}).to_string()).await;
        let mid = assert_sent(&r, Some(user), "message", Some(true), 1);
        let ev = expect_event(tab, "message", &mid, user).await;
        assert_eq!(ev.data, json!(user).to_string());
    }
    let all = ok_data(
        &get(&node.admin_url("/notifications/connections/")).await,
        "all",
    );
    let mut want: Vec<&str> = users.to_vec();
    want.sort();
    assert_eq!(all["active_users"], json!(want));

    // DELETE with a percent-encoded name closes that user only.
    let path = format!("/notifications/connections/{}/", enc("émile 李"));
    let data = ok_data(
        &call(Method::DELETE, &node.admin_url(&path), None, &[]).await,
        &path,
    );
    assert_eq!(data, json!({"connection_count": 1, "user_count": 1}));
    assert!(tabs[0].1.ends_within(WAIT).await, "émile's stream ends");
}
}

// ---------------------------------------------------------------- clear

#[tokio::test]
async fn full_clear_removes_zombies_and_keeps_live_connections() {
    let redis = RedisServer::start();
    let node = TestNode::start(no_sweep_config(&redis)).await;
    let (mut a1, a1_id) = SseClient::connect(&node, "alice").await;
    let (mut a2, a2_id) = SseClient::connect(&node, "alice").await;
    let (mut b1, b1_id) = SseClient::connect(&node, "bob").await;
    let mut conn = redis.conn();
    let t = now();
    // Zombies of a node that died, with fresh heartbeats (a sweep would
    // not catch them; only the clear does).
    inject(&mut conn, "zombie-1", "ghost", t - 50.0, t);
    inject(&mut conn, "zombie-2", "ghost", t - 40.0, t);
    inject(&mut conn, "zombie-3", "alice", t - 30.0, t);

    let r = call(
        Method::POST,
        &node.admin_url("/notifications/connections/"),
        None,
        &[],
    )
    .await;
    let data = ok_data(&r, "clear");
    assert_eq!(
        data,
        json!({"connection_count": 6, "user_count": 3}),
        "{r:?}"
    );
    for z in ["zombie-1", "zombie-2", "zombie-3"] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("sse:conn:{z}"))
            .query(&mut conn)
            .unwrap();
        assert!(!exists, "{z} survived the clear");
    }

    let want = expected_registry(&[("alice", &a1_id), ("alice", &a2_id), ("bob", &b1_id)]);
    registry_becomes(&redis, &want, &node).await;
    let listed = ok_data(
        &get(&node.admin_url("/notifications/connections")).await,
        "list",
    );
    assert_eq!(listed["active_users"], json!(["alice", "bob"]));
    assert_eq!(listed["total_connections"], json!(3));
    let alice = ok_data(
        &get(&node.admin_url("/notifications/connections/alice/")).await,
        "alice",
    );
    assert_eq!(alice["connection_ids"], json!([a1_id, a2_id]), "order kept");

    // The streams were not dropped and still receive.
    let r = post_send(&node, r#"{"to":"alice","data":"after clear"}"#).await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 2);
    expect_event(&mut a1, "message", &id, "a1 after clear").await;
    expect_event(&mut a2, "message", &id, "a2 after clear").await;
    let r = post_send(&node, r#"{"data":"all"}"#).await;
    let id = assert_sent(&r, None, "message", None, 3);
    expect_event(&mut b1, "message", &id, "b1 after clear").await;

    // A second clear without zombies counts the live ones only, and they
    // come back again; without trailing slash.
    let r = call(
        Method::POST,
        &node.admin_url("/notifications/connections"),
        Some(""),
        &[],
    )
    .await;
    assert_eq!(
        ok_data(&r, "second clear"),
        json!({"connection_count": 3, "user_count": 2})
    );
    registry_becomes(&redis, &want, &node).await;
}

// ---------------------------------------------------------------- delete

#[tokio::test]
async fn delete_user_closes_their_streams_and_only_theirs() {
    let redis = RedisServer::start();
    let node = TestNode::start(no_sweep_config(&redis)).await;
    let (mut a1, _) = SseClient::connect(&node, "alice").await;
    let (mut a2, _) = SseClient::connect(&node, "alice").await;
    let (mut b1, b1_id) = SseClient::connect(&node, "bob").await;
    let (mut al, al_id) = SseClient::connect(&node, "alice2").await;
    let mut conn = redis.conn();
    let t = now();
    inject(&mut conn, "alice-elsewhere", "alice", t - 5.0, t);

    let r = call(
        Method::DELETE,
        &node.admin_url("/notifications/connections/alice/"),
        None,
        &[],
    )
    .await;
    assert_eq!(
        ok_data(&r, "delete alice"),
        json!({"connection_count": 3, "user_count": 1}),
        "{r:?}"
    );
    assert!(a1.ends_within(WAIT).await, "alice tab 1 still open");
    assert!(a2.ends_within(WAIT).await, "alice tab 2 still open");

    let want = expected_registry(&[("alice2", &al_id), ("bob", &b1_id)]);
    registry_becomes(&redis, &want, &node).await;
    // And it stays that way (no closing stream writes alice back).
    wait_for_heartbeat_rounds(&node.admin_base(), "bob", 2).await;
    assert_eq!(redis.registry(), want);

    let data = ok_data(
        &get(&node.admin_url("/notifications/connections/alice/")).await,
        "alice after delete",
    );
    assert_eq!(data["connection_count"], json!(0));
    let r = post_send(&node, r#"{"to":"alice","data":1}"#).await;
    assert_sent(&r, Some("alice"), "message", Some(true), 0);

    // Other users' streams are open and receive.
    for (user, tab) in [("bob", &mut b1), ("alice2", &mut al)] {
        let r = post_send(
            &node,
            &json!({"to": user, "data": "still here"}).to_string(),
        )
        .await;
        let id = assert_sent(&r, Some(user), "message", Some(true), 1);
        expect_event(tab, "message", &id, user).await;
    }

    // Again (no trailing slash): nothing left to remove.
    let r = call(
        Method::DELETE,
        &node.admin_url("/notifications/connections/alice"),
        None,
        &[],
    )
    .await;
    assert_eq!(
        ok_data(&r, "second delete"),
        json!({"connection_count": 0, "user_count": 0})
    );
    assert_eq!(
        watch(&mut b1, Duration::from_millis(300)).await,
        Seen::Nothing,
        "bob"
    );

    // alice logs in again: a new tab works as usual.
    let (mut again, again_id) = SseClient::connect(&node, "alice").await;
    let r = post_send(&node, r#"{"to":"alice","data":"welcome back"}"#).await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 1);
    expect_event(&mut again, "message", &id, "alice's new tab").await;
    let want = expected_registry(&[("alice", &again_id), ("alice2", &al_id), ("bob", &b1_id)]);
    registry_becomes(&redis, &want, &node).await;
}

// ---------------------------------------------------------------- cleanup

#[tokio::test]
async fn cleanup_removes_only_records_older_than_timeout() {
    let redis = RedisServer::start();
    let node = TestNode::start(no_sweep_config(&redis)).await;
    let (mut live, live_id) = SseClient::connect(&node, "alice").await;
    let mut conn = redis.conn();
    let t = now();
    inject(&mut conn, "old", "ghost", t - 200.0, t - 120.0);
    inject(&mut conn, "mid", "ghost", t - 100.0, t - 30.0);
    inject(&mut conn, "mid2", "ghost2", t - 100.0, t - 30.0);
    inject(&mut conn, "fresh", "ghost", t - 100.0, t - 1.0);
    let url = node.admin_url("/notifications/cleanup/");

    let r = call(Method::POST, &url, Some(r#"{"timeout": 60}"#), &[]).await;
    let data = ok_data(&r, "cleanup 60");
    assert_eq!(
        data,
        json!({"connection_count": 1, "user_count": 1, "connection_ids": ["old"]})
    );

    let r = call(
        Method::POST,
        &node.admin_url("/notifications/cleanup"),
        Some(r#"{"timeout": 10.5}"#),
        &[],
    )
    .await;
    let data = ok_data(&r, "cleanup 10.5");
    assert_eq!(
        keys_of(&data),
        set(&["connection_count", "user_count", "connection_ids"])
    );
    assert_eq!(data["connection_count"], json!(2));
    assert_eq!(data["user_count"], json!(2));
    let mut ids: Vec<String> = serde_json::from_value(data["connection_ids"].clone()).unwrap();
    ids.sort();
    assert_eq!(ids, ["mid", "mid2"]);

    // ghost keeps its fresh record; ghost2 is gone entirely; alice is live.
    let reg = RedisRegistry::read(&mut conn);
    assert_eq!(reg.users, sorted(&["alice", "ghost"]));
    assert_eq!(
        reg.user_zsets.get("ghost"),
        Some(&vec!["fresh".to_string()])
    );
    assert!(!reg.user_zsets.contains_key("ghost2"), "{reg:#?}");
    assert_eq!(reg.heartbeats, sorted(&["fresh", &live_id]));
    assert_eq!(
        reg.conns.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["fresh", &live_id])
    );

    // Nothing older than an hour now.
    let r = call(Method::POST, &url, Some(r#"{"timeout": 3600}"#), &[]).await;
    assert_eq!(
        ok_data(&r, "cleanup 3600"),
        json!({"connection_count": 0, "user_count": 0, "connection_ids": []})
    );
    let r = post_send(&node, r#"{"to":"alice","data":1}"#).await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 1);
    expect_event(&mut live, "message", &id, "live tab after cleanup").await;
}

#[tokio::test]
async fn cleanup_without_timeout_uses_sweep_stale_timeout_secs() {
    let redis = RedisServer::start();
    let mut config = no_sweep_config(&redis);
    config.sweep.stale_timeout_secs = 20;
    let node = TestNode::start(config).await;
    let (_live, live_id) = SseClient::connect(&node, "alice").await;
    let mut conn = redis.conn();
    let url = node.admin_url("/notifications/cleanup/");
    for (i, body) in [None, Some(""), Some("{}"), Some(" \n")]
        .into_iter()
        .enumerate()
    {
        let t = now();
        let stale = format!("stale-{i}");
        let young = format!("young-{i}");
        inject(&mut conn, &stale, "ghost", t - 100.0, t - 25.0);
        inject(&mut conn, &young, "ghost", t - 100.0, t - 15.0);
        let r = call(Method::POST, &url, body, &[]).await;
        assert_eq!(
            ok_data(&r, &format!("cleanup body {body:?}")),
            json!({"connection_count": 1, "user_count": 1, "connection_ids": [stale]}),
            "body {body:?}"
        );
        let reg = RedisRegistry::read(&mut conn);
        assert!(reg.heartbeats.contains(&young), "{young} removed: {reg:#?}");
        assert!(reg.heartbeats.contains(&live_id));
    }
}

#[tokio::test]
async fn cleanup_with_bad_timeout_is_400_and_removes_nothing() {
    let redis = RedisServer::start();
    let node = TestNode::start(no_sweep_config(&redis)).await;
    let (_live, _) = SseClient::connect(&node, "alice").await;
    let mut conn = redis.conn();
    let t = now();
    inject(&mut conn, "old", "ghost", t - 200.0, t - 120.0);
    let before = RedisRegistry::read(&mut conn);
    let url = node.admin_url("/notifications/cleanup/");
    for (body, field) in [
        (r#"{"timeout": "60"}"#, Some("timeout")),
        (r#"{"timeout": -1}"#, Some("timeout")),
        (r#"{"timeout": true}"#, Some("timeout")),
        (r#"{"timeout": [60]}"#, Some("timeout")),
        (r#"{"timeout": {"secs": 60}}"#, Some("timeout")),
        (r#"{"timeot": 60}"#, Some("timeot")),
        (r#"{"timeout": 60"#, None),
        ("sixty", None),
        ("[60]", None),
        ("60", None),
    ] {
        let r = call(Method::POST, &url, Some(body), &[]).await;
        assert_error(&r, 400, field, &format!("cleanup {body}"));
    }
    assert_eq!(
        RedisRegistry::read(&mut conn),
        before,
        "a bad cleanup removed something"
    );
}

// ---------------------------------------------------------------- routes

on_every_engine! {
    async fn healthz_shape(env: Env) {
    let node = TestNode::start(env.config()).await;
    for path in ["/healthz", "/healthz/"] {
        let r = get(&node.admin_url(path)).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.content_type.starts_with("application/json"), "{r:?}");
        assert_eq!(r.json["status"], json!("ok"), "{r:?}");
        assert_eq!(r.json["engine"], json!(env.engine()), "{r:?}");
        if env.uses_redis() {
            assert_eq!(r.json["redis"], json!("ok"), "{r:?}");
            assert_eq!(r.json["bus"], json!("ok"), "{r:?}");
        } else {
            let fields = r.json.as_object().expect("object");
            assert!(
                !fields.contains_key("redis") && !fields.contains_key("bus"),
                "the embedded engine has no redis or bus field: {r:?}"
            );
        }
    }
}
}

on_every_engine! {
    async fn unknown_route_is_404_and_wrong_method_405_envelopes(env: Env) {
    let node = TestNode::start(env.config()).await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/nope"),
        (Method::GET, "/notifications"),
        (Method::GET, "/notifications/"),
        (Method::GET, "/notifications/nope/"),
        (Method::POST, "/notifications/sendx/"),
        (Method::GET, "/notifications/connections/a/b/"),
        (Method::GET, "/notifications/stream/"),
        (Method::POST, "/send/"),
        (Method::GET, "/notificationsx/connections/"),
    ] {
        let r = call(method.clone(), &node.admin_url(path), None, &[]).await;
        assert_error(&r, 404, None, &format!("{method} {path}"));
    }
    for (method, path, allowed) in [
        (Method::GET, "/notifications/send/", "POST"),
        (Method::DELETE, "/notifications/send", "POST"),
        (Method::PUT, "/notifications/connections/", "GET"),
        (Method::DELETE, "/notifications/connections/", "GET"),
        (Method::POST, "/notifications/connections/alice/", "DELETE"),
        (Method::GET, "/notifications/cleanup/", "POST"),
        (Method::POST, "/healthz", "GET"),
        (Method::DELETE, "/metrics", "GET"),
    ] {
        let r = call(method.clone(), &node.admin_url(path), Some("{}"), &[]).await;
        assert_error(&r, 405, None, &format!("{method} {path}"));
        let allow = r
            .headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(allow.contains(allowed), "{method} {path}: Allow {allow:?}");
    }
}
}

on_every_engine! {
    async fn routes_follow_server_base_path(env: Env) {
    let mut config = env.config();
    config.server.base_path = "/api/notify".into();
    let node = TestNode::start(config).await;
    let (mut tab, _) = SseClient::connect_url(
        &format!("http://{}/api/notify/stream/", node.public),
        "alice",
    )
    .await;
    let r = call(
        Method::POST,
        &node.admin_url("/api/notify/send/"),
        Some(r#"{"to":"alice","data":1}"#),
        &[],
    )
    .await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 1);
    expect_event(&mut tab, "message", &id, "custom base path").await;
    let data = ok_data(
        &get(&node.admin_url("/api/notify/connections/alice")).await,
        "user under custom base",
    );
    assert_eq!(data["connection_count"], json!(1));
    for path in ["/notifications/send/", "/notifications/connections/"] {
        let r = call(
            Method::POST,
            &node.admin_url(path),
            Some(r#"{"data":1}"#),
            &[],
        )
        .await;
        assert_error(&r, 404, None, path);
    }
    assert_eq!(get(&node.admin_url("/healthz")).await.status, 200);
}
}

on_every_engine! {
    async fn api_token_is_required_except_for_healthz(env: Env) {
    let mut config = env.config();
    config.api.token = Secret("s3cret-Token".into());
    let node = TestNode::start(config).await;
    let (mut tab, _) = SseClient::connect(&node, "alice").await;
    let good = [("authorization", "Bearer s3cret-Token")];
    let bad: [&[(&str, &str)]; 6] = [
        &[],
        &[("authorization", "Bearer wrong")],
        &[("authorization", "Bearer s3cret-Token-and-more")],
        &[("authorization", "Bearer s3cret-toke")],
        &[("authorization", "Basic czNjcmV0LVRva2Vu")],
        &[("authorization", "s3cret-Token")],
    ];
    let routes: [(Method, &str, Option<&str>); 7] = [
        (
            Method::POST,
            "/notifications/send/",
            Some(r#"{"to":"alice","data":"secret"}"#),
        ),
        (
            Method::POST,
            "/notifications/send/",
            Some(r#"{"data":"b"}"#),
        ),
        (Method::GET, "/notifications/connections/", None),
        (Method::GET, "/notifications/connections/alice/", None),
        (Method::POST, "/notifications/cleanup/", Some("{}")),
        (Method::GET, "/metrics", None),
        (Method::POST, "/notifications/connections/", None),
    ];
    for (method, path, body) in &routes {
        for headers in bad {
            let r = call(method.clone(), &node.admin_url(path), *body, headers).await;
            assert_error(&r, 401, None, &format!("{method} {path} with {headers:?}"));
        }
    }
    let r = call(
        Method::DELETE,
        &node.admin_url("/notifications/connections/alice/"),
        None,
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_error(&r, 401, None, "DELETE without the token");
    assert_eq!(
        watch(&mut tab, Duration::from_millis(300)).await,
        Seen::Nothing,
        "unauthorized requests reached the stream"
    );
    // None of the unauthorized sends reached the tab.
    let r = call(
        Method::POST,
        &node.admin_url("/notifications/send/"),
        Some(r#"{"to":"alice","event":"marker","data":"m"}"#),
        &good,
    )
    .await;
    let marker = assert_sent(&r, Some("alice"), "marker", Some(true), 1);
    expect_nothing_before_marker(&mut tab, &marker, "an unauthorized send was delivered").await;

    // With the token every route answers.
    for (method, path, body) in &routes[2..6] {
        let r = call(method.clone(), &node.admin_url(path), *body, &good).await;
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
    }
    let r = call(
        Method::GET,
        &node.admin_url("/notifications/connections/"),
        None,
        &[("authorization", "bearer s3cret-Token")],
    )
    .await;
    assert_eq!(r.status, 200, "scheme is case-insensitive: {r:?}");

    // /healthz needs none.
    let r = get(&node.admin_url("/healthz")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["status"], json!("ok"));
}
}

// ---------------------------------------------------------------- redis down

#[tokio::test]
async fn redis_down_gives_503_and_streams_stay_open() {
    let mut redis = RedisServer::start();
    let node = TestNode::start(test_config(&redis.url())).await;
    let (mut tab, tab_id) = SseClient::connect(&node, "alice").await;
    let r = post_send(&node, r#"{"to":"alice","data":"before"}"#).await;
    let id_before = assert_sent(&r, Some("alice"), "message", Some(true), 1);
    expect_event(&mut tab, "message", &id_before, "before the outage").await;

    redis.kill();

    let started = std::time::Instant::now();
    let r = get(&node.admin_url("/healthz")).await;
    assert_error_503(&r, "healthz");
    assert_ne!(r.json["status"], json!("ok"));
    for (method, path, body) in [
        (
            Method::POST,
            "/notifications/send/",
            Some(r#"{"to":"alice","data":"during"}"#),
        ),
        (
            Method::POST,
            "/notifications/send/",
            Some(r#"{"to":"alice","data":"during","all_connections":false}"#),
        ),
        (
            Method::POST,
            "/notifications/send/",
            Some(r#"{"data":"during"}"#),
        ),
        (Method::GET, "/notifications/connections/", None),
        (Method::GET, "/notifications/connections/alice/", None),
        (Method::POST, "/notifications/connections/", None),
        (Method::DELETE, "/notifications/connections/alice/", None),
        (
            Method::POST,
            "/notifications/cleanup/",
            Some(r#"{"timeout": 0}"#),
        ),
    ] {
        let r = call(method.clone(), &node.admin_url(path), body, &[]).await;
        assert_error(
            &r,
            503,
            None,
            &format!("{method} {path} while redis is down"),
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "503s took {:?}",
        started.elapsed()
    );
    // Bad input is still a 400 (validated before Redis is asked).
    let r = post_send(&node, r#"{"to":"alice"}"#).await;
    assert_error(&r, 400, Some("data"), "bad input while redis is down");

    // The stream stays open and got none of the refused messages.
    assert_eq!(
        watch(&mut tab, Duration::from_millis(2500)).await,
        Seen::Nothing,
        "the stream must stay open and get none of the refused messages"
    );

    // Redis comes back (empty): the connection is re-registered and a
    // send reaches it, exactly once.
    redis.restart();
    let url = node.admin_url("/notifications/connections/alice/");
    let back = eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let r = get(&url).await;
            r.status == 200 && r.json["data"]["connection_count"] == json!(1)
        }
    })
    .await;
    assert!(back, "connection not re-registered after redis came back");
    // Sends are refused (503) until the node hears the bus again.
    let health = node.admin_url("/healthz");
    let healthy = eventually(Duration::from_secs(10), || {
        let health = health.clone();
        async move { get(&health).await.status == 200 }
    })
    .await;
    assert!(healthy, "healthz 200 again after redis came back");
    // Redis came back empty: what it held is gone, and the open stream is
    // told so, after the last message it got.
    let gap = tab
        .next_event(WAIT)
        .await
        .expect("history_gap after Redis came back empty");
    assert_eq!(gap.event, "history_gap", "{gap:?}");
    let data: Value = serde_json::from_str(&gap.data).expect("gap JSON");
    assert_eq!(data, json!({"last_event_id": id_before}), "{gap:?}");
    let r = post_send(&node, r#"{"to":"alice","data":"after"}"#).await;
    let id = assert_sent(&r, Some("alice"), "message", Some(true), 1);
    let ev = expect_event(&mut tab, "message", &id, "after the outage").await;
    assert_eq!(ev.data, r#""after""#);
    registry_becomes(&redis, &expected_registry(&[("alice", &tab_id)]), &node).await;
}

#[track_caller]
fn assert_error_503(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "{what}: {r:?}"
    );
    assert_eq!(r.json["code"], json!(503), "{what}: {r:?}");
    assert!(r.json["message"].is_string(), "{what}: {r:?}");
}
