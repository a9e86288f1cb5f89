//! SSE clients nobody on this project wrote, on the real binary's stream:
//! the npm `eventsource` package (WHATWG EventSource for Node, run by
//! `tests/browser/eventsource_client.mjs`) and Python's `httpx` +
//! `httpx-sse` (run by `tests/clients/sse_client_test.py`).
//!
//! Each must parse every frame the daemon sends: data with unicode and
//! escaped newlines, strings that look like SSE fields, big numbers and large
//! payloads, custom event names, ids, and heartbeat comments every second.
//! What each decodes is JSON-parsed here and compared with what was sent.
//! Then the daemon closes the stream (`DELETE connections/{user}/`), a
//! message is sent while the client is away, and after the client reconnects
//! with `Last-Event-ID` it arrives exactly once.
//!
//! Also `tests/clients/py_clients.py`: `sseclient-py` over `requests`,
//! `requests-sse`, `aiohttp-sse-client2`, and curl with `--http1.0` and
//! `--http1.1`; and in this process `reqwest-eventsource`. Each must get
//! `connection_established` within 100 ms of the stream opening.
//! (`reqwest-eventsource` runs in the test process.)
//!
//! Needs node with `npm ci --prefix tests/browser`, curl, and python3 with
//! httpx, httpx-sse, requests, sseclient-py, requests-sse, aiohttp and
//! aiohttp-sse-client2; `.ci/run` installs them. Without them the tests fail.
#[path = "clients/child.rs"]
mod child;
mod common;

use std::path::Path;
use std::time::Duration;

use child::{require_path, require_tool, JsonChild};
use common::*;
use serde_json::{json, Value};

const TIME_LIMIT: Duration = Duration::from_secs(60);
const NODE_CONFIG: &str = "[stream]\nretry_ms = 500\nheartbeat_secs = 1\n";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A 64-character event name using every allowed kind of character.
fn long_event_name() -> String {
    let name = format!("{}x", "Ab0_.:-".repeat(9));
    assert_eq!(name.len(), 64);
    name
}

/// (event, data as JSON text): every case is sent with `event` (None: the
/// field left out, so `message`), and must decode to exactly this data.
fn cases() -> Vec<(Option<String>, &'static str)> {
    vec![
        (None, r#"{"text":"línea 1\nlínea 2 ✓ 日本"}"#),
        (
            Some("order.updated".into()),
            r#"{"id":42,"items":[1,2.5,-3,1e-7,0.1],"nested":{"a":[null,true,false,{}],"b":[]}}"#,
        ),
        // A string that looks like SSE fields and blank lines: it must stay data.
        (
            Some("a:b-c_d.e".into()),
            r#""data: fake\n\nid: 666\nevent: evil\r\n\r\nretry: 1\r: comment""#,
        ),
        // Line and paragraph separators (raw in JSON), control characters,
        // escapes and non-BMP characters.
        (
            Some("message".into()),
            r#"{"s":"\r\n\u2028\u2029\u0000\u0001\u001f\u007f\\\"/","emoji":"😀👩‍👩‍👧","rtl":"שלום"}"#,
        ),
        (Some(long_event_name()), "null"),
        (None, r#""""#),
        (None, "12345678901234567890123"),
        (None, "-0.000000000000000000001"),
        (None, "[]"),
        (None, "true"),
        // ~40 KB in one data line (api.max_body_bytes is 64 KiB).
        (Some("big".into()), ""),
    ]
}

fn big_data() -> String {
    let s = "ü✓ line\\n ".repeat(3000);
    format!(r#"{{"big":"{s}"}}"#)
}

/// One event as a client decoded it.
#[derive(Debug, Clone)]
struct Ev {
    index: usize,
    kind: String,
    data: String,
    id: String,
}

/// How a client names things in its output lines.
#[derive(Clone, Copy)]
struct Kind {
    label: &'static str,
    id_field: &'static str,
    /// Dispatches an event for a blank line even when no `data:` came
    /// before it (httpx-sse: after a `retry:` frame, and after every
    /// heartbeat comment once an id was seen). WHATWG says not to; such
    /// events (empty data) are counted, not taken as messages.
    dispatches_empty: bool,
}

/// The events a client printed that carry data (what WHATWG dispatches).
fn events(seen: &[Value], kind: Kind) -> Vec<Ev> {
    seen.iter()
        .enumerate()
        .filter(|(_, v)| v["data"].is_string() && v["data"] != "")
        .map(|(index, v)| Ev {
            index,
            kind: v["type"].as_str().unwrap_or("").to_string(),
            data: v["data"].as_str().unwrap().to_string(),
            id: v[kind.id_field].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

fn with_id(seen: &[Value], kind: Kind, id: &str) -> Vec<Ev> {
    events(seen, kind)
        .into_iter()
        .filter(|e| e.id == id && e.kind != "connection_established")
        .collect()
}

fn established(seen: &[Value], kind: Kind) -> Vec<Ev> {
    events(seen, kind)
        .into_iter()
        .filter(|e| e.kind == "connection_established")
        .collect()
}

async fn user_count(node: &BinaryNode, user: &str) -> u64 {
    let (status, body) = admin(
        reqwest::Method::GET,
        &node.admin_url(&format!("/notifications/connections/{user}/")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["connection_count"].as_u64().unwrap()
}

/// Sends `data` (JSON text) to `user`; returns the message id.
async fn send_raw(node: &BinaryNode, user: &str, event: Option<&str>, data: &str) -> String {
    let mut body = format!(r#"{{"to":{},"data":{data}"#, json!(user));
    if let Some(e) = event {
        body.push_str(&format!(r#","event":{}"#, json!(e)));
    }
    body.push('}');
    let (status, resp) = admin(
        reqwest::Method::POST,
        &node.admin_url("/notifications/send/"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "send {body}: {resp}");
    assert_eq!(resp["data"]["event"], event.unwrap_or("message"));
    resp["data"]["message_id"].as_str().unwrap().to_string()
}

/// Clients that say when their stream opened (`ms`: since the response head
/// came) must have `connection_established` within 100 ms of it: a body the
/// client buffers until a block is full would hold it back.
fn first_event_in_time(c: &JsonChild, kind: Kind) {
    for e in established(&c.seen, kind) {
        if let Some(ms) = c.seen[e.index]["ms"].as_f64() {
            assert!(
                ms < 100.0,
                "{}: connection_established {ms} ms after the stream opened\n{}",
                kind.label,
                c.report()
            );
        }
    }
}

/// The whole scenario against one client, already started as `user`.
async fn exercise(kind: Kind, mut c: JsonChild, node: &BinaryNode, user: &str) {
    let logs = |c: &JsonChild| format!("{}\n--- sse-notify log\n{}", c.report(), node.log());

    let up = c
        .wait_until(Duration::from_secs(15), |s| {
            s.iter().any(|v| v["type"] == "fatal") || !established(s, kind).is_empty()
        })
        .await;
    c.assert_no_fatal();
    assert!(
        up,
        "{}: no connection_established\n{}",
        kind.label,
        logs(&c)
    );
    first_event_in_time(&c, kind);
    let est: Value = serde_json::from_str(&established(&c.seen, kind)[0].data).unwrap();
    assert_eq!(est["username"], user);
    let conn_id = est["connection_id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&conn_id).is_ok(), "{est}");
    assert_eq!(user_count(node, user).await, 1);

    // Heartbeat comments (every second) before any message.
    c.settle(Duration::from_millis(2500)).await;
    c.assert_no_fatal();

    // Every case, back to back.
    let big = big_data();
    let mut sent = Vec::new();
    for (event, data) in cases() {
        let data = if data.is_empty() { big.as_str() } else { data };
        let id = send_raw(node, user, event.as_deref(), data).await;
        sent.push((
            event.unwrap_or_else(|| "message".into()),
            data.to_string(),
            id,
        ));
    }
    let all = c
        .wait_until(Duration::from_secs(10), |s| {
            sent.iter()
                .all(|(_, _, id)| !with_id(s, kind, id).is_empty())
        })
        .await;
    assert!(
        all,
        "{}: not every message arrived\n{}",
        kind.label,
        logs(&c)
    );
    c.settle(Duration::from_millis(500)).await;
    let mut order = Vec::new();
    for (event, data, id) in &sent {
        let got = with_id(&c.seen, kind, id);
        assert_eq!(got.len(), 1, "{}: message {id} ({data})", kind.label);
        let got = &got[0];
        assert_eq!(&got.kind, event, "{}: event name of {data}", kind.label);
        let decoded: Value = serde_json::from_str(&got.data).unwrap_or_else(|e| {
            panic!(
                "{}: data of {id} is not JSON ({e}): {:?}",
                kind.label, got.data
            )
        });
        let expected: Value = serde_json::from_str(data).unwrap();
        assert_eq!(decoded, expected, "{}: decoded data of {id}", kind.label);
        // The daemon copies the data as the app sent it (compact here),
        // escapes and number spellings kept: what the client assembled is
        // exactly that text.
        assert_eq!(&got.data, data, "{}: raw data", kind.label);
        order.push(got.index);
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{}: messages out of order: {order:?}",
        kind.label
    );

    // Heartbeats between messages, then one more message.
    c.settle(Duration::from_millis(2500)).await;
    c.assert_no_fatal();
    let after = send_raw(node, user, Some("after.heartbeats"), r#"{"still":"here"}"#).await;
    let ok = c
        .wait_until(Duration::from_secs(5), |s| {
            !with_id(s, kind, &after).is_empty()
        })
        .await;
    assert!(
        ok,
        "{}: no message after heartbeats\n{}",
        kind.label,
        logs(&c)
    );
    assert_eq!(events(&c.seen, kind).len(), sent.len() + 2, "{}", logs(&c));
    let empties = c
        .seen
        .iter()
        .filter(|v| v["data"] == "" && v["type"] != "open")
        .count();
    if kind.dispatches_empty {
        println!(
            "{}: {empties} events with empty data (retry frame, heartbeat comments after an id)",
            kind.label
        );
    } else {
        assert_eq!(empties, 0, "{}: empty events\n{}", kind.label, logs(&c));
    }

    // The daemon closes the stream; a message is sent while the client is
    // away; it reconnects (after `retry: 500`) with Last-Event-ID.
    let (status, body) = admin(
        reqwest::Method::DELETE,
        &node.admin_url(&format!("/notifications/connections/{user}/")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connection_count"], 1, "{body}");
    let (status, body) = send(
        &node.admin_url(""),
        json!({"to": user, "data": {"missed": "línea 1\nlínea 2"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 0, "sent while away: {body}");
    let missed = body["data"]["message_id"].as_str().unwrap().to_string();
    let back = c
        .wait_until(Duration::from_secs(10), |s| {
            established(s, kind).len() >= 2 && !with_id(s, kind, &missed).is_empty()
        })
        .await;
    assert!(
        back,
        "{}: no reconnection with the missed message\n{}",
        kind.label,
        logs(&c)
    );
    c.settle(Duration::from_millis(1000)).await;
    first_event_in_time(&c, kind);
    let est = established(&c.seen, kind);
    assert_eq!(
        est.len(),
        2,
        "{}: one reconnection\n{}",
        kind.label,
        logs(&c)
    );
    let replayed = with_id(&c.seen, kind, &missed);
    assert_eq!(
        replayed.len(),
        1,
        "{}: missed message exactly once",
        kind.label
    );
    assert!(replayed[0].index > est[1].index);
    assert_eq!(
        serde_json::from_str::<Value>(&replayed[0].data).unwrap(),
        json!({"missed": "línea 1\nlínea 2"})
    );
    for (_, data, id) in &sent {
        assert_eq!(
            with_id(&c.seen, kind, id).len(),
            1,
            "{}: {data} came again after the reconnection\n{}",
            kind.label,
            logs(&c)
        );
    }
    assert_eq!(with_id(&c.seen, kind, &after).len(), 1);
    assert!(
        !c.seen.iter().any(|v| v["type"] == "history_gap"),
        "{}",
        logs(&c)
    );

    let status = c.finish(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{}: exit {status:?}\n{}",
        kind.label,
        logs(&c)
    );
    let gone = eventually(Duration::from_secs(5), || async {
        user_count(node, user).await == 0
    })
    .await;
    assert!(gone, "{}: records left after the client went", kind.label);
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_eventsource_parses_every_frame() {
    require_tool("node", "this test needs Node.js (>= 20) and npm");
    require_path(
        &root().join("tests/browser/node_modules/eventsource/package.json"),
        "run `npm ci --prefix tests/browser` (.ci/run does)",
    );
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), NODE_CONFIG).await;
    // ASCII: these clients send header values as Latin-1/ASCII (the
    // non-ASCII username through nginx is tests/nginx.rs's).
    let user = "carol.client";
    let names: Vec<String> = cases().into_iter().filter_map(|(e, _)| e).collect();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(root().join("tests/browser/eventsource_client.mjs"))
        .arg(node.stream_url())
        .arg(user)
        .arg(format!("{},after.heartbeats", names.join(",")))
        .current_dir(root());
    let c = JsonChild::spawn("npm eventsource", cmd, TIME_LIMIT);
    let kind = Kind {
        label: "npm eventsource",
        id_field: "lastEventId",
        dispatches_empty: false,
    };
    tokio::time::timeout(TIME_LIMIT, exercise(kind, c, &node, user))
        .await
        .expect("npm eventsource test: time limit");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_httpx_sse_parses_every_frame() {
    require_tool("python3", "this test needs python3");
    let probe = std::process::Command::new("python3")
        .args(["-c", "import httpx, httpx_sse"])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "python3 lacks httpx / httpx-sse: `python3 -m pip install httpx httpx-sse` \
         (.ci/run does)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), NODE_CONFIG).await;
    // ASCII: these clients send header values as Latin-1/ASCII (the
    // non-ASCII username through nginx is tests/nginx.rs's).
    let user = "carol.client";
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(root().join("tests/clients/sse_client_test.py"))
        .arg(node.stream_url())
        .arg(user)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(root());
    let c = JsonChild::spawn("python httpx-sse", cmd, TIME_LIMIT);
    let kind = Kind {
        label: "httpx-sse",
        id_field: "id",
        dispatches_empty: true,
    };
    tokio::time::timeout(TIME_LIMIT, exercise(kind, c, &node, user))
        .await
        .expect("httpx-sse test: time limit");
}

/// Runs `tests/clients/py_clients.py CLIENT` through the whole scenario.
async fn python_client(client: &str, modules: &str, label: &'static str) {
    require_tool("python3", "this test needs python3");
    let probe = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "python3 lacks {modules} (.ci/run pip-installs them)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), NODE_CONFIG).await;
    let user = "carol.client";
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(root().join("tests/clients/py_clients.py"))
        .arg(client)
        .arg(node.stream_url())
        .arg(user)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(root());
    let c = JsonChild::spawn(label, cmd, TIME_LIMIT);
    let kind = Kind {
        label,
        id_field: "id",
        dispatches_empty: false,
    };
    tokio::time::timeout(TIME_LIMIT, exercise(kind, c, &node, user))
        .await
        .unwrap_or_else(|_| panic!("{label} test: time limit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sseclient_over_requests_parses_every_frame() {
    python_client("sseclient", "requests, sseclient", "sseclient-py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_requests_sse_parses_every_frame() {
    python_client("requests-sse", "requests_sse", "requests-sse").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_aiohttp_sse_client2_parses_every_frame() {
    python_client(
        "aiohttp",
        "aiohttp, aiohttp_sse_client2",
        "aiohttp-sse-client2",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_http10_reads_every_frame() {
    require_tool("curl", "this test needs curl");
    python_client("curl-1.0", "json", "curl --http1.0").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_http11_reads_every_frame() {
    require_tool("curl", "this test needs curl");
    python_client("curl-1.1", "json", "curl --http1.1").await;
}

/// `reqwest-eventsource` (reconnects by itself, with `Last-Event-ID`), in
/// this process: what it yields goes through the same scenario.
#[tokio::test(flavor = "multi_thread")]
async fn rust_reqwest_eventsource_parses_every_frame() {
    use futures_util::StreamExt;
    use reqwest_eventsource::{Event, EventSource};

    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), NODE_CONFIG).await;
    let user = "carol.client";
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let request = reqwest::Client::new()
        .get(node.stream_url())
        .header("X-Remote-User", user);
    let mut source = EventSource::new(request).expect("a GET can be cloned");
    let task = tokio::spawn(async move {
        let mut opened = std::time::Instant::now();
        while let Some(ev) = source.next().await {
            let line = match ev {
                Ok(Event::Open) => {
                    opened = std::time::Instant::now();
                    json!({"type": "open", "status": 200})
                }
                Ok(Event::Message(m)) => json!({
                    "type": m.event, "data": m.data, "id": m.id,
                    "ms": opened.elapsed().as_secs_f64() * 1000.0,
                }),
                // The end of a stream the daemon closed: it reconnects.
                Err(reqwest_eventsource::Error::StreamEnded) => json!({"type": "closed"}),
                Err(e) => json!({"type": "fatal", "message": e.to_string()}),
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let c = JsonChild::in_process("reqwest-eventsource", task, rx, TIME_LIMIT);
    let kind = Kind {
        label: "reqwest-eventsource",
        id_field: "id",
        dispatches_empty: false,
    };
    tokio::time::timeout(TIME_LIMIT, exercise(kind, c, &node, user))
        .await
        .expect("reqwest-eventsource test: time limit");
}
