//! `sse-bench`: load test for an sse-notify deployment.
//!
//! Modes: `hold` (open N streams, hold them), `unicast` (send M messages to
//! random users), `broadcast` (K broadcasts), `churn` (a share of the streams
//! closed and reopened every second while messages flow). Streams are opened
//! on the public listener as `u{i % users}` (header auth); messages go through
//! the admin API (`POST {base}/send/`) with the payload
//! `{"seq":n,"ts_ns":t}`, `t` being nanoseconds on a monotonic clock shared by
//! every task of this process, so each delivery gives an end-to-end latency
//! and a (stream, seq) pair for loss and duplicate accounting.
//!
//! Output: progress and a summary on stderr, exactly one JSON line on stdout.
//! Every run is bounded: `--duration`, `--drain` and a `--max-runtime`
//! watchdog that ends the process (exit 3).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

// ------------------------------------------------------------------ CLI

#[derive(Parser)]
#[command(
    name = "sse-bench",
    version,
    about = "Load test an sse-notify deployment: hold, unicast, broadcast, churn",
    after_help = "Prints progress and a summary on stderr and one JSON line on stdout.\n\
                  Streams connect as u0..u{users-1} (connection i is user i % users) through\n\
                  the --user-header; messages are posted to the admin API.\n\
                  broadcast reaches EVERY stream of the deployment: run it on a test deployment."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open --conns streams and hold them --duration seconds (default 10):
    /// connect rate, failures, drops, server memory per stream.
    Hold {
        #[command(flatten)]
        c: Common,
    },
    /// With the streams open, send --messages to random users:
    /// delivered msg/s, delivery ratio, duplicates, end-to-end latency.
    Unicast {
        #[command(flatten)]
        c: Common,
        /// Messages to send
        #[arg(long, default_value_t = 10_000)]
        messages: u64,
        /// Concurrent send requests
        #[arg(long, default_value_t = 16)]
        publishers: usize,
        /// Target send rate in msg/s (0 = as fast as --publishers allow)
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// With the streams open, send --broadcasts broadcasts --interval-ms apart:
    /// fan-out rate, completion latency (until every stream has it).
    Broadcast {
        #[command(flatten)]
        c: Common,
        /// Broadcasts to send
        #[arg(long, default_value_t = 20)]
        broadcasts: u64,
        /// Interval between broadcasts, ms
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// For --duration seconds (default 60), close and reopen --reconnect-pct
    /// percent of the live streams every second while sending --send-rate
    /// msg/s to random users: reconnects, errors, delivery to the streams
    /// that were live across each message, registry vs. live streams.
    Churn {
        #[command(flatten)]
        c: Common,
        /// Percent of the live streams closed and reopened every second
        #[arg(long, default_value_t = 10.0)]
        reconnect_pct: f64,
        /// Messages per second to random users
        #[arg(long, default_value_t = 100.0)]
        send_rate: f64,
        /// Concurrent send requests
        #[arg(long, default_value_t = 16)]
        publishers: usize,
        /// A stream closed less than this after a send returned is not
        /// expected to have received it
        #[arg(long, default_value_t = 1000)]
        grace_ms: u64,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// The stream URL (public listener, or the proxy in front of it); `{user}`
    /// is replaced by the user name (e.g. `?user={user}` for auth.mode = "none")
    #[arg(long, default_value = "http://127.0.0.1:8090/notifications/stream/")]
    stream_url: String,
    /// The admin listener (REST API, /metrics)
    #[arg(long, default_value = "http://127.0.0.1:8091")]
    admin_url: String,
    /// server.base_path of the API routes
    #[arg(long, default_value = "/notifications")]
    base_path: String,
    /// Header carrying the user name (auth.header); "" sends none
    #[arg(long, default_value = "X-Remote-User")]
    user_header: String,
    /// User names are this prefix + index (pick one no real user has)
    #[arg(long, default_value = "u")]
    user_prefix: String,
    /// api.token of the deployment (Authorization: Bearer on admin requests)
    #[arg(long, env = "SSE_BENCH_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Streams to open
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Distinct users (stream i is user i % users); default: --conns
    #[arg(long)]
    users: Option<usize>,
    /// hold: how long to hold; churn: how long to churn; unicast/broadcast:
    /// cap on the sending phase (default 10, 60, 120 s)
    #[arg(long)]
    duration: Option<f64>,
    /// Stream connects in flight at once
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds a stream may take to get its connection_established event
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds to wait after connecting, before measuring
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Seconds to wait for outstanding deliveries after the last send
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Spread the client sockets over K source addresses 127.0.0.2.. (loopback
    /// IPv4 targets only; auth.trusted_proxies must include them); 0 = none
    #[arg(long, default_value_t = 0)]
    src_ips: u8,
    /// PID of the sse-notify process (same host) to sample VmRSS and CPU from
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds between RSS / registry samples
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,
    /// Tokio worker threads of the bench (raise it on a machine of its own)
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed of the random choices (users, streams to reconnect)
    #[arg(long)]
    seed: Option<u64>,
    /// Hard cap on the whole run in seconds: past it the process exits 3
    #[arg(long, default_value_t = 900.0)]
    max_runtime: f64,
}

// ------------------------------------------------------------------ clock, helpers

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the start of the process, monotonic, one clock for all tasks.
fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary of microsecond samples, in ms.
fn lat_json(samples: &mut [u64]) -> Value {
    samples.sort_unstable();
    let ms = |us: u64| r3(us as f64 / 1000.0);
    json!({
        "count": samples.len(),
        "p50_ms": ms(pct(samples, 50.0)),
        "p90_ms": ms(pct(samples, 90.0)),
        "p99_ms": ms(pct(samples, 99.0)),
        "max_ms": ms(samples.last().copied().unwrap_or(0)),
    })
}

/// An error with its sources: "a: b: c".
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn vmrss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, seconds.
fn cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

/// Raises the soft RLIMIT_NOFILE to the hard one; returns the soft limit.
fn raise_nofile() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        rl.rlim_cur
    }
}

// ------------------------------------------------------------------ SSE parser

enum Item {
    Event { name: String, data: String },
    Comment,
}

/// Minimal text/event-stream parser: lines end with LF (a CR before it is
/// dropped), a blank line dispatches, `event:` / `data:` are kept, `id:` and
/// `retry:` ignored, `:` lines are comments.
#[derive(Default)]
struct Sse {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl Sse {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<Item>) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(p) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + p;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            self.line(&line, out);
            start = end + 1;
        }
        self.buf.drain(..start);
    }

    fn line(&mut self, line: &str, out: &mut Vec<Item>) {
        if line.is_empty() {
            if self.has_data {
                let name = if self.event.is_empty() {
                    "message".to_string()
                } else {
                    std::mem::take(&mut self.event)
                };
                out.push(Item::Event {
                    name,
                    data: std::mem::take(&mut self.data),
                });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            out.push(Item::Comment);
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[derive(serde::Deserialize)]
struct Mark {
    seq: u64,
    ts_ns: u64,
}

// ------------------------------------------------------------------ shared state

/// One stream from its `connection_established` to its end.
struct Instance {
    user: u32,
    est_ns: u64,
    /// u64::MAX: still live when the run stopped it.
    end_ns: u64,
    /// (seq, latency µs) of every bench message received, duplicates included.
    recv: Vec<(u32, u32)>,
}

struct Msg {
    seq: u64,
    /// None: broadcast.
    to: Option<u32>,
    start_ns: u64,
    end_ns: u64,
    ok: bool,
    /// `connections` of the send response (routed by the registry).
    routed: u64,
    /// Live streams of the target seen by this client when the send started.
    live_at_send: u64,
}

#[derive(Default)]
struct Stats {
    attempts: AtomicU64,
    established: AtomicU64,
    initial_settled: AtomicU64,
    initial_failed: AtomicU64,
    fail_connect: AtomicU64,
    fail_status: AtomicU64,
    fail_timeout: AtomicU64,
    fail_other: AtomicU64,
    retried_503: AtomicU64,
    live: AtomicU64,
    connecting: AtomicU64,
    last_est_ns: AtomicU64,
    reconnects_done: AtomicU64,
    /// Streams ended by the server or the network while live.
    ended: AtomicU64,
    evicted: AtomicU64,
    heartbeats: AtomicU64,
    other_events: AtomicU64,
    bad_data: AtomicU64,
    received: AtomicU64,
    last_recv_ns: AtomicU64,
    send_ok: AtomicU64,
    send_err: AtomicU64,
    expected_est: AtomicU64,
    /// Attempt to connection_established, µs: first streams, reopened ones.
    connect_us: Mutex<Vec<u64>>,
    reconnect_us: Mutex<Vec<u64>>,
    errors: Mutex<Vec<String>>,
}

impl Stats {
    fn failed(&self) -> u64 {
        self.fail_connect.load(Relaxed)
            + self.fail_status.load(Relaxed)
            + self.fail_timeout.load(Relaxed)
            + self.fail_other.load(Relaxed)
    }

    /// Keeps the first few distinct error messages.
    fn note(&self, e: String) {
        let mut g = self.errors.lock().unwrap();
        if g.len() < 8 && !g.contains(&e) {
            g.push(e);
        }
    }
}

struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
    user_header: String,
}

struct Slot {
    live: AtomicBool,
    reconnect: Notify,
}

struct Ctx {
    target: Target,
    users: usize,
    user_prefix: String,
    connect_timeout: Duration,
    connect_sem: Arc<Semaphore>,
    src_ips: u8,
    /// churn: failed or ended streams are reopened.
    reopen: bool,
    stop: CancellationToken,
    stats: Stats,
    slots: Vec<Slot>,
    user_live: Vec<AtomicU32>,
    instances: Mutex<Vec<Instance>>,
    msgs: Mutex<Vec<Msg>>,
    next_seq: AtomicU64,
    http: reqwest::Client,
    api: String,
    admin: String,
    api_token: Option<String>,
    server_pid: Option<u32>,
}

impl Ctx {
    fn uname(&self, u: u32) -> String {
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
    async fn registry_total(&self) -> Option<u64> {
        let resp = self
            .admin_get(&format!("{}/connections/", self.api))
            .send()
            .await
            .ok()?;
        let v: Value = resp.json().await.ok()?;
        v["data"]["total_connections"].as_u64()
    }

    /// `sse_notify_live_connections` of the node behind --admin-url.
    async fn server_live(&self) -> Option<u64> {
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

// ------------------------------------------------------------------ streams

type Conn = http1::Connection<TokioIo<TcpStream>, Empty<Bytes>>;

struct Opened {
    _sender: http1::SendRequest<Empty<Bytes>>,
    conn: Pin<Box<Conn>>,
    resp: hyper::Response<hyper::body::Incoming>,
}

enum Fail {
    Connect,
    Status,
    Timeout,
    Other,
}

enum Attempt {
    Open(Opened),
    /// 503 with Retry-After (connect rate cap): try again after it.
    Retry(Duration),
}

async fn open(ctx: &Ctx, idx: usize, uname: &str) -> Result<Attempt, (Fail, String)> {
    let addr = ctx.target.addr;
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| (Fail::Connect, format!("socket: {e}")))?;
    if let IpAddr::V4(ip) = addr.ip() {
        if ctx.src_ips > 0 && ip.is_loopback() {
            use std::os::fd::AsRawFd;
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on a socket we own with a valid int option.
            // The kernel picks the port at connect(), per 4-tuple.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let src = Ipv4Addr::new(127, 0, 0, 2 + (idx % ctx.src_ips as usize) as u8);
            sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
                .map_err(|e| (Fail::Connect, format!("bind {src}: {e}")))?;
        }
    }
    let stream = sock
        .connect(addr)
        .await
        .map_err(|e| (Fail::Connect, format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| (Fail::Other, format!("handshake: {e}")))?;
    let mut conn = Box::pin(conn);
    let mut req = hyper::Request::get(ctx.target.path.replace("{user}", uname))
        .header("host", &ctx.target.host)
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache");
    if !ctx.target.user_header.is_empty() {
        req = req.header(ctx.target.user_header.as_str(), uname);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| (Fail::Other, format!("request: {e}")))?;
    let resp = tokio::select! {
        r = sender.send_request(req) => r.map_err(|e| (Fail::Other, format!("request: {e}")))?,
        r = &mut conn => return Err((Fail::Other, format!("connection closed before the response: {r:?}"))),
    };
    match resp.status().as_u16() {
        200 => Ok(Attempt::Open(Opened {
            _sender: sender,
            conn,
            resp,
        })),
        503 if resp.headers().contains_key("retry-after") => {
            let secs = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(1.0);
            Ok(Attempt::Retry(Duration::from_secs_f64(
                secs.clamp(0.05, 30.0),
            )))
        }
        s => {
            // the body is a JSON envelope naming the reason
            let body = tokio::time::timeout(Duration::from_secs(1), async {
                tokio::select! {
                    b = resp.into_body().collect() => b.ok().map(|b| b.to_bytes()),
                    _ = &mut conn => None,
                }
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            Err((Fail::Status, format!("status {s}: {body}")))
        }
    }
}

enum Outcome {
    /// Never got connection_established.
    Failed,
    /// Closed by the churn controller.
    Churned,
    /// Ended by the server or the network.
    Ended,
    /// The run is over.
    Stopped,
}

fn fail(ctx: &Ctx, first: bool, kind: Fail, msg: String) -> Outcome {
    let s = &ctx.stats;
    match kind {
        Fail::Connect => &s.fail_connect,
        Fail::Status => &s.fail_status,
        Fail::Timeout => &s.fail_timeout,
        Fail::Other => &s.fail_other,
    }
    .fetch_add(1, Relaxed);
    s.note(msg);
    if first {
        s.initial_failed.fetch_add(1, Relaxed);
        s.initial_settled.fetch_add(1, Relaxed);
    }
    Outcome::Failed
}

/// One stream: connect, wait for connection_established, read until the
/// run stops it, the churn closes it, or the server ends it.
async fn instance(ctx: &Ctx, idx: usize, first: bool, reconnect: bool) -> Outcome {
    let user = (idx % ctx.users) as u32;
    let uname = ctx.uname(user);
    let slot = &ctx.slots[idx];
    let permit = tokio::select! {
        p = ctx.connect_sem.clone().acquire_owned() => p.expect("semaphore"),
        _ = ctx.stop.cancelled() => return Outcome::Stopped,
    };
    let s = &ctx.stats;
    s.attempts.fetch_add(1, Relaxed);
    let attempt_ns = now_ns();
    s.connecting.fetch_add(1, Relaxed);
    let connecting = scopeguard(&s.connecting);
    let deadline = tokio::time::Instant::now() + ctx.connect_timeout;
    let opened = loop {
        let r = tokio::select! {
            r = tokio::time::timeout_at(deadline, open(ctx, idx, &uname)) => r,
            _ = ctx.stop.cancelled() => return Outcome::Stopped,
        };
        match r {
            Err(_) => {
                return fail(
                    ctx,
                    first,
                    Fail::Timeout,
                    "timeout opening the stream".into(),
                )
            }
            Ok(Err((kind, msg))) => return fail(ctx, first, kind, msg),
            Ok(Ok(Attempt::Open(o))) => break o,
            Ok(Ok(Attempt::Retry(after))) => {
                s.retried_503.fetch_add(1, Relaxed);
                let at = tokio::time::Instant::now() + after;
                if at >= deadline {
                    return fail(
                        ctx,
                        first,
                        Fail::Status,
                        "503 past the connect timeout".into(),
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = ctx.stop.cancelled() => return Outcome::Stopped,
                }
            }
        }
    };
    let Opened {
        _sender,
        mut conn,
        resp,
    } = opened;
    let mut body = resp.into_body();
    let mut parser = Sse::default();
    let mut items = Vec::new();
    let mut permit = Some(permit);
    let mut connecting = Some(connecting);
    let mut conn_done = false;
    let mut ready = false;
    let mut rec = Instance {
        user,
        est_ns: 0,
        end_ns: 0,
        recv: Vec::new(),
    };
    let ready_timeout = tokio::time::sleep_until(deadline);
    tokio::pin!(ready_timeout);
    let outcome = loop {
        tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => break Outcome::Stopped,
            _ = slot.reconnect.notified(), if ready => break Outcome::Churned,
            _ = &mut ready_timeout, if !ready => {
                return fail(ctx, first, Fail::Timeout, "no connection_established in time".into());
            }
            r = &mut conn, if !conn_done => {
                conn_done = true;
                if let Err(e) = r {
                    s.note(format!("connection: {}", chain(&e)));
                }
            }
            f = body.frame() => match f {
                Some(Ok(fr)) => {
                    let Ok(data) = fr.into_data() else { continue };
                    parser.feed(&data, &mut items);
                    if items.is_empty() {
                        continue;
                    }
                    let now = now_ns();
                    for it in items.drain(..) {
                        let (name, data) = match it {
                            Item::Comment => {
                                s.heartbeats.fetch_add(1, Relaxed);
                                continue;
                            }
                            Item::Event { name, data } => (name, data),
                        };
                        match name.as_str() {
                            "bench" => match serde_json::from_str::<Mark>(&data) {
                                Ok(m) => {
                                    let lat_us = now.saturating_sub(m.ts_ns) / 1000;
                                    rec.recv.push((m.seq as u32, lat_us.min(u32::MAX as u64) as u32));
                                    s.received.fetch_add(1, Relaxed);
                                    s.last_recv_ns.fetch_max(now, Relaxed);
                                }
                                Err(_) => {
                                    s.bad_data.fetch_add(1, Relaxed);
                                }
                            },
                            "connection_established" if !ready => {
                                ready = true;
                                rec.est_ns = now;
                                s.established.fetch_add(1, Relaxed);
                                s.live.fetch_add(1, Relaxed);
                                s.last_est_ns.fetch_max(now, Relaxed);
                                ctx.user_live[user as usize].fetch_add(1, Relaxed);
                                slot.live.store(true, Relaxed);
                                let took_us = (now - attempt_ns) / 1000;
                                if first {
                                    s.initial_settled.fetch_add(1, Relaxed);
                                    s.connect_us.lock().unwrap().push(took_us);
                                } else {
                                    s.reconnect_us.lock().unwrap().push(took_us);
                                }
                                if reconnect {
                                    s.reconnects_done.fetch_add(1, Relaxed);
                                }
                                permit.take();
                                connecting.take();
                            }
                            "evicted" => {
                                s.evicted.fetch_add(1, Relaxed);
                            }
                            _ => {
                                s.other_events.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    if ready {
                        s.note(format!("stream body: {}", chain(&e)));
                    }
                    break Outcome::Ended;
                }
                None => break Outcome::Ended,
            },
        }
    };
    if !ready {
        return match outcome {
            Outcome::Stopped => Outcome::Stopped,
            _ => fail(
                ctx,
                first,
                Fail::Other,
                "stream ended before connection_established".into(),
            ),
        };
    }
    slot.live.store(false, Relaxed);
    s.live.fetch_sub(1, Relaxed);
    ctx.user_live[user as usize].fetch_sub(1, Relaxed);
    rec.end_ns = match outcome {
        Outcome::Stopped => u64::MAX,
        _ => now_ns(),
    };
    if let Outcome::Ended = outcome {
        s.ended.fetch_add(1, Relaxed);
        s.note("a live stream was ended by the server or the network".into());
    }
    ctx.instances.lock().unwrap().push(rec);
    outcome
}

/// Decrements a counter when dropped.
struct Guard<'a>(&'a AtomicU64);
impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
fn scopeguard(c: &AtomicU64) -> Guard<'_> {
    Guard(c)
}

/// A stream slot: its first stream, then (churn) the ones that replace it.
async fn slot_task(ctx: Arc<Ctx>, idx: usize) {
    let mut first = true;
    let mut reconnect = false;
    loop {
        let out = instance(&ctx, idx, first, reconnect).await;
        first = false;
        match out {
            Outcome::Stopped => return,
            Outcome::Churned => reconnect = true,
            Outcome::Failed | Outcome::Ended => {
                if !ctx.reopen {
                    return;
                }
                reconnect = true;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = ctx.stop.cancelled() => return,
                }
            }
        }
    }
}

// ------------------------------------------------------------------ sends

/// POST {base}/send/ with {"seq", "ts_ns"}; records the outcome.
async fn send_one(ctx: &Ctx, to: Option<u32>) {
    let seq = ctx.next_seq.fetch_add(1, Relaxed);
    let live_at_send = match to {
        Some(u) => ctx.user_live[u as usize].load(Relaxed) as u64,
        None => ctx.stats.live.load(Relaxed),
    };
    let start_ns = now_ns();
    let mut body = json!({"data": {"seq": seq, "ts_ns": start_ns}, "event": "bench"});
    if let Some(u) = to {
        body["to"] = json!(ctx.uname(u));
    }
    let mut req = ctx.http.post(format!("{}/send/", ctx.api)).json(&body);
    if let Some(t) = &ctx.api_token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await;
    let (ok, routed) = match res {
        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
            Ok(v) => (true, v["data"]["connections"].as_u64().unwrap_or(0)),
            Err(e) => {
                ctx.stats.note(format!("send: bad response: {e}"));
                (false, 0)
            }
        },
        Ok(r) => {
            let st = r.status();
            let text = r.text().await.unwrap_or_default();
            ctx.stats.note(format!(
                "send: status {st}: {}",
                &text[..text.len().min(200)]
            ));
            (false, 0)
        }
        Err(e) => {
            ctx.stats
                .note(format!("send at {:.1}s: {}", secs(start_ns), chain(&e)));
            (false, 0)
        }
    };
    let end_ns = now_ns();
    if ok {
        ctx.stats.send_ok.fetch_add(1, Relaxed);
        ctx.stats.expected_est.fetch_add(live_at_send, Relaxed);
    } else {
        ctx.stats.send_err.fetch_add(1, Relaxed);
    }
    ctx.msgs.lock().unwrap().push(Msg {
        seq,
        to,
        start_ns,
        end_ns,
        ok,
        routed,
        live_at_send,
    });
}

/// Sends at `rate` msg/s (0: as fast as `publishers` allow) to random users
/// until `count` messages are sent, `until` passes or `stop` fires.
async fn send_loop(
    ctx: Arc<Ctx>,
    count: Option<u64>,
    rate: f64,
    publishers: usize,
    until: tokio::time::Instant,
    stop: CancellationToken,
    mut rng: fastrand::Rng,
) {
    let sem = Arc::new(Semaphore::new(publishers.max(1)));
    let t0 = tokio::time::Instant::now();
    let mut issued: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if count.is_some_and(|c| issued >= c) || stop.is_cancelled() {
            break;
        }
        if tokio::time::Instant::now() >= until {
            break;
        }
        if rate > 0.0 {
            let due = (t0.elapsed().as_secs_f64() * rate) as u64;
            if issued >= due {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
        }
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.expect("semaphore"),
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(until) => break,
        };
        let to = rng.u32(0..ctx.users as u32);
        issued += 1;
        let c = ctx.clone();
        tokio::spawn(async move {
            send_one(&c, Some(to)).await;
            drop(permit);
        });
    }
    // wait for the sends in flight
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        sem.acquire_many(publishers.max(1) as u32),
    )
    .await;
}

// ------------------------------------------------------------------ accounting

/// Expected vs. received, per (stream, message): a stream is expected to get
/// a message when it was established before the send started and was still
/// open `grace` after the send returned (or until the end of the run).
fn account(ctx: &Ctx, grace_ns: u64) -> Value {
    let instances = ctx.instances.lock().unwrap();
    let all_msgs = ctx.msgs.lock().unwrap();
    let mut msgs: Vec<&Msg> = all_msgs.iter().collect();
    msgs.sort_by_key(|m| m.seq);
    let by_seq: HashMap<u64, &Msg> = msgs.iter().map(|m| (m.seq, *m)).collect();
    let mut by_user: HashMap<u32, Vec<&Instance>> = HashMap::new();
    for i in instances.iter() {
        by_user.entry(i.user).or_default().push(i);
    }
    let eligible = |i: &Instance, m: &Msg| {
        i.est_ns <= m.start_ns && i.end_ns >= m.end_ns.saturating_add(grace_ns)
    };

    let mut expected = 0u64;
    for m in msgs.iter().filter(|m| m.ok) {
        expected += match m.to {
            Some(u) => by_user
                .get(&u)
                .map_or(0, |v| v.iter().filter(|i| eligible(i, m)).count() as u64),
            None => instances.iter().filter(|i| eligible(i, m)).count() as u64,
        };
    }
    let mut received = 0u64; // unique, by expected streams
    let mut extra = 0u64; // unique, by streams not expected to get it (churn edges)
    let mut duplicates = 0u64;
    let mut misrouted = 0u64;
    let mut unknown = 0u64;
    let mut lat: Vec<u64> = Vec::new();
    // broadcasts: (deliveries to expected streams, max latency)
    let mut per_seq: HashMap<u64, (u64, u64)> = HashMap::new();
    for i in instances.iter() {
        let mut recv = i.recv.clone();
        recv.sort_unstable_by_key(|r| r.0);
        let mut last: Option<u32> = None;
        for (seq, lat_us) in recv {
            if last == Some(seq) {
                duplicates += 1;
                continue;
            }
            last = Some(seq);
            lat.push(lat_us as u64);
            let Some(m) = by_seq.get(&(seq as u64)) else {
                unknown += 1;
                continue;
            };
            if m.to.is_some_and(|u| u != i.user) {
                misrouted += 1;
                continue;
            }
            if m.ok && eligible(i, m) {
                received += 1;
                let e = per_seq.entry(m.seq).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(lat_us as u64);
            } else {
                extra += 1;
            }
        }
    }
    let routed: u64 = msgs.iter().filter(|m| m.ok).map(|m| m.routed).sum();
    let routed_mismatch = msgs
        .iter()
        .filter(|m| m.ok && m.routed != m.live_at_send)
        .count();
    let mut rtt: Vec<u64> = msgs
        .iter()
        .filter(|m| m.ok)
        .map(|m| (m.end_ns - m.start_ns) / 1000)
        .collect();
    let first_send = msgs.iter().map(|m| m.start_ns).min().unwrap_or(0);
    let last_send_end = msgs.iter().map(|m| m.end_ns).max().unwrap_or(0);
    let last_recv = ctx.stats.last_recv_ns.load(Relaxed);
    let span = last_recv.max(last_send_end).saturating_sub(first_send);
    let delivered = received + extra;
    // broadcast completion: every expected stream got it
    let mut completion: Vec<u64> = Vec::new();
    let mut incomplete = 0u64;
    for m in msgs.iter().filter(|m| m.ok && m.to.is_none()) {
        let exp = instances.iter().filter(|i| eligible(i, m)).count() as u64;
        match per_seq.get(&m.seq) {
            Some(&(n, max)) if n >= exp => completion.push(max),
            _ if exp == 0 => {}
            _ => incomplete += 1,
        }
    }
    json!({
        "sends": msgs.len(),
        "sends_ok": msgs.iter().filter(|m| m.ok).count(),
        "send_errors": msgs.iter().filter(|m| !m.ok).count(),
        "send_rate": if last_send_end > first_send { r3(msgs.len() as f64 / secs(last_send_end - first_send)) } else { 0.0 },
        "send_rtt": lat_json(&mut rtt),
        "expected": expected,
        "received": received,
        "lost": expected.saturating_sub(received),
        "delivery_ratio": if expected > 0 { received as f64 / expected as f64 } else { 1.0 },
        "duplicates": duplicates,
        "extra": extra,
        "misrouted": misrouted,
        "unknown_seq": unknown,
        "routed_by_server": routed,
        "routed_mismatch": routed_mismatch,
        "delivered": delivered,
        "delivered_per_sec": if span > 0 { r3(delivered as f64 / secs(span)) } else { 0.0 },
        "e2e": lat_json(&mut lat),
        "broadcast_completion": lat_json(&mut completion),
        "broadcast_incomplete": incomplete,
    })
}

// ------------------------------------------------------------------ server sampling

#[derive(Default)]
struct Samples {
    /// (seconds since start, VmRSS kB)
    rss: Vec<(f64, u64)>,
    registry: Vec<RegSample>,
}

/// Registry vs. the client's streams at one moment.
struct RegSample {
    t: f64,
    /// Streams live at this client before and after the request.
    live_before: u64,
    live_after: u64,
    /// Streams being opened at this client.
    connecting: u64,
    /// `total_connections` of the registry.
    registry: Option<u64>,
    /// The node's live-connections gauge.
    server_live: Option<u64>,
}

fn rss_json(s: &[(f64, u64)], from_s: f64) -> Value {
    let after: Vec<u64> = s.iter().filter(|x| x.0 >= from_s).map(|x| x.1).collect();
    json!({
        "samples": s.iter().map(|(t, kb)| json!([r3(*t), kb])).collect::<Vec<_>>(),
        "min_kb": after.iter().min(),
        "max_kb": after.iter().max(),
        "end_kb": s.last().map(|x| x.1),
    })
}

fn spawn_sampler(
    ctx: Arc<Ctx>,
    every: Duration,
    first_after: Duration,
    registry: bool,
    out: Arc<Mutex<Samples>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first_after, every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let t = secs(now_ns());
            if let Some(kb) = ctx.server_pid.and_then(vmrss_kb) {
                out.lock().unwrap().rss.push((t, kb));
            }
            if registry {
                let live0 = ctx.stats.live.load(Relaxed);
                let conn0 = ctx.stats.connecting.load(Relaxed);
                let (reg, srv) = tokio::join!(ctx.registry_total(), ctx.server_live());
                let live1 = ctx.stats.live.load(Relaxed);
                eprintln!(
                    "[{t:7.1}s] live {live1} (connecting {conn0}), registry {}, server gauge {}, rss {} kB, sent {} received {}",
                    reg.map_or("?".into(), |v| v.to_string()),
                    srv.map_or("?".into(), |v| v.to_string()),
                    ctx.server_pid.and_then(vmrss_kb).map_or("?".into(), |v| v.to_string()),
                    ctx.stats.send_ok.load(Relaxed),
                    ctx.stats.received.load(Relaxed),
                );
                out.lock().unwrap().registry.push(RegSample {
                    t,
                    live_before: live0,
                    live_after: live1,
                    connecting: conn0,
                    registry: reg,
                    server_live: srv,
                });
            }
        }
    })
}

// ------------------------------------------------------------------ run

struct Run {
    ctx: Arc<Ctx>,
    slots: tokio::task::JoinSet<()>,
    connect: Value,
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
    cpu_before: Option<f64>,
    registry_baseline: Option<u64>,
    rng: fastrand::Rng,
}

async fn resolve(c: &Common) -> Result<Target, String> {
    let url = c.stream_url.replace("{user}", "__USER__");
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("--stream-url {}: {e}", c.stream_url))?;
    match uri.scheme_str() {
        Some("http") => {}
        _ => {
            return Err(format!(
                "--stream-url {}: only http:// is supported (point it at the daemon's public listener, or a plain-http proxy)",
                c.stream_url
            ))
        }
    }
    let host = uri.host().ok_or("--stream-url has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let h = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let addr = tokio::net::lookup_host((h.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))?;
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string())
        .replace("__USER__", "{user}");
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    Ok(Target {
        addr,
        host: authority,
        path,
        user_header: c.user_header.clone(),
    })
}

async fn start(c: &Common, reopen: bool, publishers: usize) -> Result<Run, String> {
    if c.conns == 0 {
        return Err("--conns must be at least 1".into());
    }
    let users = c.users.unwrap_or(c.conns).max(1);
    let nofile = raise_nofile();
    let need = (c.conns + publishers + 64) as u64;
    if need > nofile {
        return Err(format!(
            "{} streams need about {need} file descriptors; this process may open {nofile} \
             (RLIMIT_NOFILE): run fewer streams per sse-bench process",
            c.conns
        ));
    }
    let target = resolve(c).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(publishers.max(4))
        // under the 30 s after which the daemon closes an idle keep-alive
        // connection: never reuse one it may be closing at that moment
        .pool_idle_timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let admin = c.admin_url.trim_end_matches('/').to_string();
    let base = c.base_path.trim_end_matches('/');
    let ctx = Arc::new(Ctx {
        target,
        users,
        user_prefix: c.user_prefix.clone(),
        connect_timeout: Duration::from_secs_f64(c.connect_timeout),
        connect_sem: Arc::new(Semaphore::new(c.connect_concurrency.max(1))),
        src_ips: c.src_ips.min(250),
        reopen,
        stop: CancellationToken::new(),
        stats: Stats::default(),
        slots: (0..c.conns)
            .map(|_| Slot {
                live: AtomicBool::new(false),
                reconnect: Notify::new(),
            })
            .collect(),
        user_live: (0..users).map(|_| AtomicU32::new(0)).collect(),
        instances: Mutex::new(Vec::new()),
        msgs: Mutex::new(Vec::new()),
        next_seq: AtomicU64::new(0),
        http,
        api: format!("{admin}{base}"),
        admin,
        api_token: c.api_token.clone().filter(|t| !t.is_empty()),
        server_pid: c.server_pid,
    });
    let registry_baseline = ctx.registry_total().await;
    if registry_baseline.is_none() {
        eprintln!(
            "warning: GET {}/connections/ failed: no registry figures (is --admin-url / --api-token right?)",
            ctx.api
        );
    }
    let rss_before = c.server_pid.and_then(vmrss_kb);
    let cpu_before = c.server_pid.and_then(cpu_s);
    let rng = c
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);

    let t0 = now_ns();
    eprintln!(
        "opening {} streams as {}0..{}{} on {} ({} at once)",
        c.conns,
        c.user_prefix,
        c.user_prefix,
        users - 1,
        c.stream_url,
        c.connect_concurrency
    );
    let mut slots = tokio::task::JoinSet::new();
    for i in 0..c.conns {
        slots.spawn(slot_task(ctx.clone(), i));
    }
    let mut last_print = Instant::now();
    while ctx.stats.initial_settled.load(Relaxed) < c.conns as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            eprintln!(
                "  established {} failed {} ({:.1}s)",
                ctx.stats.established.load(Relaxed),
                ctx.stats.failed(),
                secs(now_ns() - t0)
            );
        }
    }
    let est = ctx.stats.established.load(Relaxed);
    let span = secs(ctx.stats.last_est_ns.load(Relaxed).saturating_sub(t0));
    let rate = if est > 0 && span > 0.0 {
        est as f64 / span
    } else {
        0.0
    };
    let connect = json!({
        "established": est,
        "failed": ctx.stats.initial_failed.load(Relaxed),
        "secs": r3(span),
        "rate_per_sec": r3(rate),
        "retried_503": ctx.stats.retried_503.load(Relaxed),
        "latency": lat_json(&mut ctx.stats.connect_us.lock().unwrap()),
        "server_cpu_s": match (cpu_before, c.server_pid.and_then(cpu_s)) {
            (Some(a), Some(b)) => Some(r3(b - a)),
            _ => None,
        },
    });
    eprintln!(
        "established {est}, failed {} in {span:.2}s ({rate:.0} streams/s); settling {:.1}s",
        ctx.stats.initial_failed.load(Relaxed),
        c.settle
    );
    tokio::time::sleep(Duration::from_secs_f64(c.settle)).await;
    Ok(Run {
        rss_connected: c.server_pid.and_then(vmrss_kb),
        ctx,
        slots,
        connect,
        rss_before,
        cpu_before,
        registry_baseline,
        rng,
    })
}

impl Run {
    /// Waits until the received count reaches the expected estimate, or `drain`.
    async fn drain(&self, drain: f64) {
        let until = Instant::now() + Duration::from_secs_f64(drain);
        while Instant::now() < until {
            let s = &self.ctx.stats;
            if s.received.load(Relaxed) >= s.expected_est.load(Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every stream; their records end "live at the end".
    async fn stop(&mut self) {
        self.ctx.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while self.slots.join_next().await.is_some() {}
        })
        .await;
        self.slots.abort_all();
    }

    /// Fields every mode reports.
    fn common_json(&self, mode: &str, c: &Common) -> Value {
        let s = &self.ctx.stats;
        let est = self.connect["established"].as_u64().unwrap_or(0);
        let per_stream = match (self.rss_before, self.rss_connected) {
            (Some(b), Some(a)) if est > 0 => {
                Some(((a as f64 - b as f64) * 1024.0 / est as f64).round())
            }
            _ => None,
        };
        json!({
            "tool": "sse-bench",
            "mode": mode,
            "stream_url": c.stream_url,
            "conns": c.conns,
            "users": self.ctx.users,
            "established": est,
            "failed": self.connect["failed"],
            "connect": self.connect,
            "connect_rate": self.connect["rate_per_sec"],
            "attempts": s.attempts.load(Relaxed),
            "failures": {
                "total": s.failed(),
                "connect": s.fail_connect.load(Relaxed),
                "status": s.fail_status.load(Relaxed),
                "timeout": s.fail_timeout.load(Relaxed),
                "other": s.fail_other.load(Relaxed),
            },
            "ended_by_server": s.ended.load(Relaxed),
            "evicted": s.evicted.load(Relaxed),
            "heartbeats": s.heartbeats.load(Relaxed),
            "other_events": s.other_events.load(Relaxed),
            "bad_data": s.bad_data.load(Relaxed),
            "errors": *s.errors.lock().unwrap(),
            "registry_baseline": self.registry_baseline,
            "server": {
                "pid": c.server_pid,
                "rss_before_kb": self.rss_before,
                "rss_connected_kb": self.rss_connected,
                "rss_bytes_per_stream": per_stream,
                "rss_end_kb": c.server_pid.and_then(vmrss_kb),
                "cpu_s": match (self.cpu_before, c.server_pid.and_then(cpu_s)) {
                    (Some(a), Some(b)) => Some(r3(b - a)),
                    _ => None,
                },
            },
            "bench_rss_kb": vmrss_kb(std::process::id()),
        })
    }
}

fn merge(a: &mut Value, b: Value) {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
}

fn human(v: &Value) {
    eprintln!("=== sse-bench {} ===", v["mode"].as_str().unwrap_or(""));
    eprintln!(
        "streams: {} requested, {} established, {} failed; {:.0} streams/s; {} ended by the server",
        v["conns"],
        v["established"],
        v["failed"],
        v["connect_rate"].as_f64().unwrap_or(0.0),
        v["ended_by_server"]
    );
    let cl = &v["connect"]["latency"];
    eprintln!(
        "connect (to connection_established): p50 {} ms, p99 {} ms, max {} ms; {} retried after a 503",
        cl["p50_ms"], cl["p99_ms"], cl["max_ms"], v["connect"]["retried_503"]
    );
    if let Some(b) = v["server"]["rss_bytes_per_stream"].as_f64() {
        eprintln!(
            "server RSS: {} kB before, {} kB connected ({b:.0} bytes/stream), {} kB at the end",
            v["server"]["rss_before_kb"],
            v["server"]["rss_connected_kb"],
            v["server"]["rss_end_kb"]
        );
    }
    if let Some(d) = v.get("delivery") {
        eprintln!(
            "sends: {} ok, {} errors, {} msg/s; send round trip p50 {} ms, p99 {} ms",
            d["sends_ok"],
            d["send_errors"],
            d["send_rate"],
            d["send_rtt"]["p50_ms"],
            d["send_rtt"]["p99_ms"]
        );
        eprintln!(
            "deliveries: {} of {} expected (ratio {}), {} lost, {} duplicates, {} extra; {} delivered msg/s",
            d["received"], d["expected"], d["delivery_ratio"], d["lost"], d["duplicates"], d["extra"], d["delivered_per_sec"]
        );
        eprintln!(
            "end-to-end latency: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            d["e2e"]["p50_ms"], d["e2e"]["p90_ms"], d["e2e"]["p99_ms"], d["e2e"]["max_ms"]
        );
        if d["broadcast_completion"]["count"].as_u64().unwrap_or(0) > 0 {
            eprintln!(
                "broadcast completion (every stream has it): p50 {} ms, p99 {} ms, max {} ms; {} incomplete",
                d["broadcast_completion"]["p50_ms"],
                d["broadcast_completion"]["p99_ms"],
                d["broadcast_completion"]["max_ms"],
                d["broadcast_incomplete"]
            );
        }
    }
    if let Some(ch) = v.get("churn") {
        eprintln!(
            "churn: {} reconnects requested, {} done, {} reconnect failures, {} errors",
            ch["reconnects_requested"],
            ch["reconnects_done"],
            ch["reconnect_failures"],
            ch["errors"]
        );
        eprintln!(
            "reconnect (to connection_established): p50 {} ms, p99 {} ms, max {} ms",
            ch["reconnect_latency"]["p50_ms"],
            ch["reconnect_latency"]["p99_ms"],
            ch["reconnect_latency"]["max_ms"]
        );
        eprintln!(
            "registry during the churn: off by at most {} from the live streams",
            ch["registry_max_gap_during"]
        );
        eprintln!(
            "registry at the end: {} (baseline {}) for {} live streams: {}",
            ch["registry_end"],
            v["registry_baseline"],
            ch["live_end"],
            if ch["registry_matches_live"].as_bool() == Some(true) {
                "match"
            } else {
                "MISMATCH"
            }
        );
        eprintln!(
            "registry after closing every stream: {} (back to baseline: {})",
            ch["registry_after_close"], ch["registry_back_to_baseline"]
        );
    }
    if let Some(r) = v.get("rss").filter(|r| !r["min_kb"].is_null()) {
        eprintln!(
            "server RSS over the run: min {} kB, max {} kB, end {} kB",
            r["min_kb"], r["max_kb"], r["end_kb"]
        );
    }
    if let Some(e) = v["errors"].as_array().filter(|e| !e.is_empty()) {
        eprintln!("first errors:");
        for x in e {
            eprintln!("  {}", x.as_str().unwrap_or(""));
        }
    }
}

async fn hold(c: Common) -> Result<Value, String> {
    let mut run = start(&c, false, 0).await?;
    let dur = c.duration.unwrap_or(10.0);
    eprintln!("holding {dur:.0}s");
    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = CancellationToken::new();
    let sampler = spawn_sampler(
        run.ctx.clone(),
        Duration::from_secs_f64(c.sample_secs.max(0.1)),
        Duration::ZERO,
        false,
        samples.clone(),
        stop.clone(),
    );
    let live_start = run.ctx.stats.live.load(Relaxed);
    let mut min_live = live_start;
    let until = Instant::now() + Duration::from_secs_f64(dur);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        min_live = min_live.min(run.ctx.stats.live.load(Relaxed));
    }
    let live_end = run.ctx.stats.live.load(Relaxed);
    let registry = run.ctx.registry_total().await;
    stop.cancel();
    let _ = sampler.await;
    let mut v = run.common_json("hold", &c);
    run.stop().await;
    merge(
        &mut v,
        json!({
            "hold": {"secs": dur, "live_start": live_start, "live_end": live_end, "min_live": min_live,
                     "dropped": live_start.saturating_sub(live_end)},
            "registry_end": registry,
            "rss": rss_json(&samples.lock().unwrap().rss, 0.0),
        }),
    );
    Ok(v)
}

async fn unicast(c: Common, messages: u64, publishers: usize, rate: f64) -> Result<Value, String> {
    let mut run = start(&c, false, publishers).await?;
    let cap = c.duration.unwrap_or(120.0);
    eprintln!("sending {messages} messages ({publishers} at once)");
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(cap);
    send_loop(
        run.ctx.clone(),
        Some(messages),
        rate,
        publishers,
        until,
        CancellationToken::new(),
        run.rng.fork(),
    )
    .await;
    run.drain(c.drain).await;
    run.stop().await;
    let mut v = run.common_json("unicast", &c);
    merge(
        &mut v,
        json!({"messages": messages, "publishers": publishers, "delivery": account(&run.ctx, 0)}),
    );
    Ok(v)
}

async fn broadcast(c: Common, broadcasts: u64, interval_ms: u64) -> Result<Value, String> {
    let mut run = start(&c, false, 1).await?;
    let cap = Instant::now() + Duration::from_secs_f64(c.duration.unwrap_or(120.0));
    eprintln!("sending {broadcasts} broadcasts, {interval_ms} ms apart");
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    let mut inflight = tokio::task::JoinSet::new();
    for _ in 0..broadcasts {
        tick.tick().await;
        if Instant::now() >= cap {
            break;
        }
        let ctx = run.ctx.clone();
        inflight.spawn(async move { send_one(&ctx, None).await });
    }
    while inflight.join_next().await.is_some() {}
    run.drain(c.drain).await;
    run.stop().await;
    let mut v = run.common_json("broadcast", &c);
    merge(
        &mut v,
        json!({"broadcasts": broadcasts, "interval_ms": interval_ms, "delivery": account(&run.ctx, 0)}),
    );
    Ok(v)
}

/// The part of each second over which the churn closes its streams.
const CHURN_SPREAD: Duration = Duration::from_millis(500);

async fn churn(
    c: Common,
    reconnect_pct: f64,
    send_rate: f64,
    publishers: usize,
    grace_ms: u64,
) -> Result<Value, String> {
    let mut run = start(&c, true, publishers).await?;
    let ctx = run.ctx.clone();
    let dur = c.duration.unwrap_or(60.0);
    let initial_failed = ctx.stats.failed();
    let attempts0 = ctx.stats.attempts.load(Relaxed);
    eprintln!(
        "churning {dur:.0}s: {reconnect_pct}% of the live streams reopened every second, {send_rate} msg/s to random users"
    );
    let churn_start = secs(now_ns());
    let samples = Arc::new(Mutex::new(Samples::default()));
    let sampler_stop = CancellationToken::new();
    let sampler = spawn_sampler(
        ctx.clone(),
        Duration::from_secs_f64(c.sample_secs.max(0.5)),
        // in the quiet part of each second: no stream is closing then
        CHURN_SPREAD + Duration::from_millis(250),
        true,
        samples.clone(),
        sampler_stop.clone(),
    );
    let send_stop = CancellationToken::new();
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(dur);
    let sender = tokio::spawn(send_loop(
        ctx.clone(),
        None,
        send_rate.max(0.001),
        publishers,
        until,
        send_stop.clone(),
        run.rng.fork(),
    ));
    let mut requested = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut live_idx: Vec<usize> = Vec::with_capacity(c.conns);
    // one round a second, the first at once: `dur` rounds in `dur` seconds
    for _round in 0..(dur.floor() as u64) {
        tick.tick().await;
        live_idx.clear();
        live_idx.extend((0..c.conns).filter(|&i| ctx.slots[i].live.load(Relaxed)));
        let k = ((live_idx.len() as f64) * reconnect_pct / 100.0).round() as usize;
        let k = k.min(live_idx.len());
        // spread over the first half of the second (like browsers, not one
        // burst); the samples are taken in the quiet second half
        let t0 = tokio::time::Instant::now();
        for j in 0..k {
            tokio::time::sleep_until(t0 + CHURN_SPREAD * j as u32 / k as u32).await;
            let r = run.rng.usize(j..live_idx.len());
            live_idx.swap(j, r);
            ctx.slots[live_idx[j]].reconnect.notify_one();
        }
        requested += k as u64;
    }
    tokio::time::sleep_until(until).await;
    send_stop.cancel();
    let _ = sender.await;
    let churn_secs = secs(now_ns()) - churn_start;
    // let the reconnects in flight finish, deliveries arrive
    let settle_until = Instant::now() + Duration::from_secs_f64(c.connect_timeout);
    while ctx.stats.connecting.load(Relaxed) > 0 && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(c.drain.min(2.0))).await;
    sampler_stop.cancel();
    let _ = sampler.await;
    // quiescent: the registry must hold exactly the live streams (+ baseline)
    let baseline = run.registry_baseline.unwrap_or(0);
    let mut registry_end = None;
    let mut live_end;
    let check_until = Instant::now() + Duration::from_secs(5);
    loop {
        live_end = ctx.stats.live.load(Relaxed);
        registry_end = ctx.registry_total().await.or(registry_end);
        if registry_end == Some(baseline + live_end) || Instant::now() >= check_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let server_live_end = ctx.server_live().await;
    let rss_end = c.server_pid.and_then(vmrss_kb);
    let mut v = run.common_json("churn", &c);
    run.stop().await;
    // after closing every stream the registry must be back to the baseline
    let mut registry_after_close = None;
    let close_until = Instant::now() + Duration::from_secs(10);
    loop {
        registry_after_close = ctx.registry_total().await.or(registry_after_close);
        if registry_after_close == Some(baseline) || Instant::now() >= close_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = &ctx.stats;
    let reconnect_failures = s.failed() - initial_failed;
    let delivery = account(&ctx, grace_ms * 1_000_000);
    let samples = samples.lock().unwrap();
    // during the churn: registry - baseline vs. the client's live streams,
    // off by at most the streams opening or closing at that moment
    let max_gap = samples
        .registry
        .iter()
        .filter_map(|x| {
            let r = x.registry? as i64 - baseline as i64;
            let (lo, hi) = (
                x.live_before.min(x.live_after),
                x.live_before.max(x.live_after),
            );
            Some((lo as i64 - r).max(r - hi as i64).max(0))
        })
        .max();
    let errors =
        reconnect_failures + s.ended.load(Relaxed) + delivery["send_errors"].as_u64().unwrap_or(0);
    merge(
        &mut v,
        json!({
            "delivery": delivery,
            "churn": {
                "secs": r3(churn_secs),
                "reconnect_pct": reconnect_pct,
                "send_rate_target": send_rate,
                "reconnects_requested": requested,
                "reconnects_done": s.reconnects_done.load(Relaxed),
                "reconnect_attempts": s.attempts.load(Relaxed) - attempts0,
                "reconnect_failures": reconnect_failures,
                "reconnect_latency": lat_json(&mut s.reconnect_us.lock().unwrap()),
                "errors": errors,
                "live_end": live_end,
                "registry_end": registry_end,
                "registry_matches_live": registry_end == Some(baseline + live_end),
                "server_live_end": server_live_end,
                "registry_after_close": registry_after_close,
                "registry_back_to_baseline": registry_after_close == Some(baseline),
                "registry_max_gap_during": max_gap,
                "registry_samples": samples.registry.iter().map(|x| json!({
                    "t": r3(x.t - churn_start), "live_before": x.live_before, "live": x.live_after,
                    "connecting": x.connecting,
                    "registry": x.registry, "server_live": x.server_live,
                })).collect::<Vec<_>>(),
                "rss_end_kb": rss_end,
            },
            "rss": rss_json(
                &samples.rss.iter().map(|&(t, kb)| (t - churn_start, kb)).collect::<Vec<_>>(),
                60.0_f64.min(churn_secs / 2.0),
            ),
        }),
    );
    Ok(v)
}

fn main() {
    let cli = Cli::parse();
    let _ = now_ns();
    let (name, c) = match &cli.mode {
        Mode::Hold { c } => ("hold", c),
        Mode::Unicast { c, .. } => ("unicast", c),
        Mode::Broadcast { c, .. } => ("broadcast", c),
        Mode::Churn { c, .. } => ("churn", c),
    };
    let max_runtime = c.max_runtime;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(max_runtime.max(1.0)));
        eprintln!("sse-bench: --max-runtime {max_runtime}s exceeded, exiting");
        println!(
            "{}",
            json!({"tool": "sse-bench", "mode": name, "error": format!("max runtime {max_runtime}s exceeded")})
        );
        std::process::exit(3);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(c.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = rt.block_on(async move {
        match cli.mode {
            Mode::Hold { c } => hold(c).await,
            Mode::Unicast {
                c,
                messages,
                publishers,
                rate,
            } => unicast(c, messages, publishers, rate).await,
            Mode::Broadcast {
                c,
                broadcasts,
                interval_ms,
            } => broadcast(c, broadcasts, interval_ms).await,
            Mode::Churn {
                c,
                reconnect_pct,
                send_rate,
                publishers,
                grace_ms,
            } => churn(c, reconnect_pct, send_rate, publishers, grace_ms).await,
        }
    });
    match res {
        Ok(v) => {
            human(&v);
            println!("{v}");
            // streams the runtime still holds are closed by exit
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("sse-bench: {e}");
            println!("{}", json!({"tool": "sse-bench", "mode": name, "error": e}));
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<(String, String)> {
        let mut p = Sse::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c.as_bytes(), &mut out);
        }
        out.into_iter()
            .filter_map(|i| match i {
                Item::Event { name, data } => Some((name, data)),
                Item::Comment => None,
            })
            .collect()
    }

    #[test]
    fn sse_frames_split_anywhere() {
        let text = "retry: 3000\n\nevent: connection_established\ndata: {\"a\":1}\n\n: heartbeat 1\n\nid: 1-0\r\nevent: bench\r\ndata: {\"seq\":3,\"ts_ns\":9}\r\n\r\ndata: x\ndata: y\n\n";
        let whole = parse(&[text]);
        assert_eq!(
            whole,
            vec![
                ("connection_established".into(), "{\"a\":1}".into()),
                ("bench".into(), "{\"seq\":3,\"ts_ns\":9}".into()),
                ("message".into(), "x\ny".into()),
            ]
        );
        let bytes: Vec<String> = text.chars().map(|c| c.to_string()).collect();
        let refs: Vec<&str> = bytes.iter().map(|s| s.as_str()).collect();
        assert_eq!(parse(&refs), whole);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pct(&v, 50.0), 50);
        assert_eq!(pct(&v, 99.0), 99);
        assert_eq!(pct(&v, 100.0), 100);
        assert_eq!(pct(&[], 50.0), 0);
    }
}
