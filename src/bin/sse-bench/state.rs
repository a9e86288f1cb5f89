//! The state every task of a run shares: the target, the counters, the
//! per-stream and per-message records the accounting reads at the end.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// One stream from its `connection_established` to its end.
pub(crate) struct Instance {
    pub(crate) user: u32,
    /// The topics it follows (its slot's).
    pub(crate) topics: Arc<[String]>,
    pub(crate) est_ns: u64,
    /// u64::MAX: still live when the run stopped it.
    pub(crate) end_ns: u64,
    /// (seq, latency µs) of every bench message received, duplicates included.
    pub(crate) recv: Vec<(u32, u32)>,
}

/// Where a message goes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Dest {
    User(u32),
    All,
    Topic(Arc<str>),
}

impl Dest {
    /// Whether a stream of `user` following `topics` is one it goes to.
    pub(crate) fn reaches(&self, user: u32, topics: &[String]) -> bool {
        match self {
            Dest::User(u) => *u == user,
            Dest::All => true,
            Dest::Topic(t) => topics.iter().any(|x| **x == **t),
        }
    }
}

pub(crate) struct Msg {
    pub(crate) seq: u64,
    pub(crate) to: Dest,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    pub(crate) ok: bool,
    /// `connections` of the send response (routed by the registry).
    pub(crate) routed: u64,
    /// Live streams of the target seen by this client when the send started.
    pub(crate) live_at_send: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) attempts: AtomicU64,
    pub(crate) established: AtomicU64,
    pub(crate) initial_settled: AtomicU64,
    pub(crate) initial_failed: AtomicU64,
    pub(crate) fail_connect: AtomicU64,
    pub(crate) fail_status: AtomicU64,
    pub(crate) fail_timeout: AtomicU64,
    pub(crate) fail_other: AtomicU64,
    pub(crate) retried_503: AtomicU64,
    pub(crate) live: AtomicU64,
    pub(crate) connecting: AtomicU64,
    pub(crate) last_est_ns: AtomicU64,
    pub(crate) reconnects_done: AtomicU64,
    /// Streams ended by the server or the network while live.
    pub(crate) ended: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) other_events: AtomicU64,
    pub(crate) bad_data: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) last_recv_ns: AtomicU64,
    pub(crate) send_ok: AtomicU64,
    pub(crate) send_err: AtomicU64,
    pub(crate) expected_est: AtomicU64,
    /// Attempt to connection_established, µs: first streams, reopened ones.
    pub(crate) connect_us: Mutex<Vec<u64>>,
    pub(crate) reconnect_us: Mutex<Vec<u64>>,
    pub(crate) errors: Mutex<Vec<String>>,
}

impl Stats {
    pub(crate) fn failed(&self) -> u64 {
        self.fail_connect.load(Relaxed)
            + self.fail_status.load(Relaxed)
            + self.fail_timeout.load(Relaxed)
            + self.fail_other.load(Relaxed)
    }

    /// Keeps the first few distinct error messages.
    pub(crate) fn note(&self, e: String) {
        let mut g = self.errors.lock().unwrap();
        if g.len() < 8 && !g.contains(&e) {
            g.push(e);
        }
    }
}

/// An error with its sources: "a: b: c".
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) user_header: String,
    pub(crate) topics_header: String,
}

pub(crate) struct Slot {
    pub(crate) live: AtomicBool,
    pub(crate) reconnect: Notify,
    /// The topics its streams follow (--topics for this stream).
    pub(crate) topics: Arc<[String]>,
}

pub(crate) struct Ctx {
    pub(crate) target: Target,
    pub(crate) users: usize,
    pub(crate) user_prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) connect_sem: Arc<Semaphore>,
    pub(crate) src_ips: u8,
    /// churn: failed or ended streams are reopened.
    pub(crate) reopen: bool,
    pub(crate) stop: CancellationToken,
    pub(crate) stats: Stats,
    pub(crate) slots: Vec<Slot>,
    pub(crate) user_live: Vec<AtomicU32>,
    pub(crate) instances: Mutex<Vec<Instance>>,
    pub(crate) msgs: Mutex<Vec<Msg>>,
    pub(crate) next_seq: AtomicU64,
    pub(crate) http: reqwest::Client,
    pub(crate) api: String,
    pub(crate) admin: String,
    pub(crate) api_token: Option<String>,
    pub(crate) server_pid: Option<u32>,
}

impl Ctx {
    pub(crate) fn uname(&self, u: u32) -> String {
        format!("{}{}", self.user_prefix, u)
    }

    fn admin_get(&self, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.get(url);
        match &self.api_token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// `total_connections` of `GET {base}/connections/` (every node).
    pub(crate) async fn registry_total(&self) -> Option<u64> {
        let resp = self
            .admin_get(&format!("{}/connections/", self.api))
            .send()
            .await
            .ok()?;
        let v: Value = resp.json().await.ok()?;
        v["data"]["total_connections"].as_u64()
    }

    /// `sse_notify_live_connections` of the node behind --admin-url.
    pub(crate) async fn server_live(&self) -> Option<u64> {
        let resp = self
            .admin_get(&format!("{}/metrics", self.admin))
            .send()
            .await
            .ok()?;
        let text = resp.text().await.ok()?;
        text.lines()
            .find(|l| l.starts_with("sse_notify_live_connections "))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_keep_the_first_eight_distinct_errors() {
        let s = Stats::default();
        for i in 0..20 {
            s.note(format!("e{}", i % 10));
            s.note("e0".into());
        }
        let kept = s.errors.lock().unwrap().clone();
        let want: Vec<String> = (0..8).map(|i| format!("e{i}")).collect();
        assert_eq!(kept, want);
    }

    #[test]
    fn an_error_chain_names_every_source() {
        let inner = std::io::Error::other("refused");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(chain(&outer), "wrapped: refused");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
