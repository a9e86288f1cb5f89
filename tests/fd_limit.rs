//! At the open-file limit (issue #7: "beyond the cap the daemon answers 503,
//! never spins on EMFILE"): streams beyond what the limit allows get a 503
//! envelope, a crowd of refused clients does not starve the admin API of
//! descriptors, and a stream that leaves makes room for a new one.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The daemon keeps 256 descriptors for everything but streams.
const NOFILE: u32 = 512;
const STREAMS: usize = 256;

/// What a raw stream request got: an open stream (its socket) or the
/// status line and body of a complete answer.
enum Opened {
    Stream(#[allow(dead_code)] TcpStream),
    Refused(String),
}

async fn open(addr: SocketAddr, user: &str) -> Result<Opened, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = format!(
        "GET /notifications/stream/ HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nX-Remote-User: {user}\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(Opened::Refused(String::from_utf8_lossy(&got).into_owned()));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if text.starts_with("HTTP/1.1 200") && text.contains("connection_established") {
            return Ok(Opened::Stream(s));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_open_file_limit_streams_get_503_and_the_api_keeps_answering() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn_with_nofile(&redis.url(), "", NOFILE).await;
    assert!(
        node.log()
            .contains(&format!("open_file_limit_allows={STREAMS}")),
        "the cap is logged at start; log:\n{}",
        node.log()
    );

    let mut streams = Vec::new();
    for i in 0..STREAMS {
        match open(node.public, &format!("u{i}")).await {
            Ok(Opened::Stream(s)) => streams.push(s),
            Ok(Opened::Refused(r)) => panic!("stream {i} refused below the cap: {r}"),
            Err(e) => panic!("stream {i}: {e}"),
        }
    }

    // A crowd of clients beyond the cap, all at once, while the app keeps
    // sending through the admin API.
    let crowd: Vec<_> = (0..400)
        .map(|i| {
            let addr = node.public;
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(20), open(addr, &format!("x{i}"))).await
            })
        })
        .collect();
    let admin = node.admin_url("");
    let sends = tokio::spawn(async move {
        let mut codes = Vec::new();
        for i in 0..40 {
            let (status, _) = send(&admin, json!({"to": "u0", "data": i})).await;
            codes.push(status);
        }
        codes
    });
    let mut refused = 0;
    for (i, c) in crowd.into_iter().enumerate() {
        match c.await.unwrap() {
            Ok(Ok(Opened::Refused(r))) => {
                assert!(r.starts_with("HTTP/1.1 503"), "client {i}: {r}");
                assert!(r.to_ascii_lowercase().contains("retry-after:"), "{r}");
                assert!(r.contains(r#""code":503"#), "{r}");
                refused += 1;
            }
            Ok(Ok(Opened::Stream(_))) => panic!("client {i} got a stream beyond the cap"),
            Ok(Err(e)) => panic!("client {i}: {e} (a 503 was expected)"),
            Err(_) => panic!("client {i} got no answer within 20 s"),
        }
    }
    assert_eq!(refused, 400);
    let codes = sends.await.unwrap();
    assert!(
        codes.iter().all(|&c| c == 200),
        "sends during the crowd: {codes:?}"
    );

    // A stream that leaves makes room for a new one.
    streams.truncate(STREAMS - 1);
    let reopened = eventually(Duration::from_secs(5), || async {
        matches!(open(node.public, "late").await, Ok(Opened::Stream(_)))
    })
    .await;
    assert!(reopened, "no room after a stream closed");

    let log = node.log();
    assert!(
        !log.contains("Too many open files"),
        "descriptors ran out; log:\n{log}"
    );
}
