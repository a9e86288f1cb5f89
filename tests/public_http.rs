//! The public listener's hand-written HTTP/1 server on its own, over raw
//! TCP: limits and malformed heads, slow and half-open clients, pipelining,
//! methods, CORS preflights, the body framing per HTTP version (and a strict
//! HTTP/1.1 parser, Python's `h11`, on a whole stream's bytes), and a
//! property test that splits requests and responses into random short
//! pieces.
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STREAM: &str = "/notifications/stream/";

/// A response as read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    version: String,
    headers: HashMap<String, String>,
    /// Everything after the head.
    body: Vec<u8>,
}

impl Raw {
    fn parse(bytes: &[u8]) -> Raw {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(bytes)));
        let head = std::str::from_utf8(&bytes[..end]).expect("head is UTF-8");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = HashMap::new();
        for l in lines {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            let old = headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            assert!(old.is_none(), "header {k} twice in {head}");
        }
        Raw {
            status,
            version,
            headers,
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Checks a complete error reply: the JSON envelope, exactly
    /// `Content-Length` bytes of it.
    fn assert_envelope(&self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert_eq!(self.version, "HTTP/1.1", "{what}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        assert!(self.header("transfer-encoding").is_none(), "{what}");
        let len: usize = self
            .header("content-length")
            .unwrap_or_else(|| panic!("{what}: no content-length: {self:?}"))
            .parse()
            .expect("content-length is a number");
        assert_eq!(len, self.body.len(), "{what}: body length");
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {self:?}"));
        assert_eq!(v["code"], status, "{what}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }
}

/// Reads until the server closes (or resets after closing), at most `within`.
async fn read_to_end(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server did not close within {within:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// One request written at once; the whole response up to the close.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    Raw::parse(&read_to_end(&mut s, Duration::from_secs(10)).await)
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: sse.test\r\n{extra}\r\n").into_bytes()
}

async fn live_connections(node: &TestNode) -> i64 {
    let text = metrics_text(&node.admin_url("")).await;
    text.lines()
        .find_map(|l| l.strip_prefix("sse_notify_live_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no live_connections in\n{text}"))
}

#[tokio::test]
async fn head_over_the_limit_gets_431() {
    let redis = RedisServer::start();
    let node = TestNode::start(test_config(&redis.url())).await;
    // One header 20 KB long.
    let big = format!("X-Pad: {}\r\n", "a".repeat(20 * 1024));
    let r = exchange(node.public, &get(STREAM, &big)).await;
    r.assert_envelope(431, "20 KB header");
    // 65 headers, each small.
    let many: String = (0..65).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = exchange(node.public, &get(STREAM, &many)).await;
    r.assert_envelope(431, "65 headers");
    // The node still serves.
    let (_c, _) = SseClient::connect(&node, "after431").await;
}

#[tokio::test]
async fn malformed_heads_get_400() {
    let redis = RedisServer::start();
    let node = TestNode::start(test_config(&redis.url())).await;
    let cases: [(&str, &[u8]); 6] = [
        ("no version", b"GET /notifications/stream/\r\n\r\n"),
        ("garbage line", b"HELLO\r\n\r\n"),
        ("bad version", b"GET / HTTP/9.9\r\n\r\n"),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nHost sse.test\r\n\r\n",
        ),
        (
            "control byte in a value",
            b"GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n",
        ),
        ("space in the method", b"G T / HTTP/1.1\r\n\r\n"),
    ];
    for (what, req) in cases {
        exchange(node.public, req).await.assert_envelope(400, what);
    }
    assert_eq!(live_connections(&node).await, 0);
}

#[tokio::test]
async fn slowloris_is_dropped_at_the_head_timeout_without_a_slot() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    config.limits.max_connections = 1;
    let node = TestNode::start(config).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(node.public).await.expect("connect");
        s.write_all(b"GET /notifications/stream/ HTTP/1.1\r\nX-Remote-User: slow\r\nX-A: ")
            .await
            .expect("write");
        slow.push(s);
    }
    // The one stream slot is free for a real client meanwhile.
    let (mut real, _) = SseClient::connect(&node, "real").await;
    assert_eq!(live_connections(&node).await, 1);

    // One byte every 500 ms: trickling must not extend the deadline.
    let mut closed_at: Vec<Option<Duration>> = vec![None; slow.len()];
    let deadline = started + Duration::from_secs(15);
    while closed_at.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "slow heads still open after 15 s: {closed_at:?}"
        );
        for (i, s) in slow.iter_mut().enumerate() {
            if closed_at[i].is_some() {
                continue;
            }
            let mut buf = [0u8; 64];
            let gone =
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => true,
                    Ok(Ok(n)) => panic!(
                        "an incomplete head got an answer: {:?}",
                        String::from_utf8_lossy(&buf[..n])
                    ),
                    Err(_) => s.write_all(b"a").await.is_err(),
                };
            if gone {
                closed_at[i] = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for t in closed_at.into_iter().flatten() {
        assert!(
            t >= Duration::from_secs(9),
            "slow head dropped after {t:?}, before the 10 s head timeout"
        );
    }
    // Never counted, and the real stream was not disturbed.
    assert_eq!(live_connections(&node).await, 1);
    let (status, body) = send(&node.admin_url(""), json!({"to": "real", "data": 1})).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        real.next_event(Duration::from_secs(3)).await.is_some(),
        "the real stream stopped delivering"
    );
}

#[tokio::test]
async fn pipelined_bytes_after_the_request_are_ignored() {
    let redis = RedisServer::start();
    let node = TestNode::start(test_config(&redis.url())).await;

    // An error reply, with another request behind it: answered once, intact
    // (no reset eating the reply), then closed.
    let mut req = get("/nope", "");
    req.extend_from_slice(&get(STREAM, "X-Remote-User: bob\r\n"));
    req.extend_from_slice(&vec![b'x'; 100_000]);
    let r = exchange(node.public, &req).await;
    r.assert_envelope(404, "pipelined after 404");

    // A stream with another request and junk behind it: one stream, still
    // delivering, and the junk never answered.
    let mut s = TcpStream::connect(node.public).await.expect("connect");
    let mut req = get(STREAM, "X-Remote-User: piper\r\n");
    req.extend_from_slice(&get(STREAM, "X-Remote-User: piper\r\n"));
    req.extend_from_slice(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
    s.write_all(&req).await.expect("write");
    let got = read_until(
        &mut s,
        b"event: connection_established",
        Duration::from_secs(5),
    )
    .await;
    let (status, body) = send(
        &node.admin_url(""),
        json!({"to": "piper", "event": "piped", "data": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["connections"], 1,
        "one stream for piper: {body}"
    );
    let more = read_until(&mut s, b"event: piped\ndata: 1\n\n", Duration::from_secs(5)).await;
    let all = [got, more].concat();
    assert_eq!(
        all.windows(9).filter(|w| w == b"HTTP/1.1 ").count(),
        1,
        "one response only: {:?}",
        String::from_utf8_lossy(&all)
    );
}

/// Reads until `needle` has been seen; everything read.
async fn read_until(s: &mut TcpStream, needle: &[u8], within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + within;
    while !out.windows(needle.len()).any(|w| w == needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            r => panic!(
                "never saw {:?} ({r:?}); got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&out)
            ),
        }
    }
    out
}

#[tokio::test]
async fn head_and_other_methods_get_405_with_allow() {
    let redis = RedisServer::start();
    let node = TestNode::start(test_config(&redis.url())).await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "TRACE", "FOO"] {
        let req = format!(
            "{method} {STREAM} HTTP/1.1\r\nHost: x\r\nX-Remote-User: m\r\nContent-Length: 0\r\n\r\n"
        );
        let r = exchange(node.public, req.as_bytes()).await;
        r.assert_envelope(405, method);
        assert_eq!(r.header("allow"), Some("GET, OPTIONS"), "{method}");
    }
    // HEAD: the same head, Content-Length of the envelope it leaves out.
    let req = format!("HEAD {STREAM} HTTP/1.1\r\nHost: x\r\nX-Remote-User: m\r\n\r\n");
    let r = exchange(node.public, req.as_bytes()).await;
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("allow"), Some("GET, OPTIONS"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(
        r.header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > 0),
        "{r:?}"
    );
    assert!(r.body.is_empty(), "a reply to HEAD has no body: {r:?}");
    assert_eq!(live_connections(&node).await, 0);
}

#[tokio::test]
async fn cors_preflight_only_for_listed_origins() {
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    config.stream.cors_origins = vec!["http://app.example".into()];
    let node = TestNode::start(config).await;
    let preflight = |origin: Option<&str>| {
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        format!(
            "OPTIONS {STREAM} HTTP/1.1\r\nHost: x\r\n{origin}Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: last-event-id, authorization\r\n\r\n"
        )
    };
    let r = exchange(
        node.public,
        preflight(Some("http://app.example")).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert!(
        r.header("content-length").is_none() && r.header("transfer-encoding").is_none(),
        "a 204 announces no body: {r:?}"
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(allowed.contains("last-event-id") && allowed.contains("authorization"));
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("GET")));

    for origin in [
        Some("http://evil.example"),
        Some("http://app.example.evil"),
        Some("null"),
        None,
    ] {
        let r = exchange(node.public, preflight(origin).as_bytes()).await;
        r.assert_envelope(403, &format!("preflight from {origin:?}"));
        let cors: Vec<&String> = r
            .headers
            .keys()
            .filter(|k| k.starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "origin {origin:?} got {cors:?}");
    }

    // Without any listed origin, no preflight is granted.
    let redis2 = RedisServer::start();
    let node2 = TestNode::start(test_config(&redis2.url())).await;
    let r = exchange(
        node2.public,
        preflight(Some("http://app.example")).as_bytes(),
    )
    .await;
    r.assert_envelope(403, "no cors_origins");
    assert!(!r.headers.keys().any(|k| k.starts_with("access-control-")));
}

/// Decodes a chunked body strictly: (chunks, whether the last chunk came).
fn dechunk(mut body: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut chunks = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            assert!(body.is_empty(), "partial chunk size line {body:?}");
            return (chunks, false);
        };
        let size_text = std::str::from_utf8(&body[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_text, 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
        body = &body[eol + 2..];
        if size == 0 {
            assert_eq!(body, b"\r\n", "after the last chunk");
            return (chunks, true);
        }
        assert!(body.len() >= size + 2, "truncated chunk");
        assert_eq!(&body[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        chunks.push(body[..size].to_vec());
        body = &body[size + 2..];
    }
}

#[tokio::test]
async fn http11_stream_is_chunked_http10_is_close_delimited() {
    let redis = RedisServer::start();
    let mut node = TestNode::start(test_config(&redis.url())).await;
    let addr = node.public;
    let mut s11 = TcpStream::connect(addr).await.expect("connect");
    s11.write_all(&get(STREAM, "X-Remote-User: v11\r\n"))
        .await
        .expect("write");
    let mut s10 = TcpStream::connect(addr).await.expect("connect");
    s10.write_all(format!("GET {STREAM} HTTP/1.0\r\nX-Remote-User: v10\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw11 = read_until(&mut s11, b"connection_established", Duration::from_secs(5)).await;
    let mut raw10 = read_until(&mut s10, b"connection_established", Duration::from_secs(5)).await;
    for user in ["v11", "v10"] {
        let (status, _) = send(
            &node.admin_url(""),
            json!({"to": user, "event": "x", "data": "ü".repeat(5000)}),
        )
        .await;
        assert_eq!(status, 200);
    }
    // Delivered (through the bus) before the shutdown closes the streams.
    raw11.extend(read_until(&mut s11, b"event: x\ndata: ", Duration::from_secs(5)).await);
    raw10.extend(read_until(&mut s10, b"event: x\ndata: ", Duration::from_secs(5)).await);
    node.stop().await;
    raw11.extend(read_to_end(&mut s11, Duration::from_secs(10)).await);
    raw10.extend(read_to_end(&mut s10, Duration::from_secs(10)).await);
    let b11 = Raw::parse(&raw11);
    let b10 = Raw::parse(&raw10);

    assert_eq!(b11.status, 200);
    assert_eq!(b11.header("transfer-encoding"), Some("chunked"));
    assert!(b11.header("content-length").is_none());
    let (chunks, last) = dechunk(&b11.body);
    assert!(last, "no terminating chunk after the shutdown");
    for c in &chunks {
        assert!(c.ends_with(b"\n\n"), "a chunk ends mid-frame: {c:?}");
    }
    let text = String::from_utf8(chunks.concat()).expect("UTF-8 body");
    assert!(text.contains(&format!("event: x\ndata: \"{}\"\n\n", "ü".repeat(5000))));

    assert_eq!(b10.status, 200);
    assert!(
        b10.header("transfer-encoding").is_none(),
        "{:?}",
        b10.headers
    );
    assert!(b10.header("content-length").is_none());
    let text = String::from_utf8(b10.body.clone()).expect("UTF-8 body");
    assert!(text.starts_with("retry: "), "{text:?}");
    assert!(text.contains(&format!("event: x\ndata: \"{}\"\n\n", "ü".repeat(5000))));
    assert!(text.ends_with("\n\n"));
}

/// The raw bytes of a whole HTTP/1.1 stream (open, messages, a heartbeat,
/// the node's shutdown) through Python's `h11` as the client: any framing
/// violation fails, and the body must be exactly the frames sent.
#[tokio::test]
async fn h11_accepts_a_whole_stream() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import h11"])
        .output()
        .expect("python3 must be installed");
    assert!(
        probe.status.success(),
        "python3 lacks h11: `python3 -m pip install h11` (.ci/run does)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let redis = RedisServer::start();
    let mut config = test_config(&redis.url());
    config.stream.retry_ms = 1500;
    let mut node = TestNode::start(config).await;
    let mut s = TcpStream::connect(node.public).await.expect("connect");
    let request = get(STREAM, "X-Remote-User: strict\r\n");
    s.write_all(&request).await.expect("write");
    let mut raw = read_until(&mut s, b"connection_established", Duration::from_secs(5)).await;
    let big = "€".repeat(14_000);
    let sent = [
        ("message", json!({"text": "línea 1\nlínea 2"})),
        ("big", json!({"big": big})),
        ("n", json!(18446744073709551615u64)),
    ];
    let mut expected = Vec::new();
    for (event, data) in &sent {
        let (status, body) = send(
            &node.admin_url(""),
            json!({"to": "strict", "event": event, "data": data}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let id = body["data"]["message_id"].as_str().expect("id").to_string();
        expected.push(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"));
    }
    let last_id = expected[expected.len() - 1]
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    raw.extend(read_until(&mut s, last_id.as_bytes(), Duration::from_secs(5)).await);
    raw.extend(read_until(&mut s, b": heartbeat ", Duration::from_secs(5)).await);
    node.stop().await;
    raw.extend(read_to_end(&mut s, Duration::from_secs(10)).await);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stream.bin");
    std::fs::write(&path, &raw).expect("write capture");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/h11_check.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&path)
        .output()
        .expect("run h11_check.py");
    assert!(
        out.status.success(),
        "h11 rejected the stream: {}\nraw: {:?}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&raw)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("h11_check.py prints JSON");
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["ended"], true, "no end of message: {report}");
    assert_eq!(
        report["headers"]["transfer-encoding"], "chunked",
        "{report}"
    );
    let chunks: Vec<String> = report["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| c.as_str().expect("chunk text").to_string())
        .collect();
    for c in &chunks {
        assert!(c.ends_with("\n\n"), "chunk ends mid-frame: {c:?}");
    }
    let body = chunks.concat();
    // Frames: retry, connection_established, the messages in order, one or
    // more heartbeats, then the shutdown's own retry frame.
    let frames: Vec<String> = body.split_inclusive("\n\n").map(str::to_string).collect();
    assert_eq!(frames[0], "retry: 1500\n\n", "{frames:?}");
    assert!(frames[1].starts_with("event: connection_established\ndata: {"));
    let messages: Vec<&String> = frames.iter().filter(|f| f.starts_with("id: ")).collect();
    assert_eq!(messages, expected.iter().collect::<Vec<_>>());
    let heartbeats = frames
        .iter()
        .filter(|f| f.starts_with(": heartbeat "))
        .count();
    assert!(heartbeats >= 1, "{frames:?}");
    let last = frames.last().expect("frames");
    assert!(last.starts_with("retry: "), "last frame {last:?}");
    assert_eq!(
        frames.len(),
        2 + expected.len() + heartbeats + 1,
        "unexpected frames: {frames:?}"
    );
}

/// A client that stops reading: the node drops it as a slow consumer once
/// its queue is full, without holding what it could not send.
#[tokio::test(flavor = "multi_thread")]
async fn client_that_stops_reading_is_dropped_without_growing_memory() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(
        &redis.url(),
        "[stream]\nqueue_size = 16\nheartbeat_secs = 1\n",
    )
    .await;
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("proc status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    };
    let pid = node.child.id();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut s = socket.connect(node.public).await.expect("connect");
    s.write_all(&get(STREAM, "X-Remote-User: sleepy\r\n"))
        .await
        .expect("write");
    read_until(&mut s, b"connection_established", Duration::from_secs(5)).await;
    let before = rss(pid);
    // 400 messages of 40 KB: 16 MB the node would hold if it buffered them.
    let payload = "z".repeat(40_000);
    let mut dropped = false;
    for _ in 0..400 {
        let (status, body) = send(
            &node.admin_url(""),
            json!({"to": "sleepy", "data": payload}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if body["data"]["connections"] == 0 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the non-reading stream was never dropped");
    let after = rss(pid);
    let metrics = metrics_text(&node.admin_url("")).await;
    assert!(
        metrics.contains("sse_notify_slow_consumer_drops_total 1\n"),
        "{metrics}"
    );
    assert!(
        after < before + 4096,
        "RSS grew from {before} kB to {after} kB for one stream"
    );
    // The socket is closed (whatever was in flight, then EOF or reset).
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the dropped stream's socket is still open"),
        }
    }
}

/// Requests whose full reply is deterministic (no ids, no dates).
fn deterministic_requests() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("no identity", get(STREAM, "")),
        ("unknown route", get("/nope?a=b", "Accept: */*\r\n")),
        (
            "post",
            format!("POST {STREAM} HTTP/1.1\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        ),
        (
            "preflight",
            format!("OPTIONS {STREAM} HTTP/1.1\r\nOrigin: http://other.example\r\n\r\n")
                .into_bytes(),
        ),
        ("malformed", b"GET / HTTP/1.1\r\nBroken\r\n\r\n".to_vec()),
    ]
}

/// Writes `req` in the given piece sizes (TCP_NODELAY, a pause between
/// pieces so that they arrive apart) and reads the reply in the given read
/// sizes.
async fn pieced(addr: SocketAddr, req: &[u8], writes: &[usize], reads: &[usize]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut rest = req;
    let mut sizes = writes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        s.write_all(&rest[..n]).await.expect("write piece");
        rest = &rest[n..];
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut out = Vec::new();
    let mut sizes = reads.iter().cycle();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = (*sizes.next().unwrap_or(&1)).max(1);
        let mut buf = vec![0u8; n];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(k)) => out.extend_from_slice(&buf[..k]),
            Err(_) => panic!(
                "no close within 10 s; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

#[test]
fn requests_in_random_short_pieces_get_the_same_reply() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redis = RedisServer::start();
    let node = rt.block_on(TestNode::start(test_config(&redis.url())));
    let addr = node.public;
    let requests = deterministic_requests();
    let reference: Vec<Vec<u8>> = requests
        .iter()
        .map(|(_, r)| rt.block_on(pieced(addr, r, &[usize::MAX], &[65536])))
        .collect();
    for ((what, _), reply) in requests.iter().zip(&reference) {
        let r = Raw::parse(reply);
        assert!(r.status >= 400, "{what}: {r:?}");
        r.assert_envelope(r.status, what);
    }
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 48,
        ..RunnerConfig::default()
    });
    let strategy = (
        0..requests.len(),
        prop::collection::vec(1usize..12, 1..8),
        prop::collection::vec(1usize..24, 1..8),
    );
    let result = runner.run(&strategy, |(i, writes, reads)| {
        let got = rt.block_on(pieced(addr, &requests[i].1, &writes, &reads));
        prop_assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&reference[i]),
            "{}",
            requests[i].0
        );
        Ok(())
    });
    drop(node);
    if let Err(e) = result {
        panic!("{e}");
    }
}
