//! The admin listener against what a hostile web page can make an
//! operator's browser send (README "Browser safety"): cross-site forms
//! (text/plain, form-urlencoded, empty bodies), foreign `Origin`s, DNS
//! rebinding (`Host` of the attacker's name), CORS preflights. Each attack
//! is sent to the real binary, with a default config (no `api.token`), and
//! its effect is looked for where it would show: a connected stream, the
//! Redis registry. The app's own calls keep working.
mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(5);

/// Streams may follow any topic (the attacks aim at topics too).
const PUBLIC_TOPICS: &str = "[auth]\npublic_topics = [\"*\"]\n";

/// One answer of the admin listener.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, self.text)
    }
}

/// A request with exactly these headers (reqwest adds `Host` only when
/// none is given) and this raw body. Every answer is checked for CORS
/// headers here, so that no request of these tests can get one unseen.
async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut req = http().request(method.clone(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let answered = resp.headers().clone();
    let text = resp.text().await.expect("answer body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    let answer = Answer {
        status,
        headers: answered,
        text,
        json,
    };
    let cors: Vec<&str> = answer
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("access-control-"))
        .collect();
    assert!(
        cors.is_empty(),
        "{method} {url} with {headers:?}: the admin listener sent {cors:?}: {answer:?}"
    );
    answer
}

/// An error envelope of that status whose message names `names`.
#[track_caller]
fn assert_refused(a: &Answer, status: u16, names: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
    let ct = a
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("application/json"), "{what}: {a:?}");
    assert_eq!(a.json["code"], json!(status), "{what}: {a:?}");
    let message = a.json["message"].as_str().unwrap_or("");
    assert!(
        message.contains(names),
        "{what}: message should name {names}: {a:?}"
    );
    assert!(
        a.json.get("data").is_none(),
        "{what}: data in a refusal: {a:?}"
    );
}

#[track_caller]
fn assert_ok(a: &Answer, what: &str) -> Value {
    assert_eq!(a.status, 200, "{what}: {a:?}");
    assert_eq!(a.json["code"], json!(200), "{what}: {a:?}");
    a.json["data"].clone()
}

/// Sends a marker the app's way and returns every event the stream got
/// before it. Sends to one connection arrive in order, so an attack that
/// got through before the marker is in this list: no fixed wait needed.
async fn events_before_marker(node: &BinaryNode, tab: &mut SseClient, marker: &str) -> Vec<String> {
    let (status, body) = send(
        &node.admin_url(""),
        json!({"to": "alice", "event": "marker", "data": marker}),
    )
    .await;
    assert_eq!(status, 200, "the app's send of {marker}: {body}");
    let mut before = Vec::new();
    loop {
        let ev = tab.next_event(WAIT).await.unwrap_or_else(|| {
            panic!("marker {marker} never reached alice's stream; got {before:?}")
        });
        if ev.event == "marker" && ev.data.contains(marker) {
            return before;
        }
        before.push(format!("{}: {}", ev.event, ev.data));
    }
}

/// `GET {path}` as HTTP/1.0 with no `Host` at all: (status, body).
async fn http10_without_host(node: &BinaryNode, path: &str) -> (u16, String) {
    let mut sock = tokio::net::TcpStream::connect(node.admin)
        .await
        .expect("connect to the admin listener");
    sock.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("HTTP/1.0 GET {path}: no complete answer within {WAIT:?}"))
        .expect("read answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("HTTP/1.0 GET {path}: no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_sends_reach_no_stream() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), PUBLIC_TOPICS).await;
    // Alice's stream follows a topic: a page could aim at her, at
    // everyone, or at the topic.
    let (mut tab, _) =
        SseClient::connect_url(&format!("{}?topics=doc:1", node.stream_url()), "alice").await;
    let url = node.admin_url("/notifications/send/");
    let evil = r#"{"to":"alice","event":"evil","data":"from a web page"}"#;
    let evil_broadcast = r#"{"event":"evil","data":"from a web page"}"#;
    let evil_topic = r#"{"topic":"doc:1","event":"evil","data":"from a web page"}"#;

    // What an HTML form can send cross-site without a preflight.
    for (ct, body) in [
        ("text/plain", evil),
        ("text/plain;charset=UTF-8", evil_broadcast),
        ("text/plain", evil_topic),
        ("application/x-www-form-urlencoded", evil),
        ("multipart/form-data; boundary=x", evil),
    ] {
        let a = request(Method::POST, &url, &[("content-type", ct)], Some(evil)).await;
        assert_refused(&a, 415, "Content-Type", &format!("send as {ct}"));
        let a = request(Method::POST, &url, &[("content-type", ct)], Some(body)).await;
        assert_refused(&a, 415, "Content-Type", &format!("send as {ct}"));
    }
    // A body without any Content-Type (fetch with no-cors and a Blob).
    let a = request(Method::POST, &url, &[], Some(evil)).await;
    assert_refused(&a, 415, "Content-Type", "send without Content-Type");
    let before = events_before_marker(&node, &mut tab, "after-415").await;
    assert!(
        before.is_empty(),
        "refused sends reached the stream: {before:?}"
    );

    // The page's origin, JSON or not: 403 before anything is read.
    for (ct, body) in [
        ("application/json", evil),
        ("text/plain", evil),
        ("application/json", evil_topic),
    ] {
        let a = request(
            Method::POST,
            &url,
            &[("content-type", ct), ("origin", "http://evil.example")],
            Some(body),
        )
        .await;
        assert_refused(
            &a,
            403,
            "Origin",
            &format!("send from evil.example as {ct}"),
        );
    }
    let a = request(
        Method::POST,
        &url,
        &[("content-type", "application/json"), ("origin", "null")],
        Some(evil_broadcast),
    )
    .await;
    assert_refused(&a, 403, "Origin", "send from Origin: null");
    // The preflight a JSON fetch would need is not answered as CORS.
    let a = request(
        Method::OPTIONS,
        &url,
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        None,
    )
    .await;
    assert_refused(&a, 403, "Origin", "preflight from evil.example");
    let a = request(Method::OPTIONS, &url, &[], None).await;
    assert_refused(&a, 405, "POST", "OPTIONS without Origin");

    // DNS rebinding: the page's name points at 127.0.0.1, so its request
    // is "same origin" to the browser; the Host still carries the name.
    let rebound = format!("rebind.evil.example:{}", node.admin.port());
    let a = request(
        Method::POST,
        &url,
        &[
            ("host", rebound.as_str()),
            ("origin", &format!("http://{rebound}")),
            ("content-type", "application/json"),
        ],
        Some(evil),
    )
    .await;
    assert_refused(&a, 421, "Host", "send through a rebound name");
    let before = events_before_marker(&node, &mut tab, "after-403-421").await;
    assert!(
        before.is_empty(),
        "refused sends reached the stream: {before:?}"
    );

    // The app's calls, as services.py and the CLI make them, still deliver.
    for ct in ["application/json", "Application/JSON; charset=UTF-8"] {
        let a = request(
            Method::POST,
            &url,
            &[("content-type", ct), ("accept", "application/json")],
            Some(r#"{"to":"alice","event":"app","data":"hello"}"#),
        )
        .await;
        assert_eq!(assert_ok(&a, ct)["connections"], 1, "{a:?}");
    }
    let before = events_before_marker(&node, &mut tab, "after-app").await;
    assert_eq!(
        before,
        ["app: \"hello\"", "app: \"hello\""],
        "the app's sends"
    );
    let cfg = node.cli_config();
    let (rc, stdout, stderr) = tokio::task::spawn_blocking(move || {
        cli(&[
            "send",
            "-c",
            &cfg,
            "--to",
            "alice",
            "--event",
            "cli",
            "\"from the cli\"",
        ])
    })
    .await
    .unwrap();
    assert_eq!(rc, 0, "sse-notify send: {stdout}\n{stderr}");
    let before = events_before_marker(&node, &mut tab, "after-cli").await;
    assert_eq!(before, ["cli: \"from the cli\""], "the CLI's send");

    // Point 4: the open admin API is said once, at warn level, at start.
    let log = node.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("api.token is empty"))
        .collect();
    assert_eq!(warned.len(), 1, "log:\n{log}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    assert!(
        warned[0].contains(&node.admin.to_string()),
        "the warning names the admin listener: {}",
        warned[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_forms_cannot_clear_or_clean_up() {
    let redis = RedisServer::start();
    // No sweep during the test: only a request can remove the zombie.
    let node = BinaryNode::spawn(&redis.url(), "[sweep]\ninterval_secs = 3600\n").await;
    let mut conn = redis.conn();
    let old = now() - 3600.0;
    inject_record(&mut conn, "zombie", "zed", old, old, "gone-node");
    let clear = node.admin_url("/notifications/connections/");
    let cleanup = node.admin_url("/notifications/cleanup/");
    let form = "application/x-www-form-urlencoded";

    for (target, what) in [(&clear, "clear"), (&cleanup, "cleanup")] {
        for (ct, body) in [
            (form, None),
            (form, Some("")),
            (form, Some("timeout=0")),
            ("text/plain", Some("")),
            ("multipart/form-data; boundary=x", Some("--x--\r\n")),
        ] {
            let a = request(Method::POST, target, &[("content-type", ct)], body).await;
            assert_refused(&a, 415, "Content-Type", &format!("{what} as {ct} {body:?}"));
            let a = request(
                Method::POST,
                target,
                &[("content-type", ct), ("origin", "http://evil.example")],
                body,
            )
            .await;
            assert_refused(&a, 403, "Origin", &format!("{what} from evil.example"));
        }
        assert_eq!(
            registry_ids(&mut conn, "sse"),
            ["zombie"],
            "a refused {what} changed the registry"
        );
    }
    // A cross-site DELETE needs a preflight, which gets no CORS answer; the
    // DELETE itself is refused as well.
    let a = request(
        Method::DELETE,
        &node.admin_url("/notifications/connections/zed/"),
        &[("origin", "http://evil.example")],
        None,
    )
    .await;
    assert_refused(&a, 403, "Origin", "DELETE from evil.example");
    assert_eq!(registry_ids(&mut conn, "sse"), ["zombie"]);

    // The app's own calls do what the refused ones would have done:
    // services.py's clear (POST, no body, no Content-Type) ...
    let a = request(
        Method::POST,
        &clear,
        &[("accept", "application/json")],
        None,
    )
    .await;
    assert_eq!(
        assert_ok(&a, "the app's clear"),
        json!({"connection_count": 1, "user_count": 1})
    );
    assert!(registry_ids(&mut conn, "sse").is_empty());
    // ... and its cleanup (JSON body).
    inject_record(&mut conn, "zombie2", "zed", old, old, "gone-node");
    let a = request(
        Method::POST,
        &cleanup,
        &[("content-type", "application/json")],
        Some("{}"),
    )
    .await;
    assert_eq!(
        assert_ok(&a, "the app's cleanup")["connection_ids"],
        json!(["zombie2"])
    );
    // An empty POST without Content-Type (curl -X POST) is the app's too.
    inject_record(&mut conn, "zombie3", "zed", old, old, "gone-node");
    let a = request(Method::POST, &cleanup, &[], None).await;
    assert_eq!(
        assert_ok(&a, "bare cleanup")["connection_ids"],
        json!(["zombie3"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_origins_and_rebound_hosts_read_nothing() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), PUBLIC_TOPICS).await;
    let (_tab, id) =
        SseClient::connect_url(&format!("{}?topics=doc:secret", node.stream_url()), "alice").await;
    let port = node.admin.port();
    let connections = node.admin_url("/notifications/connections/");
    let listed = |a: &Answer| {
        a.text.contains("alice") || a.text.contains(&id) || a.text.contains("doc:secret")
    };

    let a = request(Method::GET, &connections, &[], None).await;
    assert!(listed(&a), "the registry holds alice: {a:?}");

    let a = request(
        Method::GET,
        &connections,
        &[("origin", "http://evil.example")],
        None,
    )
    .await;
    assert_refused(&a, 403, "Origin", "GET connections/ from evil.example");
    assert!(!listed(&a), "{a:?}");
    // Who follows what, through the API and the console: the same.
    for path in [
        "/notifications/topics/",
        "/notifications/topics/doc:secret/",
        "/notifications/admin/topics",
        "/notifications/admin/topics/doc:secret",
    ] {
        let a = request(
            Method::GET,
            &node.admin_url(path),
            &[("origin", "http://evil.example")],
            None,
        )
        .await;
        assert_refused(&a, 403, "Origin", &format!("GET {path} from evil.example"));
        assert!(!listed(&a), "{path}: {a:?}");
    }

    let rebound = format!("rebind.evil.example:{port}");
    for path in [
        "/notifications/connections/",
        "/notifications/connections/alice/",
        "/notifications/topics/doc:secret/",
        "/notifications/admin/topics",
        "/healthz",
        "/metrics",
        "/notifications/nowhere/",
    ] {
        let a = request(
            Method::GET,
            &node.admin_url(path),
            &[("host", rebound.as_str())],
            None,
        )
        .await;
        assert_refused(&a, 421, "Host", &format!("GET {path} as {rebound}"));
        assert!(!listed(&a), "{path}: {a:?}");
        assert!(
            !a.text.contains("node_id") && !a.text.contains("sse_notify_"),
            "{path}: health or metrics data in a refusal: {a:?}"
        );
    }
    for host in [
        "evil.example",
        "localhost.evil.example",
        "127.0.0.1.nip.io:80",
    ] {
        let a = request(Method::GET, &connections, &[("host", host)], None).await;
        assert_refused(&a, 421, "Host", &format!("GET connections/ as {host}"));
    }

    // Same origin, IP literals, localhost, and no Host at all: served.
    let own = format!("127.0.0.1:{port}");
    let a = request(
        Method::GET,
        &connections,
        &[("origin", &format!("http://{own}"))],
        None,
    )
    .await;
    assert!(listed(&a), "same-origin GET: {a:?}");
    let local = format!("localhost:{port}");
    let a = request(
        Method::POST,
        &node.admin_url("/notifications/send/"),
        &[
            ("host", local.as_str()),
            ("origin", &format!("http://{local}")),
            ("content-type", "application/json"),
        ],
        Some(r#"{"to":"alice","data":1}"#),
    )
    .await;
    assert_eq!(
        assert_ok(&a, "same-origin send via localhost")["connections"],
        1
    );
    for host in ["127.0.0.1", "[::1]:8091", "LOCALHOST", "10.0.0.7:80"] {
        let a = request(Method::GET, &connections, &[("host", host)], None).await;
        assert!(listed(&a), "Host {host}: {a:?}");
    }
    let (status, body) = http10_without_host(&node, "/healthz").await;
    assert_eq!(status, 200, "HTTP/1.0 healthz without Host: {body}");
    let (status, body) = http10_without_host(&node, "/notifications/connections/").await;
    assert_eq!(status, 200, "HTTP/1.0 connections/ without Host: {body}");
    assert!(body.contains("alice"), "{body}");

    // The keys apply on reload (SIGHUP), like the rest of [api].
    let mut text = std::fs::read_to_string(&node.config_path).unwrap();
    text.push_str("\n[api]\nallowed_hosts = [\"rebind.evil.example\"]\n");
    std::fs::write(&node.config_path, text).unwrap();
    node.signal(1);
    let url = connections.clone();
    let host = rebound.clone();
    let served = eventually(WAIT, || {
        let (url, host) = (url.clone(), host.clone());
        async move {
            request(Method::GET, &url, &[("host", &host)], None)
                .await
                .status
                == 200
        }
    })
    .await;
    assert!(
        served,
        "api.allowed_hosts not applied by SIGHUP; log:\n{}",
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_origins_and_hosts_are_served() {
    let redis = RedisServer::start();
    let token = "browser-test-token";
    let node = BinaryNode::spawn(
        &redis.url(),
        &format!(
            "[api]\ntoken = \"{token}\"\nallowed_origins = [\"https://ops.example.com\"]\nallowed_hosts = [\"sse-admin.internal\"]\n"
        ),
    )
    .await;
    let (mut tab, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
    let bearer = format!("Bearer {token}");
    let auth = ("authorization", bearer.as_str());
    let port = node.admin.port();
    let connections = node.admin_url("/notifications/connections/");
    let send_url = node.admin_url("/notifications/send/");

    // The checks come before the token: a page learns nothing, not even
    // that a token would let it in.
    let a = request(
        Method::GET,
        &connections,
        &[("host", "rebind.evil.example")],
        None,
    )
    .await;
    assert_refused(&a, 421, "Host", "rebound, without token");
    let a = request(
        Method::GET,
        &connections,
        &[("origin", "http://evil.example")],
        None,
    )
    .await;
    assert_refused(&a, 403, "Origin", "evil origin, without token");
    let a = request(
        Method::POST,
        &send_url,
        &[auth, ("content-type", "text/plain")],
        Some(r#"{"data":1}"#),
    )
    .await;
    assert_refused(&a, 415, "Content-Type", "text/plain with token");

    // The listed origin, from anywhere the listed name or an IP reaches.
    let a = request(
        Method::GET,
        &connections,
        &[auth, ("origin", "https://ops.example.com")],
        None,
    )
    .await;
    assert_eq!(
        assert_ok(&a, "allowed origin")["active_users"],
        json!(["alice"])
    );
    let a = request(
        Method::POST,
        &send_url,
        &[
            auth,
            ("origin", "https://ops.example.com"),
            ("content-type", "application/json"),
        ],
        Some(r#"{"to":"alice","event":"ops","data":"from the console"}"#),
    )
    .await;
    assert_eq!(assert_ok(&a, "allowed origin send")["connections"], 1);
    let ev = tab
        .next_named("ops", WAIT)
        .await
        .expect("the console's message");
    assert_eq!(ev.data, "\"from the console\"");
    // A near miss of the listed origin is another origin.
    for origin in ["http://ops.example.com", "https://ops.example.com:8443"] {
        let a = request(Method::GET, &connections, &[auth, ("origin", origin)], None).await;
        assert_refused(&a, 403, "Origin", origin);
    }

    // The listed host name, any case, any port; same origin through it.
    let named = format!("sse-admin.internal:{port}");
    for host in [
        named.as_str(),
        "SSE-Admin.Internal",
        "sse-admin.internal:80",
    ] {
        let a = request(Method::GET, &connections, &[auth, ("host", host)], None).await;
        assert_eq!(assert_ok(&a, host)["user_count"], 1, "{a:?}");
    }
    let a = request(
        Method::GET,
        &connections,
        &[
            auth,
            ("host", &named),
            ("origin", &format!("http://{named}")),
        ],
        None,
    )
    .await;
    assert_eq!(assert_ok(&a, "same origin by name")["user_count"], 1);
    let a = request(
        Method::GET,
        &node.admin_url("/healthz"),
        &[("host", named.as_str())],
        None,
    )
    .await;
    assert_eq!(a.status, 200, "healthz by the listed name: {a:?}");

    // With a token the start log does not call the API open.
    assert!(
        !node.log().contains("api.token is empty"),
        "log:\n{}",
        node.log()
    );
    // check-config shows the keys it runs with.
    let (rc, stdout, stderr) = cli(&["check-config", "-c", node.config_path.to_str().unwrap()]);
    assert_eq!(rc, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(r#"allowed_origins = ["https://ops.example.com"]"#)
            && stdout.contains(r#"allowed_hosts = ["sse-admin.internal"]"#),
        "{stdout}"
    );
}

#[test]
fn bad_allowed_origins_and_hosts_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key) in [
        (
            "[api]\nallowed_origins = [\"null\"]\n",
            "api.allowed_origins",
        ),
        (
            "[api]\nallowed_origins = [\"https://ops.example.com/\"]\n",
            "api.allowed_origins",
        ),
        (
            "[api]\nallowed_hosts = [\"sse-admin.internal:8091\"]\n",
            "api.allowed_hosts",
        ),
    ] {
        let path = write_config(dir.path(), "redis://127.0.0.1:1/0", extra);
        let (rc, stdout, stderr) = cli(&["check-config", "-c", path.to_str().unwrap()]);
        assert_eq!(rc, 2, "{extra}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(key),
            "{extra}: the error names {key}: {stderr}"
        );
    }
}
