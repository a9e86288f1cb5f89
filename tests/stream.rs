//! The SSE stream as a user sees it (README "The stream", "Redis layout", "Auth", "Limits"): response headers and
//! first frames read as raw bytes, the registry (as the admin API lists it,
//! and its Redis layout with the Redis engine), heartbeats, tabs, routes,
//! the three auth modes, CORS, the node cap, slow consumers and shutdown.
//! Every scenario runs on both engines with an in-process node.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use sse_notify::config::AuthMode;

const SECS: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------- HTTP ---

/// Sends `method url` with raw header values (non-ASCII allowed).
async fn request(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &[u8])],
) -> reqwest::Response {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    tokio::time::timeout(
        Duration::from_secs(5),
        stream_client().request(method, url).headers(map).send(),
    )
    .await
    .unwrap_or_else(|_| panic!("{url}: no response head within 5s"))
    .unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn get(url: &str, headers: &[(&str, &[u8])]) -> reqwest::Response {
    request(reqwest::Method::GET, url, headers).await
}

/// The `data` of `connection_established` of a freshly opened stream.
async fn established(c: &mut SseClient) -> Value {
    let ev = c
        .next_event(Duration::from_secs(5))
        .await
        .expect("connection_established within 5s");
    assert_eq!(ev.event, "connection_established");
    serde_json::from_str(&ev.data).expect("connection_established data is JSON")
}

// --------------------------------------------------------------- Redis ---

fn hgetall(conn: &mut redis::Connection, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(conn).unwrap()
}

fn zscore(conn: &mut redis::Connection, key: &str, member: &str) -> Option<f64> {
    redis::cmd("ZSCORE")
        .arg(key)
        .arg(member)
        .query(conn)
        .unwrap()
}

fn zmembers(conn: &mut redis::Connection, key: &str) -> Vec<String> {
    let mut v: Vec<String> = redis::cmd("ZRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(conn)
        .unwrap();
    v.sort();
    v
}

fn smembers(conn: &mut redis::Connection, key: &str) -> Vec<String> {
    let mut v: Vec<String> = redis::cmd("SMEMBERS").arg(key).query(conn).unwrap();
    v.sort();
    v
}

fn exists(conn: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query::<i64>(conn).unwrap() == 1
}

/// No trace of `id` is left in any registry key.
fn gone(conn: &mut redis::Connection, id: &str, user: &str) -> bool {
    !exists(conn, &format!("sse:conn:{id}"))
        && zscore(conn, &format!("sse:user:{user}"), id).is_none()
        && zscore(conn, "sse:heartbeats", id).is_none()
}

/// Every key of one live connection is there and consistent.
fn assert_registered(conn: &mut redis::Connection, id: &str, user: &str, node_id: &str) {
    let h = hgetall(conn, &format!("sse:conn:{id}"));
    let mut fields: Vec<&str> = h.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "connection_id",
            "connection_time",
            "last_heartbeat",
            "node_id",
            "username"
        ],
        "sse:conn:{id} fields: {h:?}"
    );
    assert_eq!(h["connection_id"], id);
    assert_eq!(h["username"], user);
    assert_eq!(h["node_id"], node_id);
    let ct: f64 = h["connection_time"].parse().expect("connection_time float");
    let hb: f64 = h["last_heartbeat"].parse().expect("last_heartbeat float");
    assert!(
        hb >= ct - 1e-3,
        "last_heartbeat {hb} before connection_time {ct}"
    );
    let score = zscore(conn, &format!("sse:user:{user}"), id)
        .unwrap_or_else(|| panic!("{id} not in sse:user:{user}"));
    assert!((score - ct).abs() < 1e-3, "user zset score {score} != {ct}");
    assert!(
        smembers(conn, "sse:users").contains(&user.to_string()),
        "{user} not in sse:users"
    );
    let hb_score =
        zscore(conn, "sse:heartbeats", id).unwrap_or_else(|| panic!("{id} not in sse:heartbeats"));
    assert!(
        (hb_score - hb).abs() < 2.0,
        "heartbeats score {hb_score} far from last_heartbeat {hb}"
    );
}

// ----------------------------------------------------------------- JWT ---

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

const SECRET: &str = "s3cret-for-the-stream-tests";

/// A node in token mode; the secret file ends with a newline. The tempdir
/// must outlive the node.
async fn token_node(env: &Env) -> (TestNode, tempfile::TempDir) {
    token_node_with(env, |_| {}).await
}

/// [`token_node`] with more of `[auth]` set by `set`.
async fn token_node_with(
    env: &Env,
    set: impl FnOnce(&mut sse_notify::config::Config),
) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwt.secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    let mut c = env.config();
    c.auth.mode = AuthMode::Token;
    c.auth.token_secret_file = path.to_string_lossy().into_owned();
    set(&mut c);
    (TestNode::start(c).await, dir)
}

/// The listed record of `id` (a connection of `user`), as the admin API
/// gives it; panics when it is not listed.
async fn listed_record(node: &TestNode, user: &str, id: &str) -> Value {
    let data = listed_user(&node.admin_base(), user).await;
    data["connections"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["connection_id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("{id} of {user} not listed: {data}"))
}

/// The sorted usernames the admin API lists as active.
async fn listed_users(node: &TestNode) -> Vec<String> {
    let data = listing(&node.admin_base()).await;
    let users: Vec<&str> = data["active_users"]
        .as_array()
        .expect("active_users")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    sorted(&users)
}

// =============================================================== tests ===

on_every_engine! {
    async fn stream_headers_first_frames_and_registration(env: Env) {
        let mut c = env.config();
        c.stream.retry_ms = 2500;
        let node_id = c.server.node_id.clone();
        let node = TestNode::start(c).await;

        let resp = get(&node.stream_url(), &[("X-Remote-User", b"alice")]).await;
        assert_eq!(resp.status().as_u16(), 200);
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], "text/event-stream");
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["x-accel-buffering"], "no");

        let mut body = RawStream::of(resp);
        let opened_at = now();
        // The opening frames arrive without waiting for anything else
        // (flushed, not buffered): well before the first heartbeat.
        assert!(
            body.received("\"connection_time\"", Duration::from_millis(800)).await
                && body.received("}\n\n", Duration::from_millis(800)).await,
            "opening frames not received: {:?}",
            body.text()
        );
        let mut first = body.next_frame(SECS).await.expect("first frame: retry");
        // `retry:` may be its own frame or the first line of the next one.
        assert!(
            first.starts_with("retry: 2500"),
            "first frame must start with `retry: 2500`, got {first:?}"
        );
        let rest = first.split_off("retry: 2500".len());
        let est = match rest.strip_prefix('\n') {
            Some(lines) if !lines.is_empty() => lines.to_string(),
            _ => {
                assert!(rest.is_empty(), "junk after retry: {rest:?}");
                body.next_frame(SECS).await.expect("connection_established")
            }
        };
        let data = est
            .strip_prefix("event: connection_established\ndata: ")
            .unwrap_or_else(|| panic!("second frame must be connection_established: {est:?}"));
        assert!(!data.contains('\n'), "data on one line: {est:?}");
        let data: Value = serde_json::from_str(data).expect("data is JSON");

        let id = data["connection_id"]
            .as_str()
            .expect("connection_id string");
        let uuid = uuid::Uuid::parse_str(id).expect("connection_id is a uuid");
        assert_eq!(uuid.get_version_num(), 4, "uuid v4: {id}");
        assert_eq!(uuid.hyphenated().to_string(), id, "canonical uuid form");
        assert_eq!(data["username"], "alice");
        let ct = data["connection_time"]
            .as_f64()
            .expect("connection_time is a number");
        assert!(
            data["connection_time"].is_f64(),
            "connection_time is a float: {data}"
        );
        assert!(
            (ct - opened_at).abs() < 3.0,
            "connection_time {ct} vs now {opened_at}"
        );

        // In the registry by the time the frame arrived (no waiting).
        let listed = listed_record(&node, "alice", id).await;
        let listed_ct = listed["connection_time"].as_f64().expect("listed connection_time");
        assert!(
            (listed_ct - ct).abs() < 1e-3,
            "listed connection_time {listed_ct} != streamed {ct}"
        );
        assert_eq!(listed_ids(&node.admin_base()).await, vec![id.to_string()]);
        if let Some(redis) = env.redis_server() {
            let mut conn = redis.conn();
            assert_registered(&mut conn, id, "alice", &node_id);
            let stored: f64 = hgetall(&mut conn, &format!("sse:conn:{id}"))["connection_time"]
                .parse()
                .unwrap();
            assert!(
                (stored - ct).abs() < 1e-3,
                "stored connection_time {stored} != streamed {ct}"
            );
            assert_eq!(redis.ids(), vec![id.to_string()]);
        }
    }

    async fn a_send_right_after_connection_established_reaches_the_stream(env: Env) {
        let node = TestNode::start(env.config()).await;
        for i in 0..5 {
            // The previous tab is gone (its close is noticed asynchronously).
            listed_ids_become(&node.admin_base(), &[]).await;
            let (mut tab, _) = SseClient::connect(&node, "quick").await;
            let (status, body) = send(&node.admin_base(), json!({"to": "quick", "data": i})).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["data"]["connections"], 1, "{body}");
            let ev = tab
                .next_named("message", Duration::from_secs(3))
                .await
                .expect("message");
            assert_eq!(ev.data, i.to_string());
        }
    }

    async fn heartbeat_comments_arrive_every_interval_and_registry_follows(env: Env) {
        let node = TestNode::start(env.config()).await;
        let resp = get(&node.stream_url(), &[("X-Remote-User", b"hb")]).await;
        assert_eq!(resp.status().as_u16(), 200);
        let mut body = RawStream::of(resp);
        let mut id = None;
        let mut beats: Vec<(Instant, u64)> = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(3600);
        while beats.len() < 3 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = body.next_frame(left).await else {
                break;
            };
            if let Some(d) = frame.strip_prefix("event: connection_established\ndata: ") {
                let d: Value = serde_json::from_str(d).unwrap();
                id = Some(d["connection_id"].as_str().unwrap().to_string());
            } else if let Some(rest) = frame.strip_prefix(": heartbeat ") {
                let secs: u64 = rest
                    .parse()
                    .unwrap_or_else(|_| panic!("heartbeat frame {frame:?}: unix secs"));
                let t = now();
                assert!(
                    (secs as f64 - t).abs() < 3.0,
                    "heartbeat time {secs} vs now {t}"
                );
                beats.push((Instant::now(), secs));
            } else {
                assert!(frame.starts_with("retry: "), "unexpected frame {frame:?}");
            }
        }
        assert!(
            beats.len() >= 3,
            "expected 3 heartbeats within 3.6s at heartbeat_secs=1, got {}",
            beats.len()
        );
        for w in beats.windows(2) {
            let gap = w[1].0.duration_since(w[0].0).as_secs_f64();
            assert!(
                (0.6..=1.6).contains(&gap),
                "heartbeats {gap:.2}s apart, expected about 1s"
            );
        }

        let id = id.expect("connection_established seen");
        // The registry follows the heartbeats: last_heartbeat moves on.
        let listed = listed_record(&node, "hb", &id).await;
        let ct = listed["connection_time"].as_f64().expect("connection_time");
        let hb1 = listed["last_heartbeat"].as_f64().expect("last_heartbeat");
        assert!(hb1 > ct + 0.5, "last_heartbeat {hb1} not advanced past {ct}");
        let latest = std::cell::Cell::new(hb1);
        let advanced = eventually(Duration::from_millis(2500), || {
            let (latest, node, id) = (&latest, &node, &id);
            async move {
                let hb = listed_record(node, "hb", id).await["last_heartbeat"].as_f64();
                latest.set(hb.unwrap_or(0.0));
                latest.get() > hb1 + 0.5
            }
        })
        .await;
        assert!(
            advanced,
            "last_heartbeat did not advance again: {hb1} -> {}",
            latest.get()
        );
        if let Some(redis) = env.redis_server() {
            let mut conn = redis.conn();
            let h = hgetall(&mut conn, &format!("sse:conn:{id}"));
            let hb: f64 = h["last_heartbeat"].parse().unwrap();
            let score = zscore(&mut conn, "sse:heartbeats", &id).unwrap();
            assert!(
                (score - hb).abs() < 1e-3,
                "sse:heartbeats score {score} != last_heartbeat {hb}"
            );
        }
    }

    async fn tabs_of_one_user_each_have_their_records_and_leave_alone(env: Env) {
        let c = env.config();
        let node_id = c.server.node_id.clone();
        let node = TestNode::start(c).await;
        let admin = node.admin_base();
        let (tab1, id1) = SseClient::connect(&node, "alice").await;
        let (mut tab2, id2) = SseClient::connect(&node, "alice").await;
        let (_bob, bob_id) = SseClient::connect(&node, "bob").await;
        assert_ne!(id1, id2);
        let alice = listed_user(&admin, "alice").await;
        assert_eq!(alice["connection_ids"], json!([id1, id2]), "oldest first: {alice}");
        assert_eq!(listed_users(&node).await, ["alice", "bob"]);
        if let Some(redis) = env.redis_server() {
            let mut conn = redis.conn();
            assert_registered(&mut conn, &id1, "alice", &node_id);
            assert_registered(&mut conn, &id2, "alice", &node_id);
            assert_eq!(zmembers(&mut conn, "sse:user:alice"), sorted(&[&id1, &id2]));
            assert_eq!(redis.users(), ["alice", "bob"]);
        }

        drop(tab1);
        listed_ids_become(&admin, &[&id2, &bob_id]).await;
        assert_eq!(listed_user(&admin, "alice").await["connection_ids"], json!([id2]));
        if let Some(redis) = env.redis_server() {
            let mut conn = redis.conn();
            assert!(gone(&mut conn, &id1, "alice"), "closed tab {id1} left keys");
            assert_registered(&mut conn, &id2, "alice", &node_id);
            assert_registered(&mut conn, &bob_id, "bob", &node_id);
            assert_eq!(zmembers(&mut conn, "sse:user:alice"), [id2.as_str()]);
        }

        // The remaining tab still gets alice's messages.
        let (status, body) = send(&admin, json!({"to": "alice", "data": "hi"})).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["connections"], 1, "{body}");
        let ev = tab2
            .next_named("message", Duration::from_secs(3))
            .await
            .expect("message on the other tab");
        assert_eq!(ev.data, "\"hi\"");

        drop(tab2);
        listed_ids_become(&admin, &[&bob_id]).await;
        assert_eq!(listed_users(&node).await, ["bob"]);
        assert_eq!(listed_user(&admin, "alice").await["connection_count"], 0);
        if let Some(redis) = env.redis_server() {
            let mut conn = redis.conn();
            assert!(gone(&mut conn, &id2, "alice"));
            assert!(!exists(&mut conn, "sse:user:alice"), "sse:user:alice left");
            assert_eq!(redis.users(), ["bob"]);
            assert_eq!(redis.ids(), vec![bob_id.clone()]);
            assert_registered(&mut conn, &bob_id, "bob", &node_id);
        }
    }

    /// README "The stream": when the client goes away, its records are
    /// removed at once, not at the next heartbeat (15s by default in
    /// production).
    async fn closed_tab_is_removed_without_waiting_for_a_heartbeat(env: Env) {
        let mut c = env.config();
        c.stream.heartbeat_secs = 30;
        c.sweep.stale_timeout_secs = 120;
        let node = TestNode::start(c).await;
        let (_stay, stay_id) = SseClient::connect(&node, "carol").await;
        let (tab, _) = SseClient::connect(&node, "carol").await;
        drop(tab);
        // Far less than the 30 s heartbeat: the close itself removes it.
        listed_ids_become(&node.admin_base(), &[&stay_id]).await;
        if let Some(redis) = env.redis_server() {
            assert_eq!(redis.ids(), vec![stay_id]);
        }
    }

    async fn stream_path_with_and_without_trailing_slash(env: Env) {
        let node = TestNode::start(env.config()).await;
        let base = format!("http://{}/notifications/stream", node.public);
        for url in [format!("{base}/"), base.clone()] {
            let mut c = SseClient::open(&url, &[("X-Remote-User", "pathy")]).await;
            assert_eq!(c.status, 200, "{url}");
            assert_eq!(c.headers["content-type"], "text/event-stream", "{url}");
            let data = established(&mut c).await;
            assert_eq!(data["username"], "pathy", "{url}");
        }
    }

    async fn unknown_paths_and_wrong_listener_are_404_envelopes(env: Env) {
        let node = TestNode::start(env.config()).await;
        let public = format!("http://{}", node.public);
        let user: &[(&str, &[u8])] = &[("X-Remote-User", b"alice")];
        for path in [
            "/",
            "/notifications",
            "/notifications/",
            "/notifications/streams/",
            "/notifications/stream/extra",
            "/stream/",
            "/notifications/stream.txt",
            // Admin routes are not served on the public listener.
            "/healthz",
            "/metrics",
            "/notifications/connections/",
            "/notifications/connections/alice/",
        ] {
            let resp = get(&format!("{public}{path}"), user).await;
            expect_envelope(resp, 404, &format!("public GET {path}")).await;
        }
        for path in ["/notifications/send/", "/notifications/cleanup/"] {
            let resp = request(reqwest::Method::POST, &format!("{public}{path}"), user).await;
            expect_envelope(resp, 404, &format!("public POST {path}")).await;
        }
        // The stream is not served on the admin listener.
        for path in ["/notifications/stream/", "/notifications/stream"] {
            let resp = get(&node.admin_url(path), user).await;
            expect_envelope(resp, 404, &format!("admin GET {path}")).await;
        }
        assert!(listed_ids(&node.admin_base()).await.is_empty());
    }

    async fn post_on_the_stream_is_a_405_envelope(env: Env) {
        let node = TestNode::start(env.config()).await;
        for method in [
            reqwest::Method::POST,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
        ] {
            let resp = request(
                method.clone(),
                &node.stream_url(),
                &[("X-Remote-User", b"alice")],
            )
            .await;
            expect_envelope(resp, 405, &format!("{method} stream")).await;
        }
        assert!(listed_ids(&node.admin_base()).await.is_empty());
    }

    /// RFC 9110 15.5.6: a 405 MUST carry `Allow`; the admin listener does it.
    async fn a_405_on_the_stream_says_which_methods_are_allowed(env: Env) {
        let node = TestNode::start(env.config()).await;
        let resp = request(
            reqwest::Method::POST,
            &node.stream_url(),
            &[("X-Remote-User", b"alice")],
        )
        .await;
        assert_eq!(resp.status().as_u16(), 405);
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        assert!(
            allow.as_deref().is_some_and(|a| a.contains("GET")),
            "405 on the stream without an Allow header naming GET: {allow:?}"
        );
    }

    async fn header_auth_missing_empty_and_bad_usernames(env: Env) {
        let node = TestNode::start(env.config()).await;
        let url = node.stream_url();

        expect_envelope(get(&url, &[]).await, 401, "no header").await;
        expect_envelope(
            get(&url, &[("X-Remote-User", b"")]).await,
            401,
            "empty header",
        )
        .await;
        let long = "a".repeat(151);
        expect_envelope(
            get(&url, &[("X-Remote-User", long.as_bytes())]).await,
            400,
            "151 chars",
        )
        .await;
        expect_envelope(
            get(&url, &[("X-Remote-User", b"bad\tname")]).await,
            400,
            "tab in username",
        )
        .await;
        // U+0085 (NEL), a C1 control character, sent as UTF-8.
        expect_envelope(
            get(&url, &[("X-Remote-User", "bad\u{85}name".as_bytes())]).await,
            400,
            "C1 control in username",
        )
        .await;

        // The limit is in characters, not bytes: 150 two-byte characters pass.
        let wide = "é".repeat(150);
        let resp = get(&url, &[("X-Remote-User", wide.as_bytes())]).await;
        assert_eq!(resp.status().as_u16(), 200, "150 characters are allowed");
        let mut body = RawStream::of(resp);
        assert!(body.received("connection_established", SECS * 3).await);
        assert!(body.received(&wide, SECS * 3).await, "username echoed: {:?}", body.text());

        // Case-insensitive header name, as HTTP has it.
        let mut c = SseClient::open(&url, &[("x-remote-user", "lower")]).await;
        assert_eq!(c.status, 200);
        assert_eq!(established(&mut c).await["username"], "lower");

        drop(body);
        drop(c);
        // Only the accepted streams were ever registered, and they left.
        listed_ids_become(&node.admin_base(), &[]).await;
    }

    async fn header_auth_from_an_untrusted_peer_is_403(env: Env) {
        let mut c = env.config();
        c.auth.trusted_proxies = vec!["10.0.0.0/8".into()];
        let node = TestNode::start(c).await;
        let url = node.stream_url();
        expect_envelope(
            get(&url, &[("X-Remote-User", b"mallory")]).await,
            403,
            "header from an untrusted peer",
        )
        .await;
        expect_envelope(get(&url, &[]).await, 401, "no identity at all").await;
        assert!(listed_ids(&node.admin_base()).await.is_empty());
    }

    async fn none_auth_takes_the_user_query_parameter(env: Env) {
        let mut c = env.config();
        c.auth.mode = AuthMode::None;
        let node = TestNode::start(c).await;
        let url = node.stream_url();

        let mut c = SseClient::open(&format!("{url}?user=bob"), &[]).await;
        assert_eq!(c.status, 200);
        let data = established(&mut c).await;
        assert_eq!(data["username"], "bob");
        assert_eq!(
            listed_user(&node.admin_base(), "bob").await["connection_ids"],
            json!([data["connection_id"]])
        );

        // Percent-encoded names are decoded.
        let mut c2 = SseClient::open(&format!("{url}?user=b%C3%B8b%20x"), &[]).await;
        assert_eq!(c2.status, 200);
        assert_eq!(established(&mut c2).await["username"], "bøb x");

        expect_envelope(get(&url, &[]).await, 401, "no user").await;
        expect_envelope(get(&format!("{url}?user="), &[]).await, 401, "empty user").await;
        // The header is not an identity in this mode.
        expect_envelope(
            get(&url, &[("X-Remote-User", b"bob")]).await,
            401,
            "header in none mode",
        )
        .await;
        expect_envelope(
            get(&format!("{url}?user=a%01b"), &[]).await,
            400,
            "control char",
        )
        .await;
    }

    async fn token_auth_accepts_query_cookie_and_bearer(env: Env) {
        let (node, _dir) = token_node(&env).await;
        let url = node.stream_url();
        let exp = now() as u64 + 600;
        let token = |sub: &str| hs256(SECRET.as_bytes(), &json!({"sub": sub, "exp": exp}));

        let mut q = SseClient::open(&format!("{url}?token={}", token("dana")), &[]).await;
        assert_eq!(q.status, 200, "token in the query");
        assert_eq!(established(&mut q).await["username"], "dana");

        let cookie = format!("theme=dark; sse_token={}; other=1", token("erin"));
        let mut ck = SseClient::open(&url, &[("Cookie", &cookie)]).await;
        assert_eq!(ck.status, 200, "token in the cookie");
        assert_eq!(established(&mut ck).await["username"], "erin");

        let bearer = format!("Bearer {}", token("frank"));
        let mut b = SseClient::open(&url, &[("Authorization", &bearer)]).await;
        assert_eq!(b.status, 200, "bearer token");
        assert_eq!(established(&mut b).await["username"], "frank");

        assert_eq!(listed_users(&node).await, ["dana", "erin", "frank"]);

        // Header mode's header means nothing here.
        expect_envelope(
            get(&url, &[("X-Remote-User", b"dana")]).await,
            401,
            "no token",
        )
        .await;
    }

    async fn token_auth_rejects_bad_tokens(env: Env) {
        let (node, _dir) = token_node(&env).await;
        let url = node.stream_url();
        let t = now() as u64;

        let expired = hs256(SECRET.as_bytes(), &json!({"sub": "dana", "exp": t - 120}));
        let wrong_secret = hs256(b"not-the-secret", &json!({"sub": "dana", "exp": t + 600}));
        let secret_with_newline = hs256(
            format!("{SECRET}\n").as_bytes(),
            &json!({"sub": "dana", "exp": t + 600}),
        );
        let no_exp = hs256(SECRET.as_bytes(), &json!({"sub": "dana"}));
        let no_sub = hs256(SECRET.as_bytes(), &json!({"exp": t + 600}));
        let alg_none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(
                json!({"sub": "dana", "exp": t + 600})
                    .to_string()
                    .as_bytes()
            )
        );
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
            &json!({"sub": "dana", "exp": t + 600}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let garbage = "not.a.jwt".to_string();
        for (what, tok) in [
            ("expired", &expired),
            ("wrong secret", &wrong_secret),
            ("secret including the file's newline", &secret_with_newline),
            ("missing exp", &no_exp),
            ("missing sub", &no_sub),
            ("alg none", &alg_none),
            ("HS384 instead of HS256", &hs384),
            ("garbage", &garbage),
        ] {
            expect_envelope(
                get(&format!("{url}?token={tok}"), &[]).await,
                401,
                &format!("{what} (query)"),
            )
            .await;
            let bearer = format!("Bearer {tok}");
            expect_envelope(
                get(&url, &[("Authorization", bearer.as_bytes())]).await,
                401,
                &format!("{what} (bearer)"),
            )
            .await;
            let cookie = format!("sse_token={tok}");
            expect_envelope(
                get(&url, &[("Cookie", cookie.as_bytes())]).await,
                401,
                &format!("{what} (cookie)"),
            )
            .await;
        }
        expect_envelope(get(&url, &[]).await, 401, "no token").await;
        // A valid token naming an invalid username.
        let long = hs256(
            SECRET.as_bytes(),
            &json!({"sub": "a".repeat(151), "exp": t + 600}),
        );
        expect_envelope(
            get(&format!("{url}?token={long}"), &[]).await,
            400,
            "151-character sub",
        )
        .await;
        assert!(listed_ids(&node.admin_base()).await.is_empty());
    }
}

#[test]
fn b64url_matches_rfc4648_vectors() {
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"fo"), "Zm8");
    assert_eq!(b64url(b"foo"), "Zm9v");
    assert_eq!(b64url(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

// ------------------------------------------------- token lifetime (README "Auth") ---

/// The leeway sse-notify allows on `exp` and `nbf` (README "Auth").
const LEEWAY: u64 = 5;

// The stream that comes back replays what was sent meanwhile: history.
on_every_engine! {
    async fn token_stream_ends_when_its_token_does(env: Env) {
        let (node, _dir) = token_node(&env).await;
        let (url, admin) = (node.stream_url(), node.admin_base());
        // Expiring now: still accepted for the leeway, then closed.
        let exp = now() as u64;
        let token = hs256(SECRET.as_bytes(), &json!({"sub": "gina", "exp": exp}));
        let mut tab = SseClient::open(&format!("{url}?token={token}"), &[]).await;
        assert_eq!(tab.status, 200, "a token within its leeway opens a stream");
        let id = established(&mut tab).await["connection_id"]
            .as_str()
            .expect("connection_id")
            .to_string();
        let sent = send_ok(&admin, json!({"to": "gina", "data": "before"})).await;
        let ev = tab.next_event(SECS * 5).await.expect("a message before exp arrives");
        assert_eq!(
            (api_id(&ev.id, &sent).as_str(), ev.data.as_str()),
            (sent.as_str(), "\"before\"")
        );
        let before = ev.id;

        // The next event is the notice, not before exp + leeway.
        let ev = tab
            .next_event(Duration::from_secs(LEEWAY + 30))
            .await
            .expect("token_expired within 30 s after exp + leeway");
        let at = now();
        assert_eq!(ev.event, "token_expired", "{ev:?}");
        assert_eq!(ev.id, before, "the notice does not move Last-Event-ID: {ev:?}");
        let data: Value = serde_json::from_str(&ev.data).expect("token_expired data is JSON");
        assert_eq!(data, json!({"connection_id": id, "exp": exp}));
        assert!(
            at >= (exp + LEEWAY) as f64 - 0.1,
            "token_expired at {at}, before exp {exp} + {LEEWAY} s of leeway"
        );
        // Then the close, and the record goes.
        assert!(tab.ends_within(SECS * 10).await, "the stream ends after token_expired");
        listed_ids_become(&admin, &[]).await;
        let (status, resp) = send(&admin, json!({"to": "gina", "data": "after"})).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["data"]["connections"], 0, "no stream of gina is left: {resp}");

        // What the page does: a fresh token, Last-Event-ID, nothing missed.
        let fresh = hs256(SECRET.as_bytes(), &json!({"sub": "gina", "exp": now() as u64 + 600}));
        let mut back =
            SseClient::open(&format!("{url}?token={fresh}"), &[("Last-Event-ID", &before)]).await;
        assert_eq!(back.status, 200);
        established(&mut back).await;
        let ev = back.next_event(SECS * 5).await.expect("the message sent meanwhile is replayed");
        assert_eq!((ev.event.as_str(), ev.data.as_str()), ("message", "\"after\""));
    }
}

on_every_engine! {
    async fn token_not_valid_yet_is_401(env: Env) {
        let (node, _dir) = token_node(&env).await;
        let url = node.stream_url();
        let t = now() as u64;
        let claims = |nbf: u64| json!({"sub": "hal", "nbf": nbf, "exp": t + 7200});
        let later = hs256(SECRET.as_bytes(), &claims(t + 3600));
        let body = expect_envelope(
            get(&format!("{url}?token={later}"), &[]).await,
            401,
            "nbf an hour from now",
        )
        .await;
        let msg = body["message"].as_str().unwrap_or_default();
        assert!(msg.contains("nbf"), "the message names nbf: {body}");
        assert!(!msg.contains(&later), "the message echoes the token: {body}");
        // Within the leeway, and in the past: accepted.
        for (what, nbf) in [("nbf 2 s ahead (skew)", t + 2), ("nbf a minute ago", t - 60)] {
            let tok = hs256(SECRET.as_bytes(), &claims(nbf));
            let mut c = SseClient::open(&format!("{url}?token={tok}"), &[]).await;
            assert_eq!(c.status, 200, "{what}");
            assert_eq!(established(&mut c).await["username"], "hal", "{what}");
        }
    }

    async fn token_issuer_and_audience_are_checked_when_set(env: Env) {
        let (node, _dir) = token_node_with(&env, |c| {
            c.auth.token_issuer = "https://app.example".into();
            c.auth.token_audience = "sse-notify".into();
            c.auth.token_max_lifetime_secs = 0;
        })
        .await;
        let url = node.stream_url();
        let t = now() as u64;
        let (iss, aud) = ("https://app.example", "sse-notify");
        for (what, claims, names) in [
            ("no iss", json!({"sub": "jo", "exp": t + 600, "aud": aud}), "iss"),
            ("another iss", json!({"sub": "jo", "exp": t + 600, "iss": "x", "aud": aud}), "iss"),
            ("no aud", json!({"sub": "jo", "exp": t + 600, "iss": iss}), "aud"),
            (
                "another aud",
                json!({"sub": "jo", "exp": t + 600, "iss": iss, "aud": ["a", "b"]}),
                "aud",
            ),
        ] {
            let tok = hs256(SECRET.as_bytes(), &claims);
            let body = expect_envelope(get(&format!("{url}?token={tok}"), &[]).await, 401, what)
                .await;
            let msg = body["message"].as_str().unwrap_or_default();
            assert!(msg.contains(names), "{what}: the message names {names}: {body}");
        }
        // Both right (aud may be a list), and no lifetime limit (0).
        let year = 365 * 86_400;
        for (what, claims) in [
            ("single aud", json!({"sub": "jo", "exp": t + 600, "iss": iss, "aud": aud})),
            ("aud list", json!({"sub": "jo", "exp": t + year, "iss": iss, "aud": ["x", aud]})),
        ] {
            let tok = hs256(SECRET.as_bytes(), &claims);
            let mut c = SseClient::open(&format!("{url}?token={tok}"), &[]).await;
            assert_eq!(c.status, 200, "{what}");
            assert_eq!(established(&mut c).await["username"], "jo", "{what}");
        }

        // Not set: any iss passes; a token for some audience is not ours.
        let (plain, _dir2) = token_node(&env).await;
        let url = plain.stream_url();
        let tok = hs256(SECRET.as_bytes(), &json!({"sub": "jo", "exp": t + 600, "iss": "x"}));
        let mut c = SseClient::open(&format!("{url}?token={tok}"), &[]).await;
        assert_eq!(c.status, 200, "iss is not checked when auth.token_issuer is empty");
        established(&mut c).await;
        let tok = hs256(SECRET.as_bytes(), &json!({"sub": "jo", "exp": t + 600, "aud": aud}));
        let body =
            expect_envelope(get(&format!("{url}?token={tok}"), &[]).await, 401, "aud, none set")
                .await;
        assert!(
            body["message"].as_str().unwrap_or_default().contains("auth.token_audience"),
            "{body}"
        );
    }

    async fn token_lifetime_is_bounded_by_default(env: Env) {
        let (node, _dir) = token_node(&env).await;
        let url = node.stream_url();
        let t = now() as u64;
        let month = 30 * 86_400;
        for (what, claims) in [
            ("exp a month away, no iat", json!({"sub": "ivy", "exp": t + month})),
            ("iat now, exp a month away", json!({"sub": "ivy", "iat": t, "exp": t + month})),
            (
                "minted a month ago, valid for 10 more minutes",
                json!({"sub": "ivy", "iat": t - month, "exp": t + 600}),
            ),
        ] {
            let tok = hs256(SECRET.as_bytes(), &claims);
            let body = expect_envelope(get(&format!("{url}?token={tok}"), &[]).await, 401, what)
                .await;
            let msg = body["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains("auth.token_max_lifetime_secs"),
                "{what}: the message names the key: {body}"
            );
        }
        let ok = hs256(SECRET.as_bytes(), &json!({"sub": "ivy", "iat": t, "exp": t + 3600}));
        let mut c = SseClient::open(&format!("{url}?token={ok}"), &[]).await;
        assert_eq!(c.status, 200, "an hour-long token");
        assert_eq!(established(&mut c).await["username"], "ivy");
    }

    async fn invisible_usernames_are_refused_in_every_auth_mode(env: Env) {
        // Bidi overrides and isolates, zero-width characters, other format
        // characters (Cf), line and paragraph separators, other default
        // ignorables (Hangul filler, variation selector).
        let bad = [
            "ali\u{202E}ecn", "a\u{202A}b", "a\u{2066}b", "a\u{2069}", "a\u{200B}b", "\u{200D}a",
            "a\u{200E}", "a\u{2060}b", "\u{FEFF}alice", "a\u{00AD}b", "a\u{061C}b", "a\u{E0041}",
            "a\u{2028}b", "a\u{3164}b", "a\u{FE0F}",
        ];
        let enc = |u: &str| {
            percent_encoding::utf8_percent_encode(u, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        // header
        let header = TestNode::start(env.config()).await;
        for user in bad {
            let body = expect_envelope(
                get(&header.stream_url(), &[("X-Remote-User", user.as_bytes())]).await,
                400,
                &format!("header {user:?}"),
            )
            .await;
            assert!(body["message"].as_str().unwrap_or_default().contains("username"), "{body}");
        }
        // none
        let mut c = env.config();
        c.auth.mode = AuthMode::None;
        let none = TestNode::start(c).await;
        for user in bad {
            let url = format!("{}?user={}", none.stream_url(), enc(user));
            expect_envelope(get(&url, &[]).await, 400, &format!("none {user:?}")).await;
        }
        // token
        let (token, _dir) = token_node(&env).await;
        let exp = now() as u64 + 600;
        for user in bad {
            let tok = hs256(SECRET.as_bytes(), &json!({"sub": user, "exp": exp}));
            let url = format!("{}?token={tok}", token.stream_url());
            expect_envelope(get(&url, &[]).await, 400, &format!("token {user:?}")).await;
        }
        // What stays allowed: letters of any script, spaces, emoji.
        for user in ["émile 李", "مریم", "\u{1F600}x"] {
            let url = format!("{}?user={}", none.stream_url(), enc(user));
            let mut c = SseClient::open(&url, &[]).await;
            assert_eq!(c.status, 200, "{user:?}");
            assert_eq!(established(&mut c).await["username"], user);
        }
        for node in [&header, &token] {
            assert!(listed_ids(&node.admin_base()).await.is_empty(), "a refused name registered");
        }
    }
}

on_every_engine! {
    async fn cors_for_listed_origins_only(env: Env) {
        let mut c = env.config();
        c.stream.cors_origins = vec!["http://app.example".into()];
        let node = TestNode::start(c).await;
        let url = node.stream_url();

        let resp = get(
            &url,
            &[
                ("X-Remote-User", b"alice"),
                ("Origin", b"http://app.example"),
            ],
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers().get("access-control-allow-origin"),
            Some(&HeaderValue::from_static("http://app.example"))
        );
        assert_eq!(
            resp.headers().get("access-control-allow-credentials"),
            Some(&HeaderValue::from_static("true"))
        );
        drop(resp);

        for other in ["http://evil.example", "http://app.example.evil", "null"] {
            let resp = get(
                &url,
                &[("X-Remote-User", b"alice"), ("Origin", other.as_bytes())],
            )
            .await;
            assert_eq!(resp.status().as_u16(), 200, "{other}");
            let acao = resp.headers().get("access-control-allow-origin");
            assert!(acao.is_none(), "origin {other} got ACAO {acao:?}");
            let acac = resp.headers().get("access-control-allow-credentials");
            assert!(acac.is_none(), "origin {other} got ACAC {acac:?}");
        }

        // Preflight from the listed origin, as a browser sends it (no identity).
        let resp = request(
            reqwest::Method::OPTIONS,
            &url,
            &[
                ("Origin", b"http://app.example"),
                ("Access-Control-Request-Method", b"GET"),
                (
                    "Access-Control-Request-Headers",
                    b"last-event-id,authorization",
                ),
            ],
        )
        .await;
        assert!(
            resp.status().is_success(),
            "preflight status {}",
            resp.status()
        );
        let h = resp.headers();
        assert_eq!(
            h.get("access-control-allow-origin"),
            Some(&HeaderValue::from_static("http://app.example"))
        );
        let allow_headers = h
            .get("access-control-allow-headers")
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default();
        for needed in ["last-event-id", "authorization"] {
            assert!(
                allow_headers
                    .split(',')
                    .any(|x| x.trim() == needed || x.trim() == "*"),
                "preflight allows {allow_headers:?}, missing {needed}"
            );
        }
        let methods = h
            .get("access-control-allow-methods")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(methods.contains("GET"), "allow-methods {methods:?}");

        // Preflight from another origin: no CORS grant.
        let resp = request(
            reqwest::Method::OPTIONS,
            &url,
            &[
                ("Origin", b"http://evil.example"),
                ("Access-Control-Request-Method", b"GET"),
            ],
        )
        .await;
        assert!(resp.headers().get("access-control-allow-origin").is_none());
    }

    async fn node_cap_refuses_with_503_then_accepts_after_a_close(env: Env) {
        let mut c = env.config();
        c.limits.max_connections = 2;
        let node = TestNode::start(c).await;
        let admin = node.admin_base();
        let (a, _) = SseClient::connect(&node, "u1").await;
        let (_b, b_id) = SseClient::connect(&node, "u2").await;

        let resp = get(&node.stream_url(), &[("X-Remote-User", b"u3")]).await;
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        expect_envelope(resp, 503, "third stream").await;
        let secs: u64 = retry_after
            .as_deref()
            .expect("503 has Retry-After")
            .parse()
            .expect("Retry-After in seconds");
        assert!(secs >= 1, "Retry-After {secs}");
        assert_eq!(
            listed_user(&admin, "u3").await["connection_count"],
            0,
            "refused stream registered"
        );
        assert_eq!(listed_ids(&admin).await.len(), 2);
        if let Some(redis) = env.redis_server() {
            assert!(!exists(&mut redis.conn(), "sse:user:u3"), "refused stream in Redis");
        }

        drop(a);
        let url = node.stream_url();
        // The accepted stream stays open, holding its slot.
        let kept = std::sync::Mutex::new(None);
        let accepted = eventually(Duration::from_secs(3), || {
            let (url, kept) = (url.clone(), &kept);
            async move {
                let mut c = SseClient::open(&url, &[("X-Remote-User", "u3")]).await;
                if c.status != 200 {
                    assert_eq!(c.status, 503);
                    return false;
                }
                assert_eq!(established(&mut c).await["username"], "u3");
                *kept.lock().expect("kept") = Some(c);
                true
            }
        })
        .await;
        assert!(accepted, "a closed stream did not free its slot within 3s");
        let ids = listed_ids(&admin).await;
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&b_id), "{ids:?}");
    }
}

/// Reads `message` events until `want` of them arrived, telling `seen`
/// the `i` of each; returns them and the still open stream.
fn collect(
    mut tab: SseClient,
    want: usize,
    seen: tokio::sync::watch::Sender<i64>,
) -> tokio::task::JoinHandle<(Vec<i64>, SseClient)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(ev) = tab.next_event(left).await else {
                break;
            };
            if ev.event == "message" {
                let d: Value = serde_json::from_str(&ev.data).unwrap();
                let i = d["i"].as_i64().unwrap();
                got.push(i);
                seen.send_replace(i);
            }
        }
        (got, tab)
    })
}

/// Waits until a reading tab has read message `i` or a later one.
async fn reader_reached(seen: &mut tokio::sync::watch::Receiver<i64>, i: i64, who: &str) {
    let reached = tokio::time::timeout(Duration::from_secs(20), seen.wait_for(|&at| at >= i))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        reached,
        "{who}'s reading tab never got past message {} while message {i} was due",
        *seen.borrow()
    );
}

/// Four workers: the readers, the sender and the node all stay busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_dropped_while_others_get_everything_memory() {
    slow_consumer_is_dropped_while_others_get_everything(Env::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_dropped_while_others_get_everything_redis() {
    slow_consumer_is_dropped_while_others_get_everything(Env::redis()).await;
}

/// A tab that reads nothing is dropped when its queue fills; tabs that
/// read get every message. "Reads" is judged by the server from its
/// queue alone: a reading tab whose stream task is not scheduled while
/// `queue_size` frames arrive looks exactly like one that stopped. On a
/// loaded 2-core machine a runnable task can wait tens of milliseconds for
/// its worker thread, so the sender stays at most `AHEAD` messages ahead of
/// the reading tabs (they read at their pace, not the scheduler's), and
/// the queue has room for that and for the heartbeats of a long stall.
/// The tab that reads nothing is not waited for.
async fn slow_consumer_is_dropped_while_others_get_everything(env: Env) {
    const QUEUE: usize = 32;
    const AHEAD: i64 = 8;
    // 600 frames of 16 KB: 9.6 MB, more than the kernel buffers of one
    // connection (net.ipv4.tcp_wmem allows 4 MiB by default) plus the
    // queue, so the tab that reads nothing must overflow its queue.
    const N: i64 = 600;
    let mut c = env.config();
    c.stream.queue_size = QUEUE;
    let node = TestNode::start(c).await;
    let admin = node.admin_base();
    let (slow, slow_id) = non_reading_stream(node.public, "alice").await;
    let (alice2, alice2_id) = SseClient::connect(&node, "alice").await;
    let (carol, carol_id) = SseClient::connect(&node, "carol").await;
    assert_eq!(listed_user(&admin, "alice").await["connection_count"], 2);

    let pad = "x".repeat(16 * 1024);
    let (alice_seen, mut alice_at) = tokio::sync::watch::channel(-1);
    let (carol_seen, mut carol_at) = tokio::sync::watch::channel(-1);
    let alice_rx = collect(alice2, N as usize, alice_seen);
    let carol_rx = collect(carol, (N / 2) as usize, carol_seen);
    let client = http();
    for i in 0..N {
        if i >= AHEAD {
            reader_reached(&mut alice_at, i - AHEAD, "alice").await;
            // Carol gets the odd ones only.
            reader_reached(&mut carol_at, i - AHEAD - 1, "carol").await;
        }
        // Even: to alice (both tabs); odd: broadcast (everyone).
        let body = if i % 2 == 0 {
            json!({"to": "alice", "data": {"i": i, "pad": pad}})
        } else {
            json!({"data": {"i": i, "pad": pad}})
        };
        let resp = client
            .post(format!("{admin}/notifications/send/"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 200, "send {i}");
    }

    // The slow consumer is dropped; the readers stay.
    listed_ids_become(&admin, &[&alice2_id, &carol_id]).await;
    if let Some(redis) = env.redis_server() {
        assert!(
            gone(&mut redis.conn(), &slow_id, "alice"),
            "{slow_id} left keys"
        );
    }
    let (alice_got, _alice2) = tokio::time::timeout(Duration::from_secs(60), alice_rx)
        .await
        .expect("alice's reader finishes")
        .unwrap();
    let (carol_got, _carol) = tokio::time::timeout(Duration::from_secs(60), carol_rx)
        .await
        .expect("carol's reader finishes")
        .unwrap();
    assert_eq!(
        alice_got,
        (0..N).collect::<Vec<_>>(),
        "alice's reading tab gets every message in order"
    );
    assert_eq!(
        carol_got,
        (0..N).filter(|i| i % 2 == 1).collect::<Vec<_>>(),
        "carol gets every broadcast in order"
    );
    // The readers are still connected and registered.
    assert_eq!(
        listed_user(&admin, "alice").await["connection_ids"],
        json!([alice2_id])
    );
    assert_eq!(
        listed_user(&admin, "carol").await["connection_ids"],
        json!([carol_id])
    );

    let text = metrics_text(&admin).await;
    let drops = metric_value(&text, "sse_notify_slow_consumer_drops_total");
    assert!(
        drops.is_some_and(|d| d >= 1.0),
        "sse_notify_slow_consumer_drops_total = {drops:?} in:\n{text}"
    );
    assert_eq!(
        metric_value(&text, "sse_notify_live_connections"),
        Some(2.0),
        "live connections after the drop:\n{text}"
    );

    // The server closed the slow socket: what it had buffered drains, then
    // EOF (or a reset).
    let mut slow = slow;
    assert!(
        tcp_ends_within(&mut slow, Duration::from_secs(10)).await,
        "the slow consumer's socket was not closed by the server"
    );
}

on_every_engine! {
    async fn shutdown_ends_streams_and_removes_their_records(env: Env) {
        let c = env.config();
        let grace = Duration::from_secs(c.server.shutdown_grace_secs);
        let mut node = TestNode::start(c).await;
        let (mut a1, a1_id) = SseClient::connect(&node, "alice").await;
        let (mut a2, a2_id) = SseClient::connect(&node, "alice").await;
        let (mut b, b_id) = SseClient::connect(&node, "bob").await;
        assert_eq!(
            listed_ids(&node.admin_base()).await,
            sorted(&[&a1_id, &a2_id, &b_id])
        );

        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), node.stop())
            .await
            .expect("stop returns within 5s with streams open");
        let took = started.elapsed();
        assert!(
            took < grace,
            "stop took {took:?}, more than server.shutdown_grace_secs ({grace:?})"
        );
        for (name, c) in [("alice 1", &mut a1), ("alice 2", &mut a2), ("bob", &mut b)] {
            assert!(c.ends_within(Duration::from_secs(2)).await, "{name} ended");
        }
        assert_eq!(node.daemon.live_streams(), 0, "streams left in the hub");
        if let Some(redis) = env.redis_server() {
            assert!(redis.registry_keys().is_empty(), "{:?}", redis.registry_keys());
        }
        // Not accepting any more.
        let refused = tokio::time::timeout(
            Duration::from_secs(2),
            stream_client()
                .get(node.stream_url())
                .header("X-Remote-User", "late")
                .send(),
        )
        .await;
        assert!(
            matches!(refused, Ok(Err(_))),
            "a new stream after stop must fail to connect"
        );
    }
}
