//! Bounds in time and count against clients that do not play along: a
//! stream whose client stops reading, and every close, end the socket
//! within `stream.write_timeout_secs`; an admin request must arrive whole
//! within `api.request_timeout_secs`; at most `api.max_connections` admin
//! connections are served at once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sse_notify::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WRITE_TIMEOUT_SECS: u64 = 2;
/// Room for a loaded machine on top of the bound under test.
const SLACK: Duration = Duration::from_secs(10);

fn write_timeout(env: &Env, secs: u64) -> Config {
    let mut c = env.config();
    c.stream.write_timeout_secs = secs;
    c
}

/// Sends `user` 100 messages of 60 KB: about 6 MB, more than the kernel
/// buffers a connection to a client that does not read (4 MiB at most
/// here), fewer frames than `stream.queue_size` (so no slow-consumer drop).
async fn fill(admin: &str, user: &str) {
    let pad = "x".repeat(60 * 1024);
    for i in 0..100 {
        send_ok(admin, json!({"to": user, "data": {"i": i, "pad": pad}})).await;
    }
}

/// Waits until the server's end of the connection from `client` is no
/// longer ESTABLISHED (closed, reset, or closing); panics saying `what`.
async fn server_closes(public: SocketAddr, client: SocketAddr, within: Duration, what: &str) {
    let mut last = None;
    let closed = eventually(within, || {
        last = tcp_state(public, client);
        let state = last;
        async move { state != Some("ESTABLISHED") }
    })
    .await;
    assert!(
        closed,
        "{what}: the server's socket to {client} is still {last:?} after {within:?}"
    );
}

on_every_engine! {
    async fn a_logout_ends_a_tab_that_does_not_read_within_the_write_timeout(env: Env) {
        // Longer than the stalled test's: the DELETE must reach the stream
        // before its stalled write runs out on its own.
        let limit = 2 * WRITE_TIMEOUT_SECS;
        let node = TestNode::start(write_timeout(&env, limit)).await;
        let admin_base = node.admin_base();
        let (mut tab, _id) = non_reading_stream(node.public, "alice").await;
        let client = tab.local_addr().unwrap();
        fill(&admin_base, "alice").await;

        // The DELETE finds it open (its queue took every frame; the
        // socket's buffers hold what was written).
        let (status, body) = admin(
            reqwest::Method::DELETE,
            &format!("{admin_base}/notifications/connections/alice/"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["connection_count"], 1, "{body}");
        let closed = Instant::now();
        server_closes(
            node.public,
            client,
            Duration::from_secs(limit) + SLACK,
            "DELETE of a user whose tab does not read",
        )
        .await;
        eprintln!("socket closed {:?} after the DELETE", closed.elapsed());
        // The client sees the end too: what its own buffer held, then a
        // reset or EOF, without the server writing the rest.
        assert!(
            tcp_ends_within(&mut tab, SLACK).await,
            "the closed tab's socket did not end on the client's side"
        );
        assert!(
            metric(&admin_base, "sse_notify_write_timeouts_total").await >= 1.0,
            "a close cut by the write deadline is counted"
        );
        assert_eq!(node.daemon.live_streams(), 0);
    }

    async fn a_stream_whose_writes_make_no_progress_is_closed_and_counted(env: Env) {
        let node = TestNode::start(write_timeout(&env, WRITE_TIMEOUT_SECS)).await;
        let admin_base = node.admin_base();
        let (mut bob, bob_id) = SseClient::connect(&node, "bob").await;
        let (mut tab, id) = non_reading_stream(node.public, "alice").await;
        let client = tab.local_addr().unwrap();
        fill(&admin_base, "alice").await;

        server_closes(
            node.public,
            client,
            Duration::from_secs(WRITE_TIMEOUT_SECS) + SLACK,
            "a stream whose client reads nothing",
        )
        .await;
        assert!(
            tcp_ends_within(&mut tab, SLACK).await,
            "the stalled tab's socket did not end on the client's side"
        );
        // Gone from the registry, counted as a write timeout, not as a
        // slow consumer (its queue never filled).
        listed_ids_become(&admin_base, &[&bob_id]).await;
        let text = metrics_text(&admin_base).await;
        assert_eq!(
            metric_value(&text, "sse_notify_write_timeouts_total"),
            Some(1.0),
            "{id}: one write timeout in:\n{text}"
        );
        assert_eq!(
            metric_value(&text, "sse_notify_slow_consumer_drops_total"),
            Some(0.0),
            "{text}"
        );
        // A reading tab on the same node is untouched.
        send_ok(&admin_base, json!({"to": "bob", "data": "still here"})).await;
        let got = bob
            .next_named("message", Duration::from_secs(5))
            .await
            .expect("bob's reading tab still gets messages");
        assert_eq!(got.data, "\"still here\"");
    }

    async fn an_admin_body_sent_byte_by_byte_gets_408_and_sends_nothing(env: Env) {
        let mut c = env.config();
        c.api.request_timeout_secs = 2;
        let node = TestNode::start(c).await;
        let admin_base = node.admin_base();
        let (mut alice, _) = SseClient::connect(&node, "alice").await;

        let body = json!({"to": "alice", "data": "slow"}).to_string();
        let head = format!(
            "POST /notifications/send/ HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            node.admin,
            body.len()
        );
        let started = Instant::now();
        let answer = trickle(node.admin, head.as_bytes(), body.as_bytes(), 2 + 8).await;
        let took = started.elapsed();
        expect_raw_envelope(&answer, 408, "a body sent a byte at a time");
        assert!(
            took < Duration::from_secs(2) + SLACK,
            "the 408 came after {took:?}"
        );

        // The head alone, a byte at a time, is held to the same bound.
        let answer = trickle(node.admin, b"", head.as_bytes(), 2 + 8).await;
        expect_raw_envelope(&answer, 408, "a head sent a byte at a time");

        // Nothing was sent: the next message alice sees is the marker.
        send_ok(&admin_base, json!({"to": "alice", "data": "marker"})).await;
        let before = alice.events_before("marker", Duration::from_secs(5)).await;
        assert!(
            before.iter().all(|e| e.event != "message"),
            "a timed-out request was delivered: {before:?}"
        );
        assert_eq!(
            metric(&admin_base, "sse_notify_messages_sent_total").await,
            1.0,
            "only the marker was sent"
        );
    }
}

/// Writes `head` at once, then `slow` one byte every 700 ms on a raw admin
/// connection, while reading the answer; returns what the server wrote
/// before closing, or panics when it neither answers nor closes within
/// `within_secs`.
async fn trickle(admin: SocketAddr, head: &[u8], slow: &[u8], within_secs: u64) -> String {
    let socket = TcpStream::connect(admin).await.unwrap();
    let (mut rd, mut wr) = socket.into_split();
    wr.write_all(head).await.unwrap();
    let slow = slow.to_vec();
    let writer = tokio::spawn(async move {
        for b in slow {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        // Keeps the connection open: the server must end it.
        std::future::pending::<()>().await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(within_secs), async {
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        read.is_ok(),
        "the server neither answered nor closed within {within_secs}s; it wrote {text:?}"
    );
    text
}

/// Checks a raw HTTP/1.1 answer: that status, and the error envelope as
/// its JSON body.
fn expect_raw_envelope(answer: &str, status: u16, what: &str) -> Value {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no complete answer: {answer:?}"));
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {head:?}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{what}: {head:?}"
    );
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
    assert_eq!(v["code"], json!(status), "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_beyond_the_cap_get_503_and_the_node_survives() {
    const CAP: usize = 8;
    let mut c = Env::memory().config();
    c.api.max_connections = CAP;
    let node = TestNode::start(c).await;
    let admin_base = node.admin_base();

    // The cap's worth of idle connections, then four more.
    let mut idle = Vec::new();
    for _ in 0..CAP + 4 {
        idle.push(TcpStream::connect(node.admin).await.unwrap());
    }
    // Those beyond the cap are answered 503 and closed.
    let mut extra = idle.split_off(CAP);
    for s in &mut extra {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(SLACK, s.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "a connection beyond the cap was left open");
        expect_raw_envelope(
            &String::from_utf8_lossy(&answer),
            503,
            "an idle connection beyond api.max_connections",
        );
    }
    // A request beyond the cap gets a 503 envelope naming the key, with
    // Retry-After.
    let client = reqwest::Client::builder().timeout(SLACK).build().unwrap();
    let resp = client
        .get(format!("{admin_base}/healthz"))
        .send()
        .await
        .expect("an answer, not a hang");
    assert!(resp.headers().contains_key("retry-after"), "{resp:?}");
    let body = expect_envelope(resp, 503, "a request beyond api.max_connections").await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("api.max_connections")),
        "{body}"
    );

    // Once the idle connections go, the node answers again.
    drop(idle);
    wait_until(
        SLACK,
        "the admin listener answering after the idle connections left",
        || {
            let url = format!("{admin_base}/healthz");
            async move {
                reqwest::Client::new()
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        },
    )
    .await;
    assert!(
        metric(&admin_base, "sse_notify_admin_refused_connections_total").await >= 5.0,
        "refusals are counted"
    );
}
