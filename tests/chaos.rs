//! Chaos: three real `sse-notify` processes on one `redis-server`. Browser
//! tabs connect and disconnect at random (coming back with `Last-Event-ID`
//! as an `EventSource` does), one node is restarted, Redis is restarted
//! once (empty), and sends go on throughout. Every live tab must receive
//! each message addressed to it exactly once, and every reconnecting tab's
//! replay must fill its gap, within the history kept (README "The stream", "HTTP API", "Signals and lifecycle").
//!
//! # What a tab is expected to receive
//!
//! Times are taken in this process. For a send: `start` (request about to
//! go out) and `done` (its 200 read). For a tab's sessions (one stream
//! each): `req` (request about to go out), `est` (its
//! `connection_established` read: the stream is in the registry and its
//! replay was read from Redis before that), `end` (the tab dropped it or
//! saw it end). `K` is the moment just before Redis was killed.
//!
//! Each tab also follows a topic, shared with tabs of other users; the
//! sends mix messages to users, to topics (one that nobody follows too)
//! and broadcasts. Message `m` addressed to the tab (its user, its topic,
//! or a broadcast) is judged so:
//!
//! 1. `m.done < first.req`: sent before the tab existed; not expected (and
//!    receiving it is an error: a fresh tab has nothing to replay).
//! 2. `m.start < first.est <= ...`: the tab was opening while `m` was
//!    being sent; either outcome is right (the first stream has no
//!    `Last-Event-ID`, so nothing is replayed to it).
//! 3. Live: some session has `est <= m.start` and `end >= m.done + 1 s`:
//!    the stream was registered before the send began and stayed open well
//!    after it was accepted. Expected, with no excuse: the README promises
//!    live delivery, Redis outage or not.
//! 4. Otherwise the tab was away (or leaving, or arriving) while `m` was
//!    sent, and `m` must come from the replay of the first session that
//!    became established after `m.start`: the router keeps a message in the
//!    history before it reads the targets, and a stream registers before
//!    it reads the history, so that session gets `m` live or in its
//!    replay. Expected, except:
//!    - that session was opened without `Last-Event-ID` (the tab had not
//!      received any message yet; a browser sends none then): no replay is
//!      asked for. The tabs only drop a stream on their own after their
//!      first message, so only a node restart can cause this.
//!    - `m.start < K` and that session became established after `K`: its
//!      replay was read from the restarted, empty Redis; the history that
//!      held `m` is gone (README "Missed messages: history and
//!      `Last-Event-ID`": only what is kept is replayed). This excuses
//!      only messages the tab was *away* for: a message sent while a
//!      stream was open (rule 3) stays expected even if the stream lived
//!      through the outage.
//!
//! A `history_gap` is right only on a stream established after `K` whose
//! `Last-Event-ID` names a message sent before `K`, or once on a stream
//! open across `K` (Redis restarted empty: what it had taken but not yet
//! handed to the nodes is gone, and the node says so). Anything else fails
//! the test: a missing expected message, a duplicate, a message for
//! another user or topic, an unknown id, a message from a failed (503) send, an
//! unexpected event or gap, ids out of order within one stream (a browser
//! comes back with the last id it got and the replay starts after it, so
//! an older id delivered after a newer one is lost or duplicated at the
//! next reconnect), a node that stopped on its own, a panic in a log.
mod common;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::Node as _;
use common::*;
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};

const CONFIG: &str = "[auth]\npublic_topics = [\"*\"]\n\
    [stream]\nheartbeat_secs = 1\n\
    [sweep]\ninterval_secs = 1\nstale_timeout_secs = 5\n\
    [history]\nsize = 1000\nttl_secs = 600\n";
const USERS: [&str; 4] = ["ann", "ben", "cat", "dov"];
/// Tab `i` follows `TOPICS[i % 3]`: each topic has tabs of several users
/// (and on several nodes); nobody follows the last one.
const TOPICS: [&str; 4] = ["doc:0", "doc:1", "doc:2", "doc:9"];
const TABS: usize = 8;
/// How long after its acceptance a message may still be on its way to a
/// live tab (in flight when the tab drops the stream).
const LIVE_MARGIN: Duration = Duration::from_secs(1);
/// Pause between two sends (about 35 sends/s with the request itself).
const SEND_EVERY: Duration = Duration::from_millis(25);

/// When (seconds after the start of traffic) things happen.
const RESTART_B_AT: Duration = Duration::from_secs(7);
const REDIS_DOWN_AT: Duration = Duration::from_secs(16);
const REDIS_OUTAGE: Duration = Duration::from_secs(2);
const STOP_SENDS_AT: Duration = Duration::from_secs(28);
/// After the last send: tabs reconnect if needed and read what is left.
const SETTLE: Duration = Duration::from_millis(2500);

const RUN: u8 = 0;
const SETTLING: u8 = 1;
const FINISH: u8 = 2;

#[derive(Clone)]
struct Node {
    name: String,
    stream: String,
    admin: String,
}

type Nodes = Arc<RwLock<Vec<Node>>>;

fn pick(nodes: &Nodes, rng: &mut fastrand::Rng) -> Node {
    let list = nodes.read().unwrap();
    list[rng.usize(..list.len())].clone()
}

// ------------------------------------------------------------------ tabs

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// One stream of a tab.
#[derive(Debug, Clone)]
struct Session {
    node: String,
    req: Instant,
    est: Instant,
    end: Instant,
    /// The `Last-Event-ID` it was opened with.
    last_event_id: Option<String>,
    closed_by_server: bool,
}

#[derive(Debug)]
struct Got {
    id: String,
    data: String,
    session: usize,
    at: Instant,
}

#[derive(Debug)]
struct Tab {
    index: usize,
    user: &'static str,
    topic: &'static str,
    sessions: Vec<Session>,
    got: Vec<Got>,
    /// (session, data, when) of each `history_gap`.
    gaps: Vec<(usize, String, Instant)>,
    /// Events that are neither messages nor gaps.
    other: Vec<String>,
    /// (when, node, why) of each stream that could not be opened.
    failed_opens: Vec<(Instant, String, String)>,
    /// Connected when told to finish.
    settled: bool,
}

/// Opens a stream and reads its `connection_established`.
async fn open(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    last: Option<&str>,
) -> Result<Events, String> {
    let mut req = client.get(url).header("X-Remote-User", user);
    if let Some(id) = last {
        req = req.header("Last-Event-ID", id);
    }
    let resp = match tokio::time::timeout(Duration::from_secs(5), req.send()).await {
        Err(_) => return Err("no response within 5 s".into()),
        Ok(Err(e)) if e.is_connect() => return Err("connection refused".into()),
        Ok(Err(e)) => return Err(format!("transport: {e}")),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let mut events: Events = Box::pin(
        resp.bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string())),
    );
    match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
        Ok(Some(Ok(ev))) if ev.event == "connection_established" => Ok(events),
        other => Err(format!("first event: {other:?}")),
    }
}

/// A browser tab: connects to a random node that is up, reads, drops the
/// stream now and then and comes back with the last id it received, at
/// once or after being away up to 1.5 s; when its node ends the stream it
/// comes back after a short delay; failed opens are retried with backoff.
/// Ends (with its stream open) at FINISH.
async fn run_tab(
    index: usize,
    user: &'static str,
    topic: &'static str,
    nodes: Nodes,
    phase: Arc<AtomicU8>,
    seed: u64,
) -> Tab {
    let mut rng = fastrand::Rng::with_seed(seed);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut tab = Tab {
        index,
        user,
        topic,
        sessions: Vec::new(),
        got: Vec::new(),
        gaps: Vec::new(),
        other: Vec::new(),
        failed_opens: Vec::new(),
        settled: false,
    };
    let mut last: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    tokio::time::sleep(Duration::from_millis(rng.u64(0..300))).await;
    while phase.load(Ordering::SeqCst) != FINISH {
        let node = pick(&nodes, &mut rng);
        let req = Instant::now();
        let url = format!("{}?topics={topic}", node.stream);
        let mut events = match open(&client, &url, user, last.as_deref()).await {
            Ok(events) => events,
            Err(why) => {
                tab.failed_opens.push((req, node.name.clone(), why));
                let jitter = Duration::from_millis(rng.u64(0..100));
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let est = Instant::now();
        let session = tab.sessions.len();
        let drop_at = est + Duration::from_millis(rng.u64(500..3000));
        let mut closed_by_server = false;
        let opened_with = last.clone();
        loop {
            let p = phase.load(Ordering::SeqCst);
            if p == FINISH {
                tab.settled = true;
                break;
            }
            // Only a tab that has an id to come back with drops on its own.
            if p == RUN && last.is_some() && Instant::now() >= drop_at {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(50), events.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(ev))) => match ev.event.as_str() {
                    "message" => {
                        last = Some(ev.id.clone());
                        tab.got.push(Got {
                            id: ev.id,
                            data: ev.data,
                            session,
                            at: Instant::now(),
                        });
                    }
                    "history_gap" => tab.gaps.push((session, ev.data, Instant::now())),
                    other => tab.other.push(format!("{other}: {}", ev.data)),
                },
                Ok(Some(Err(_))) | Ok(None) => {
                    closed_by_server = true;
                    break;
                }
            }
        }
        drop(events);
        tab.sessions.push(Session {
            node: node.name.clone(),
            req,
            est,
            end: Instant::now(),
            last_event_id: opened_with,
            closed_by_server,
        });
        if closed_by_server {
            tokio::time::sleep(Duration::from_millis(rng.u64(100..400))).await;
        } else if rng.bool() {
            // Away for a while (a reload, a laptop lid, EventSource's own
            // retry delay): what is sent meanwhile must come from history,
            // also when none of the user's tabs is connected.
            tokio::time::sleep(Duration::from_millis(rng.u64(50..1500))).await;
        }
    }
    tab
}

// ----------------------------------------------------------------- sends

#[derive(Debug, Clone)]
enum Outcome {
    Ok(String),
    Status(u16, String),
    Refused,
    Error(String),
}

/// Who a send is for.
#[derive(Debug, Clone, Copy)]
enum To {
    Everyone,
    User(&'static str),
    Topic(&'static str),
}

#[derive(Debug, Clone)]
struct SendRec {
    seq: u64,
    to: To,
    node: String,
    start: Instant,
    done: Instant,
    outcome: Outcome,
}

impl SendRec {
    fn id(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Ok(id) => Some(id),
            _ => None,
        }
    }
}

/// Posts to the nodes in turn until the phase leaves RUN: user messages
/// to every connection of a random user, one broadcast in five and one
/// message to a random topic in five.
async fn run_sender(nodes: Nodes, phase: Arc<AtomicU8>, seed: u64) -> Vec<SendRec> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut out = Vec::new();
    let mut seq = 0u64;
    while phase.load(Ordering::SeqCst) == RUN {
        let node = {
            let list = nodes.read().unwrap();
            list[seq as usize % list.len()].clone()
        };
        let to = match rng.u8(0..5) {
            0 => To::Everyone,
            1 => To::Topic(TOPICS[rng.usize(..TOPICS.len())]),
            _ => To::User(USERS[rng.usize(..USERS.len())]),
        };
        let body = match to {
            To::User(user) => json!({"to": user, "data": {"seq": seq}, "all_connections": true}),
            To::Topic(topic) => json!({"topic": topic, "data": {"seq": seq}}),
            To::Everyone => json!({"data": {"seq": seq}}),
        };
        let start = Instant::now();
        let resp = client
            .post(format!("{}/notifications/send/", node.admin))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let outcome = match resp {
            Err(e) if e.is_connect() => Outcome::Refused,
            Err(e) => Outcome::Error(e.to_string()),
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                match (status, v["data"]["message_id"].as_str()) {
                    (200, Some(id)) => Outcome::Ok(id.to_string()),
                    _ => Outcome::Status(status, text),
                }
            }
        };
        out.push(SendRec {
            seq,
            to,
            node: node.name,
            start,
            done: Instant::now(),
            outcome,
        });
        seq += 1;
        tokio::time::sleep(SEND_EVERY).await;
    }
    out
}

// -------------------------------------------------------------- judging

/// Ids are `{ms}-{seq}`, ordered numerically.
fn id_key(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Expected,
    /// Sent before the tab existed.
    Before,
    /// Sent while the tab's first stream was opening.
    Opening,
    /// Missed while away, and the stream that came back had no id to ask
    /// a replay for.
    NoLastId,
    /// Missed while away, and the replay was read after Redis lost it.
    RedisRestart,
}

fn judge(m: &SendRec, tab: &Tab, redis_down: Instant) -> Verdict {
    let first = &tab.sessions[0];
    if m.done < first.req {
        return Verdict::Before;
    }
    if m.start < first.est {
        return Verdict::Opening;
    }
    let live = tab
        .sessions
        .iter()
        .any(|s| s.est <= m.start && s.end >= m.done + LIVE_MARGIN);
    if live {
        return Verdict::Expected;
    }
    match tab.sessions.iter().find(|s| s.est > m.start) {
        Some(s) if s.last_event_id.is_none() => Verdict::NoLastId,
        Some(s) if m.start < redis_down && s.est >= redis_down => Verdict::RedisRestart,
        _ => Verdict::Expected,
    }
}

/// Milliseconds since `t0`, signed.
fn ms(t0: Instant, t: Instant) -> i64 {
    if t >= t0 {
        t.duration_since(t0).as_millis() as i64
    } else {
        -(t0.duration_since(t).as_millis() as i64)
    }
}

fn describe_send(t0: Instant, m: &SendRec) -> String {
    let to = match m.to {
        To::Everyone => "(broadcast)".to_string(),
        To::User(u) => u.to_string(),
        To::Topic(t) => format!("topic {t}"),
    };
    format!(
        "seq {} id {} to {} via {} sent {}..{} ms",
        m.seq,
        m.id().unwrap_or("-"),
        to,
        m.node,
        ms(t0, m.start),
        ms(t0, m.done)
    )
}

fn describe_sessions(t0: Instant, tab: &Tab, around: Instant) -> String {
    let window = Duration::from_secs(4);
    tab.sessions
        .iter()
        .enumerate()
        .filter(|(_, s)| s.end + window >= around && s.req <= around + window)
        .map(|(i, s)| {
            format!(
                "\n      session {i} on {}: req {} est {} end {} ms{} last-event-id {}",
                s.node,
                ms(t0, s.req),
                ms(t0, s.est),
                ms(t0, s.end),
                if s.closed_by_server {
                    " (closed by the node)"
                } else {
                    ""
                },
                s.last_event_id.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

#[derive(Default)]
struct Totals {
    expected: usize,
    received: usize,
    extra: usize,
    duplicated: usize,
    missing: usize,
    excused_redis: usize,
    excused_no_id: usize,
    gaps: usize,
    reconnects: usize,
    out_of_order: usize,
}

// ----------------------------------------------------------------- test

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_three_nodes_random_tabs_node_restart_and_redis_restart() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("chaos: seed {seed} (CHAOS_SEED to replay the same choices)");

    let redis = RedisServer::start();
    let a = BinaryNode::spawn(&redis.url(), CONFIG).await;
    let b = BinaryNode::spawn(&redis.url(), CONFIG).await;
    // A third node that is never restarted: with targeted delivery, a
    // user's messages go only to the nodes that hold the user's tabs.
    let c = BinaryNode::spawn(&redis.url(), CONFIG).await;
    let as_node = |name: &str, n: &BinaryNode| Node {
        name: name.into(),
        stream: n.stream_url(),
        admin: n.admin_url(""),
    };
    let nodes: Nodes = Arc::new(RwLock::new(vec![
        as_node("A", &a),
        as_node("B", &b),
        as_node("C", &c),
    ]));
    // Every node process, for the panic check and the logs on failure.
    let all_nodes: Arc<Mutex<Vec<(String, BinaryNode)>>> = Arc::new(Mutex::new(Vec::new()));

    let phase = Arc::new(AtomicU8::new(RUN));
    let t0 = Instant::now();
    let tabs: Vec<_> = (0..TABS)
        .map(|i| {
            tokio::spawn(run_tab(
                i,
                USERS[i % USERS.len()],
                TOPICS[i % 3],
                nodes.clone(),
                phase.clone(),
                seed.wrapping_add(i as u64 + 1),
            ))
        })
        .collect();
    let sender = tokio::spawn(run_sender(nodes.clone(), phase.clone(), seed));

    // Restart B: SIGTERM, wait for its exit, start it again (new ports);
    // tabs and the sender find it gone meanwhile, then back.
    tokio::time::sleep_until((t0 + RESTART_B_AT).into()).await;
    let b_term = Instant::now();
    b.signal(15);
    let (b, code) = tokio::task::spawn_blocking(move || {
        let mut b = b;
        let code = b.wait_exit(Duration::from_secs(10));
        (b, code)
    })
    .await
    .unwrap();
    let b_exited = Instant::now();
    assert_eq!(code, Some(0), "B exits 0 on SIGTERM; log:\n{}", b.log());
    let b2 = BinaryNode::spawn(&redis.url(), CONFIG).await;
    let b2_up = Instant::now();
    {
        let mut list = nodes.write().unwrap();
        list.retain(|n| n.name != "B");
        list.push(as_node("B2", &b2));
    }
    all_nodes
        .lock()
        .unwrap()
        .push(("B (before restart)".into(), b));

    // Redis: killed, down for a while, started again empty on its port.
    tokio::time::sleep_until((t0 + REDIS_DOWN_AT).into()).await;
    let redis_down = Instant::now();
    let redis = tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        redis.kill();
        redis
    })
    .await
    .unwrap();
    tokio::time::sleep(REDIS_OUTAGE).await;
    let redis = tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let redis_up = Instant::now();

    tokio::time::sleep_until((t0 + STOP_SENDS_AT).into()).await;
    phase.store(SETTLING, Ordering::SeqCst);
    let sends = sender.await.unwrap();
    let last_send = Instant::now();
    tokio::time::sleep(SETTLE).await;
    phase.store(FINISH, Ordering::SeqCst);
    let mut tabs_done = Vec::new();
    for t in tabs {
        tabs_done.push(
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("tab ends")
                .unwrap(),
        );
    }
    let finished = Instant::now();
    {
        let mut all = all_nodes.lock().unwrap();
        all.push(("A".into(), a));
        all.push(("B2".into(), b2));
        all.push(("C".into(), c));
    }
    drop(redis);

    // ------------------------------------------------------- the counts
    let accepted: Vec<&SendRec> = sends.iter().filter(|m| m.id().is_some()).collect();
    let by_id: HashMap<&str, &SendRec> = accepted.iter().map(|m| (m.id().unwrap(), *m)).collect();
    let by_seq: HashMap<u64, &SendRec> = sends.iter().map(|m| (m.seq, m)).collect();
    let first_ok_after_redis = accepted
        .iter()
        .find(|m| m.start >= redis_down)
        .map(|m| ms(t0, m.done));
    let count = |f: &dyn Fn(&Outcome) -> bool| sends.iter().filter(|m| f(&m.outcome)).count();
    let refused = count(&|o| matches!(o, Outcome::Refused));
    let status_503 = count(&|o| matches!(o, Outcome::Status(503, _)));
    let other_status = count(&|o| matches!(o, Outcome::Status(s, _) if *s != 503));
    let errors = count(&|o| matches!(o, Outcome::Error(_)));

    println!(
        "chaos: timeline (ms): B SIGTERM {} exited {} B2 up {}; Redis killed {} back {} \
         (first send accepted after it {}); sends stopped {} tabs finished {}",
        ms(t0, b_term),
        ms(t0, b_exited),
        ms(t0, b2_up),
        ms(t0, redis_down),
        ms(t0, redis_up),
        first_ok_after_redis.map_or("never".into(), |t| t.to_string()),
        ms(t0, last_send),
        ms(t0, finished)
    );

    let mut not_taken: BTreeMap<(String, String), (usize, i64, i64)> = BTreeMap::new();
    for m in &sends {
        let kind = match &m.outcome {
            Outcome::Ok(_) => continue,
            Outcome::Refused => "connection refused".to_string(),
            Outcome::Status(s, _) => format!("status {s}"),
            Outcome::Error(_) => "no answer".to_string(),
        };
        let e = not_taken
            .entry((m.node.clone(), kind))
            .or_insert((0, ms(t0, m.start), 0));
        e.0 += 1;
        e.2 = ms(t0, m.done);
    }
    for ((node, kind), (n, from, to)) in &not_taken {
        println!("chaos: sends not taken by {node}: {n} x {kind}, between {from} and {to} ms");
    }

    let mut failures: Vec<String> = Vec::new();
    // Only the test stops a node (B, by SIGTERM at RESTART_B_AT).
    for (name, n) in all_nodes.lock().unwrap().iter_mut() {
        if name == "B (before restart)" {
            continue;
        }
        if let Ok(Some(status)) = n.child.try_wait() {
            failures.push(format!(
                "node {name} exited during the run ({status}) though the test did not stop it"
            ));
        }
    }
    let mut totals = Totals::default();
    for tab in &tabs_done {
        let name = format!("tab {} ({}, {})", tab.index, tab.user, tab.topic);
        if tab.sessions.is_empty() {
            failures.push(format!("{name}: never connected: {:?}", tab.failed_opens));
            continue;
        }
        if !tab.settled {
            failures.push(format!("{name}: not connected at the end"));
        }
        for o in &tab.other {
            failures.push(format!("{name}: unexpected event {o}"));
        }
        let mut times: BTreeMap<&str, Vec<&Got>> = BTreeMap::new();
        for g in &tab.got {
            times.entry(g.id.as_str()).or_default().push(g);
        }
        let mut expected = 0;
        let mut received = 0;
        let mut extra = 0;
        let mut excused_redis = 0;
        let mut excused_no_id = 0;
        let mut missing = Vec::new();
        for m in &accepted {
            let id = m.id().unwrap();
            let got = times.contains_key(id);
            let addressed = match m.to {
                To::Everyone => true,
                To::User(u) => u == tab.user,
                To::Topic(t) => t == tab.topic,
            };
            if !addressed {
                if got {
                    failures.push(format!(
                        "{name}: received a message for another user or topic: {}",
                        describe_send(t0, m)
                    ));
                }
                continue;
            }
            match judge(m, tab, redis_down) {
                Verdict::Expected => {
                    expected += 1;
                    if got {
                        received += 1;
                    } else {
                        missing.push(*m);
                    }
                }
                Verdict::Before => {
                    if got {
                        failures.push(format!(
                            "{name}: received a message sent before it first connected: {}",
                            describe_send(t0, m)
                        ));
                    }
                }
                v => {
                    if got {
                        extra += 1;
                    }
                    match v {
                        Verdict::RedisRestart if !got => excused_redis += 1,
                        Verdict::NoLastId if !got => excused_no_id += 1,
                        _ => {}
                    }
                }
            }
        }
        // Ids nobody was told about: a message from a failed send?
        for (id, gots) in &times {
            if by_id.contains_key(id) {
                continue;
            }
            let seq = serde_json::from_str::<Value>(&gots[0].data)
                .ok()
                .and_then(|v| v["seq"].as_u64());
            let what = match seq.and_then(|s| by_seq.get(&s)) {
                Some(m) => format!("{:?} {}", m.outcome, describe_send(t0, m)),
                None => "no such send".into(),
            };
            // A send whose response was lost on the way may have gone out.
            let uncertain = seq
                .and_then(|s| by_seq.get(&s))
                .is_some_and(|m| matches!(m.outcome, Outcome::Error(_)));
            if !uncertain {
                failures.push(format!(
                    "{name}: received id {id} ({:?}) that no accepted send returned: {what}",
                    gots[0].data
                ));
            }
        }
        let mut duplicated = 0;
        for (id, gots) in &times {
            if gots.len() > 1 {
                duplicated += gots.len() - 1;
                let m = by_id.get(id).map(|m| describe_send(t0, m));
                let at: Vec<String> = gots
                    .iter()
                    .map(|g| format!("session {} at {} ms", g.session, ms(t0, g.at)))
                    .collect();
                failures.push(format!(
                    "{name}: DUPLICATE {id} x{}: {} received in {}{}",
                    gots.len(),
                    m.unwrap_or_default(),
                    at.join(", "),
                    describe_sessions(t0, tab, gots[0].at)
                ));
            }
        }
        for m in &missing {
            let before: Vec<String> = tab
                .got
                .iter()
                .filter(|g| g.at <= m.done + LIVE_MARGIN * 2 && g.at + LIVE_MARGIN * 2 >= m.start)
                .map(|g| format!("{}@{}(s{})", g.id, ms(t0, g.at), g.session))
                .collect();
            failures.push(format!(
                "{name}: MISSING {}; received around it: [{}]{}",
                describe_send(t0, m),
                before.join(" "),
                describe_sessions(t0, tab, m.start)
            ));
        }
        // Gaps: only after Redis lost the history: on a stream that came
        // back with an id from before, or (once) on a stream that was open
        // while it happened (what Redis had taken but not yet handed to
        // the nodes is gone).
        for (i, (session, data, at)) in tab.gaps.iter().enumerate() {
            let s = &tab.sessions[*session];
            let last_before = s
                .last_event_id
                .as_deref()
                .and_then(|id| by_id.get(id))
                .is_some_and(|m| m.start < redis_down);
            let came_back = s.est >= redis_down && last_before;
            let lived_through = s.est < redis_down
                && *at >= redis_down
                && !tab.gaps[..i].iter().any(|(other, _, _)| other == session);
            if !(came_back || lived_through) {
                failures.push(format!(
                    "{name}: history_gap {data} in session {session} not caused by the Redis restart{}",
                    describe_sessions(t0, tab, s.est)
                ));
            }
        }
        // Within one stream, ids come in order (Last-Event-ID relies on it).
        let mut out_of_order = 0;
        for w in tab.got.windows(2) {
            if w[0].session == w[1].session && id_key(&w[1].id) <= id_key(&w[0].id) {
                out_of_order += 1;
                failures.push(format!(
                    "{name}: OUT OF ORDER in session {}: {} at {} ms then {} at {} ms",
                    w[0].session,
                    w[0].id,
                    ms(t0, w[0].at),
                    w[1].id,
                    ms(t0, w[1].at)
                ));
            }
        }
        let reconnects = tab.sessions.len() - 1;
        let closed = tab.sessions.iter().filter(|s| s.closed_by_server).count();
        println!(
            "chaos: {name}: sessions {} (closed by a node {closed}, failed opens {}) \
             expected {expected} received {received} duplicated {duplicated} missing {} \
             (also received {extra} not required; excused: redis restart {excused_redis}, \
             no last id {excused_no_id}; history_gaps {}; out of order {out_of_order})",
            tab.sessions.len(),
            tab.failed_opens.len(),
            missing.len(),
            tab.gaps.len(),
        );
        totals.expected += expected;
        totals.received += received;
        totals.extra += extra;
        totals.duplicated += duplicated;
        totals.missing += missing.len();
        totals.excused_redis += excused_redis;
        totals.excused_no_id += excused_no_id;
        totals.gaps += tab.gaps.len();
        totals.reconnects += reconnects;
        totals.out_of_order += out_of_order;
    }
    for m in &sends {
        if let Outcome::Error(e) = &m.outcome {
            println!(
                "chaos: send without an answer: {e} ({})",
                describe_send(t0, m)
            );
        }
    }
    println!(
        "chaos: expected {} received {} duplicated {} missing {} (sends ok {}, refused {} \
         [connection refused {refused}, 503 {status_503}, other status {other_status}, \
         errors {errors}]; reconnects {}; history_gaps {}; excused by the Redis restart {}, \
         by no last id {}; received beyond what was required {}; out of order {})",
        totals.expected,
        totals.received,
        totals.duplicated,
        totals.missing,
        accepted.len(),
        refused + status_503 + other_status + errors,
        totals.reconnects,
        totals.gaps,
        totals.excused_redis,
        totals.excused_no_id,
        totals.extra,
        totals.out_of_order,
    );

    for m in &sends {
        if let Outcome::Status(s, body) = &m.outcome {
            if *s != 503 {
                failures.push(format!(
                    "send answered {s}: {body} ({})",
                    describe_send(t0, m)
                ));
            }
        }
    }
    let mut all = all_nodes.lock().unwrap();
    for (name, n) in all.iter() {
        if n.log().contains("panicked") {
            failures.push(format!("node {name} panicked; log:\n{}", n.log()));
        }
    }
    // Enough chaos actually happened for the run to mean something.
    if accepted.len() < 300 || totals.reconnects < 30 || totals.expected < 1000 {
        failures.push(format!(
            "too little traffic: {} sends accepted, {} reconnects, {} expected deliveries",
            accepted.len(),
            totals.reconnects,
            totals.expected
        ));
    }
    if !accepted.iter().any(|m| m.start > redis_up) {
        failures.push("no send was accepted after Redis came back".into());
    }
    if !failures.is_empty() {
        for (name, n) in all.iter_mut() {
            let state = match n.child.try_wait() {
                Ok(Some(status)) => format!("exited: {status}"),
                Ok(None) => "running".to_string(),
                Err(e) => format!("unknown: {e}"),
            };
            let log = n.log();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            eprintln!(
                "--- node {name} ({state}), last lines of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            let notable: Vec<String> = n
                .log()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(String::from)
                .collect();
            eprintln!(
                "--- warnings and errors of node {name}:\n{}",
                notable.join("\n")
            );
        }
        panic!(
            "chaos: {} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}
