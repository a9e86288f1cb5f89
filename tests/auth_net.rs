//! Header auth over real IPv6 and IPv4 sockets (README "Auth"): `auth.trusted_proxies`
//! as CIDRs matched against the peer address the listener really sees, and
//! the admin API bearer token (README "HTTP API"). Every test runs its own redis-server
//! and an in-process node whose listeners are bound as the case needs.
mod common;

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::time::Duration;

use common::*;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

const TOKEN: &str = "s3cr3t-token-value";

/// IPv6 loopback is required: this machine has it, and a test that skipped
/// silently without it would prove nothing.
fn require_ipv6_loopback() {
    if let Err(e) = StdListener::bind("[::1]:0") {
        panic!(
            "IPv6 loopback (::1) is not available on this machine ({e}); \
             these tests need it (check `ip -6 addr show lo` and \
             net.ipv6.conf.lo.disable_ipv6)"
        );
    }
}

/// True when a socket bound to `[::]` also accepts IPv4 (the Linux default,
/// `net.ipv6.bindv6only = 0`).
fn dual_stack() -> bool {
    let Ok(l) = StdListener::bind("[::]:0") else {
        return false;
    };
    let port = l.local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    StdStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// A node whose public (and admin) listener is `listen`, trusting `trusted`
/// (None: the built-in default), with `api.token` = `token`.
async fn node(
    redis: &RedisServer,
    listen: &str,
    admin_listen: &str,
    trusted: Option<&[&str]>,
    token: &str,
) -> TestNode {
    let mut c = test_config(&redis.url());
    c.server.listen = listen.into();
    c.server.admin_listen = admin_listen.into();
    if let Some(t) = trusted {
        c.auth.trusted_proxies = t.iter().map(|s| s.to_string()).collect();
    }
    c.api.token = sse_notify::config::Secret(token.into());
    c.validate().expect("test config is valid");
    TestNode::start(c).await
}

/// `http://{addr}{path}` for an address of the right family.
fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Opens the stream at `url` with the given headers and reads the answer:
/// for 200, the `connection_established` data; else the error envelope.
async fn open(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = stream_client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(5), req.send())
        .await
        .unwrap_or_else(|_| panic!("{url}: no response head within 5s"))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    if status == 200 {
        let mut events = Box::pin(resp.bytes_stream().eventsource());
        let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap_or_else(|_| panic!("{url}: no connection_established within 5s"))
            .unwrap_or_else(|| panic!("{url}: stream ended before connection_established"))
            .unwrap_or_else(|e| panic!("{url}: bad SSE: {e}"));
        assert_eq!(ev.event, "connection_established", "{url}");
        return (status, serde_json::from_str(&ev.data).unwrap());
    }
    let body = expect_envelope(resp, status, url).await;
    (status, body)
}

/// The stream opened as `user` from the listener's own address family.
async fn open_as(node: &TestNode, user: &str) -> (u16, Value) {
    open(
        &url(node.public, "/notifications/stream/"),
        &[("X-Remote-User", user)],
    )
    .await
}

// ------------------------------------------------------------ IPv6 peer ---

#[tokio::test]
async fn ipv6_peer_trusted_by_default_gets_its_stream() {
    require_ipv6_loopback();
    let redis = RedisServer::start();
    let mut n = node(&redis, "[::1]:0", "127.0.0.1:0", None, "").await;
    assert!(n.public.is_ipv6(), "listener is {}", n.public);
    let (status, data) = open_as(&n, "alice").await;
    assert_eq!(
        status, 200,
        "from ::1 with the default trusted_proxies: {data}"
    );
    assert_eq!(data["username"], "alice");
    n.stop().await;
}

#[tokio::test]
async fn ipv6_peer_missing_header_is_401() {
    require_ipv6_loopback();
    let redis = RedisServer::start();
    let mut n = node(&redis, "[::1]:0", "127.0.0.1:0", None, "").await;
    let stream = url(n.public, "/notifications/stream/");
    let (status, body) = open(&stream, &[]).await;
    assert_eq!(status, 401, "no X-Remote-User from trusted ::1: {body}");
    let (status, body) = open(&stream, &[("X-Remote-User", "")]).await;
    assert_eq!(status, 401, "empty X-Remote-User from trusted ::1: {body}");
    n.stop().await;
}

#[tokio::test]
async fn ipv6_peer_not_in_ipv4_only_trusted_list_is_403() {
    require_ipv6_loopback();
    let redis = RedisServer::start();
    let mut n = node(
        &redis,
        "[::1]:0",
        "127.0.0.1:0",
        Some(&["127.0.0.1/32"]),
        "",
    )
    .await;
    let (status, body) = open_as(&n, "alice").await;
    assert_eq!(
        status, 403,
        "::1 with trusted_proxies = [\"127.0.0.1/32\"]: {body}"
    );
    n.stop().await;
}

#[tokio::test]
async fn ipv6_peer_trusted_by_bare_address_and_wider_prefix() {
    require_ipv6_loopback();
    let redis = RedisServer::start();
    // A bare address counts as a /128.
    let mut n = node(&redis, "[::1]:0", "127.0.0.1:0", Some(&["::1"]), "").await;
    let (status, body) = open_as(&n, "alice").await;
    assert_eq!(status, 200, "::1 with trusted_proxies = [\"::1\"]: {body}");
    n.stop().await;
    // ::/127 holds ::0 and ::1.
    let mut n = node(&redis, "[::1]:0", "127.0.0.1:0", Some(&["::/127"]), "").await;
    let (status, body) = open_as(&n, "alice").await;
    assert_eq!(
        status, 200,
        "::1 with trusted_proxies = [\"::/127\"]: {body}"
    );
    n.stop().await;
    // fd00::/8 does not hold ::1.
    let mut n = node(&redis, "[::1]:0", "127.0.0.1:0", Some(&["fd00::/8"]), "").await;
    let (status, body) = open_as(&n, "alice").await;
    assert_eq!(
        status, 403,
        "::1 with trusted_proxies = [\"fd00::/8\"]: {body}"
    );
    n.stop().await;
}

// ------------------------------------------------------------ IPv4 peer ---

#[tokio::test]
async fn ipv4_peer_against_cidrs() {
    let redis = RedisServer::start();
    let cases: &[(&[&str], u16)] = &[
        (&["::1/128"], 403),
        (&["127.0.0.0/8"], 200),
        (&["127.0.1.0/24"], 403),
        (&["10.0.0.0/8", "127.0.0.1/32"], 200),
        (&[], 403),
    ];
    for (trusted, want) in cases {
        let mut n = node(&redis, "127.0.0.1:0", "127.0.0.1:0", Some(trusted), "").await;
        assert!(n.public.is_ipv4(), "listener is {}", n.public);
        let (status, body) = open_as(&n, "bob").await;
        assert_eq!(
            status, *want,
            "127.0.0.1 with trusted_proxies = {trusted:?}: {body}"
        );
        if status == 200 {
            assert_eq!(body["username"], "bob");
        }
        // Without the header: 401 from a trusted peer, 401 from an
        // untrusted one too (no identity claimed, nothing to forbid).
        let (status, body) = open(&url(n.public, "/notifications/stream/"), &[]).await;
        assert_eq!(
            status, 401,
            "127.0.0.1 without header, trusted_proxies = {trusted:?}: {body}"
        );
        n.stop().await;
    }
}

// ------------------------------------------- dual-stack listener [::] ---

/// On a `[::]` listener an IPv4 client shows as `::ffff:127.0.0.1`; the
/// daemon must match it against IPv4 CIDRs, and IPv6 clients against IPv6
/// ones.
#[tokio::test]
async fn dual_stack_listener_matches_each_family() {
    require_ipv6_loopback();
    assert!(
        dual_stack(),
        "a [::] listener does not accept IPv4 here (net.ipv6.bindv6only = 1); \
         this test needs the Linux default: sysctl -w net.ipv6.bindv6only=0"
    );
    let redis = RedisServer::start();
    let cases: &[(&[&str], u16, u16)] = &[
        // trusted, status from 127.0.0.1, status from ::1
        (&["::1/128"], 403, 200),
        (&["127.0.0.1/32"], 200, 403),
        (&["127.0.0.0/8", "::1/128"], 200, 200),
        (&["127.0.1.0/24"], 403, 403),
    ];
    for (trusted, want_v4, want_v6) in cases {
        let mut n = node(&redis, "[::]:0", "127.0.0.1:0", Some(trusted), "").await;
        let port = n.public.port();
        let v4 = format!("http://127.0.0.1:{port}/notifications/stream/");
        let v6 = format!("http://[::1]:{port}/notifications/stream/");
        let (status, body) = open(&v4, &[("X-Remote-User", "carol")]).await;
        assert_eq!(
            status, *want_v4,
            "[::] listener, from 127.0.0.1, trusted_proxies = {trusted:?}: {body}"
        );
        let (status, body) = open(&v6, &[("X-Remote-User", "carol")]).await;
        assert_eq!(
            status, *want_v6,
            "[::] listener, from ::1, trusted_proxies = {trusted:?}: {body}"
        );
        n.stop().await;
    }
}

// ------------------------------------------------------- admin token ---

async fn admin_status(url: &str, auth: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = http().get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, www, body)
}

#[tokio::test]
async fn admin_bearer_token_over_ipv4_and_ipv6() {
    require_ipv6_loopback();
    let redis = RedisServer::start();
    for admin_listen in ["127.0.0.1:0", "[::1]:0"] {
        let mut n = node(&redis, "127.0.0.1:0", admin_listen, None, TOKEN).await;
        let conns = url(n.admin, "/notifications/connections/");
        let wrong_same_len = format!("{}X", &TOKEN[..TOKEN.len() - 1]);
        assert_eq!(wrong_same_len.len(), TOKEN.len());
        let refused = [
            ("no header".to_string(), None),
            (
                "same length, last byte differs".into(),
                Some(format!("Bearer {wrong_same_len}")),
            ),
            (
                "same length, first byte differs".into(),
                Some(format!("Bearer X{}", &TOKEN[1..])),
            ),
            ("shorter".into(), Some("Bearer s3cr3t".to_string())),
            (
                "prefix of the token".into(),
                Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
            ),
            ("longer".into(), Some(format!("Bearer {TOKEN}X"))),
            ("empty".into(), Some("Bearer ".to_string())),
            ("other scheme".into(), Some(format!("Basic {TOKEN}"))),
            ("bare token".into(), Some(TOKEN.to_string())),
        ];
        for (what, auth) in &refused {
            let (status, www, body) = admin_status(&conns, auth.as_deref()).await;
            assert_eq!(status, 401, "{admin_listen}: {what}: {body}");
            assert_eq!(body["code"], json!(401), "{admin_listen}: {what}: {body}");
            assert_eq!(
                www.as_deref(),
                Some("Bearer"),
                "{admin_listen}: {what}: WWW-Authenticate"
            );
            let msg = body["message"].as_str().unwrap_or_default();
            assert!(
                !msg.contains(TOKEN),
                "{admin_listen}: {what}: the 401 leaks the token: {msg}"
            );
        }
        let (status, _, body) = admin_status(&conns, Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, 200, "{admin_listen}: right token: {body}");
        assert_eq!(body["code"], json!(200));
        // The scheme is case-insensitive (RFC 9110).
        let (status, _, body) = admin_status(&conns, Some(&format!("bearer {TOKEN}"))).await;
        assert_eq!(status, 200, "{admin_listen}: lower-case scheme: {body}");
        // /healthz needs no token; /metrics and unknown routes do.
        let (status, _, body) = admin_status(&url(n.admin, "/healthz"), None).await;
        assert_eq!(
            status, 200,
            "{admin_listen}: /healthz without token: {body}"
        );
        let (status, _, _) = admin_status(&url(n.admin, "/metrics"), None).await;
        assert_eq!(status, 401, "{admin_listen}: /metrics without token");
        let (status, _, _) = admin_status(&url(n.admin, "/nope"), None).await;
        assert_eq!(status, 401, "{admin_listen}: unknown route without token");
        let (status, _, _) =
            admin_status(&url(n.admin, "/metrics"), Some(&format!("Bearer {TOKEN}"))).await;
        assert_eq!(status, 200, "{admin_listen}: /metrics with token");
        n.stop().await;
    }
}
