//! SSE clients: one parsed by a real parser (`eventsource-stream`), one
//! that keeps every byte (comments, `retry:`, frame boundaries).

use std::pin::Pin;
use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::Node;

/// A client without a total timeout (streams stay open), one per request
/// so that dropping a response closes its TCP connection.
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// One SSE stream, parsed by `eventsource-stream`.
pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    events: Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>,
}

impl SseClient {
    /// Opens a stream with the given extra headers; panics on transport errors.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut req = stream_client().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("stream request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let events = resp
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        SseClient {
            status,
            headers,
            events: Box::pin(events),
        }
    }

    /// Opens a stream as `user` (header auth from loopback) and returns it
    /// with its connection id, after `connection_established`.
    pub async fn connect(node: &impl Node, user: &str) -> (SseClient, String) {
        Self::connect_url(&node.stream_url(), user).await
    }

    pub async fn connect_url(url: &str, user: &str) -> (SseClient, String) {
        let mut c = SseClient::open(url, &[("X-Remote-User", user)]).await;
        assert_eq!(c.status, 200, "stream for {user}");
        let ev = c
            .next_event(Duration::from_secs(5))
            .await
            .expect("first event");
        assert_eq!(ev.event, "connection_established");
        let data: Value = serde_json::from_str(&ev.data).expect("connection_established JSON");
        let id = data["connection_id"]
            .as_str()
            .expect("connection_id")
            .to_string();
        (c, id)
    }

    /// The next event, or None on timeout or end of stream.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        match tokio::time::timeout(within, self.events.next()).await {
            Ok(Some(Ok(ev))) => Some(ev),
            _ => None,
        }
    }

    /// The next event named `name` (others are skipped), or None.
    pub async fn next_named(&mut self, name: &str, within: Duration) -> Option<Event> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_event(left).await?;
            if ev.event == name {
                return Some(ev);
            }
        }
    }

    /// Every event before the one whose data is `marker` (a message sent
    /// after them to this stream: sends to one stream arrive in order, so
    /// no fixed wait is needed to know that nothing else came). Panics
    /// when the marker does not arrive within `within`.
    pub async fn events_before(&mut self, marker: &str, within: Duration) -> Vec<Event> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_event(left).await.unwrap_or_else(|| {
                panic!("the marker {marker} never arrived; before it came {out:?}")
            });
            if ev.data.contains(marker) {
                return out;
            }
            out.push(ev);
        }
    }

    /// True when the server ends the stream within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.next()).await {
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A raw SSE stream: every byte the server sends, comments included.
pub struct RawStream {
    bytes: Vec<u8>,
    /// How much of `bytes` the test has read (see [`RawStream::wait_for`]).
    seen: usize,
    pub ended: bool,
    body: Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>> + Send>>,
}

impl RawStream {
    /// Opens a stream as `user` (header auth); panics unless it is a 200.
    pub async fn open(url: &str, user: &str) -> RawStream {
        let resp = stream_client()
            .get(url)
            .header("X-Remote-User", user)
            .send()
            .await
            .expect("stream request");
        assert_eq!(resp.status().as_u16(), 200, "stream for {user}");
        RawStream::of(resp)
    }

    /// The body of a response already received.
    pub fn of(resp: reqwest::Response) -> RawStream {
        let body = resp
            .bytes_stream()
            .map(|r| r.map(|b| b.to_vec()).map_err(|e| e.to_string()));
        RawStream {
            bytes: Vec::new(),
            seen: 0,
            ended: false,
            body: Box::pin(body),
        }
    }

    /// Everything received so far (lossy UTF-8: whole, not chunk by chunk).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Reads one more chunk; false on end, error or when `deadline` passes.
    async fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if self.ended || left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, self.body.next()).await {
            Ok(Some(Ok(bytes))) => {
                self.bytes.extend_from_slice(&bytes);
                true
            }
            Ok(Some(Err(_))) | Ok(None) => {
                self.ended = true;
                false
            }
            Err(_) => false,
        }
    }

    fn find_unread(&self, needle: &str) -> Option<usize> {
        let n = needle.as_bytes();
        self.bytes[self.seen..]
            .windows(n.len())
            .position(|w| w == n)
    }

    /// Reads until the unread bytes contain `needle` (then marks everything
    /// up to and including it as read), or `within` passes.
    pub async fn wait_for(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(pos) = self.find_unread(needle) {
                self.seen += pos + needle.len();
                return true;
            }
            if !self.fill(deadline).await {
                return false;
            }
        }
    }

    /// The next complete unread frame (without its blank line), or None.
    pub async fn next_frame(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(pos) = self.find_unread("\n\n") {
                let frame = String::from_utf8(self.bytes[self.seen..self.seen + pos].to_vec())
                    .expect("UTF-8 frame");
                self.seen += pos + 2;
                return Some(frame);
            }
            if !self.fill(deadline).await {
                return None;
            }
        }
    }

    /// Whether the bytes received so far (read or not) contain `needle`,
    /// reading more until they do or `within` passes; marks nothing read.
    pub async fn received(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.text().contains(needle) {
            if !self.fill(deadline).await {
                return false;
            }
        }
        true
    }

    /// Marks everything received so far as read; returns it.
    pub fn mark_read(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.bytes[self.seen..]).into_owned();
        self.seen = self.bytes.len();
        out
    }

    /// Waits for `n` more heartbeat comments than were read; panics saying
    /// how many came. Returns what arrived meanwhile (marked read).
    pub async fn wait_for_heartbeats(&mut self, n: usize, within: Duration) -> String {
        let start = self.seen;
        for got in 0..n {
            assert!(
                self.wait_for(": heartbeat", within).await,
                "{n} heartbeat comments never arrived within {within:?} (got {got}; stream ended: {}): {:?}",
                self.ended,
                String::from_utf8_lossy(&self.bytes[start..])
            );
        }
        String::from_utf8_lossy(&self.bytes[start..self.seen]).into_owned()
    }

    /// The connection id of `connection_established`.
    pub async fn established(&mut self) -> String {
        assert!(
            self.wait_for(
                "event: connection_established\ndata: ",
                Duration::from_secs(5)
            )
            .await,
            "no connection_established in {:?}",
            self.text()
        );
        let start = self.seen;
        assert!(self.wait_for("\n", Duration::from_secs(5)).await);
        let line = String::from_utf8_lossy(&self.bytes[start..self.seen - 1]).into_owned();
        let data: Value = serde_json::from_str(&line).expect("connection_established JSON");
        data["connection_id"]
            .as_str()
            .expect("connection_id")
            .to_string()
    }

    /// The value of the first `retry:` field.
    pub fn retry_ms(&self) -> Option<u64> {
        let text = self.text();
        let line = text.lines().find(|l| l.starts_with("retry:"))?;
        line["retry:".len()..].trim().parse().ok()
    }
}
