//! A real browser: headless Chromium (Debian's `chromium`, driven by
//! `playwright-core` from `tests/browser/run.mjs`) opens a page served from
//! another origin than the daemon's public listener; the page holds two
//! `EventSource`s (two tabs of one user) to the real binary, with
//! `stream.cors_origins` listing the page's origin.
//!
//! Checked: each EventSource gets its own `connection_id`; `all_connections`
//! true reaches both, false exactly one (the oldest); a broadcast both; an
//! origin that is not listed gets no stream; after `DELETE
//! connections/alice/` closes both streams the browser reconnects by itself
//! after `retry:` ms, sends `Last-Event-ID`, and receives the message sent
//! while it was away exactly once, without anything it had already seen.
//!
//! Needs node, `npm ci --prefix tests/browser` and Chromium (`CHROMIUM` or
//! /usr/bin/chromium); `.ci/run` installs them. Without them the test fails.
#[path = "clients/child.rs"]
mod child;
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use child::{browser_tools, JsonChild};
use common::*;
use serde_json::{json, Value};

const TIME_LIMIT: Duration = Duration::from_secs(60);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A static file server for the page, on its own loopback port (so its
/// origin differs from the daemon's).
struct PageServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    fn start() -> PageServer {
        let page = std::fs::read(root().join("tests/browser/page.html")).expect("page.html");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, st) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                    line.clear();
                }
                count.fetch_add(1, Ordering::SeqCst);
                let response = if request.starts_with("GET /page.html") {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                        page.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&page);
                    r
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                };
                let _ = conn.write_all(&response);
            }
        });
        PageServer {
            port,
            requests,
            stop,
        }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn page_url(&self, stream: &str, tabs: &str, events: &str) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        format!(
            "{}/page.html?stream={}&tabs={}&events={}",
            self.origin(),
            enc(stream),
            enc(tabs),
            enc(events)
        )
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The events one EventSource (page, tab) reported, of `kind`.
fn of<'a>(seen: &'a [Value], page: u64, tab: &str, kind: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|v| v["page"] == page && v["tab"] == tab && v["type"] == kind)
        .collect()
}

/// The event names the test sends messages under.
const MESSAGE_EVENTS: [&str; 3] = ["message", "note.first", "announcement"];

/// How many times (page, tab) got the message with this SSE id. (An event
/// without an `id:` line, such as `connection_established`, carries the
/// EventSource's previous last event id: only message events are counted.)
fn count_id(seen: &[Value], page: u64, tab: &str, id: &str) -> usize {
    seen.iter()
        .filter(|v| v["page"] == page && v["tab"] == tab && v["lastEventId"] == id)
        .filter(|v| MESSAGE_EVENTS.iter().any(|e| v["type"] == *e))
        .count()
}

/// GET of an admin path; a transport error panics with the daemon's log.
async fn admin_get(node: &BinaryNode, path: &str) -> Value {
    let resp = http()
        .get(node.admin_url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n--- sse-notify log\n{}", node.log()));
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("JSON answer");
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn alice_connections(node: &BinaryNode) -> Vec<String> {
    admin_get(node, "/notifications/connections/alice/").await["data"]["connection_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

async fn user_count(node: &BinaryNode, user: &str) -> u64 {
    admin_get(node, &format!("/notifications/connections/{user}/")).await["data"]
        ["connection_count"]
        .as_u64()
        .unwrap()
}

const TABS: [&str; 2] = ["A", "B"];

#[tokio::test(flavor = "multi_thread")]
async fn chromium_eventsources_cross_origin_reconnect_and_replay() {
    let chromium = browser_tools();
    tokio::time::timeout(TIME_LIMIT + Duration::from_secs(15), scenario(chromium))
        .await
        .expect("the browser test did not finish within its time limit");
}

/// Redis, the page servers, the daemon (auth none, `retry: 500`, the first
/// page server's origin in `cors_origins`) and the browser with page 0:
/// tabs A and B as alice (and, with `denied_page`, page 1 from an unlisted
/// origin: tab X as mallory), once both of alice's tabs are connected.
struct Setup {
    br: JsonChild,
    node: BinaryNode,
    allowed: PageServer,
    _denied: PageServer,
    _redis: RedisServer,
}

impl Setup {
    async fn start(chromium: &Path, denied_page: bool) -> Setup {
        let redis = RedisServer::start();
        let allowed = PageServer::start();
        let denied = PageServer::start(); // another port: another origin, not listed
        let node = BinaryNode::spawn(
            &redis.url(),
            &format!(
                "[stream]\nretry_ms = 500\nheartbeat_secs = 1\ncors_origins = [\"{}\"]\n\n\
                 [auth]\nmode = \"none\"\n",
                allowed.origin()
            ),
        )
        .await;
        let stream = node.stream_url();
        let mut pages = vec![allowed.page_url(
            &format!("{stream}?user=alice"),
            "A,B",
            "note.first,announcement",
        )];
        if denied_page {
            pages.push(denied.page_url(&format!("{stream}?user=mallory"), "X", ""));
        }
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(root().join("tests/browser/run.mjs"))
            .args(&pages)
            .current_dir(root())
            .env("CHROMIUM", chromium);
        let mut br = JsonChild::spawn("node tests/browser/run.mjs (Chromium)", cmd, TIME_LIMIT);
        let up = br
            .wait_until(Duration::from_secs(30), |s| {
                s.iter().any(|v| v["type"] == "fatal")
                    || TABS
                        .iter()
                        .all(|t| !of(s, 0, t, "connection_established").is_empty())
            })
            .await;
        br.assert_no_fatal();
        assert!(
            up,
            "the two EventSources did not connect\n{}\n--- sse-notify log\n{}",
            br.report(),
            node.log()
        );
        Setup {
            br,
            node,
            allowed,
            _denied: denied,
            _redis: redis,
        }
    }
}

async fn scenario(chromium: PathBuf) {
    // (Every field bound: an unbound one would be dropped here, Redis too.)
    let Setup {
        mut br,
        node,
        allowed,
        _denied,
        _redis,
    } = Setup::start(&chromium, true).await;
    let logs = |br: &JsonChild| format!("{}\n--- sse-notify log\n{}", br.report(), node.log());

    // Both tabs connected, each with its own connection id.
    let mut first_ids = HashMap::new();
    for tab in TABS {
        let est = of(&br.seen, 0, tab, "connection_established");
        assert_eq!(est.len(), 1, "tab {tab}\n{}", logs(&br));
        let data = &est[0]["parsed"];
        assert_eq!(data["username"], "alice", "{}", logs(&br));
        assert_eq!(est[0]["lastEventId"], "", "control events carry no id");
        let id = data["connection_id"].as_str().unwrap().to_string();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        first_ids.insert(tab, id);
        assert!(!of(&br.seen, 0, tab, "open").is_empty(), "onopen of {tab}");
    }
    assert_ne!(
        first_ids["A"], first_ids["B"],
        "one connection_id per EventSource"
    );
    let mut registered = alice_connections(&node).await;
    let oldest = registered[0].clone();
    registered.sort();
    let mut expected: Vec<String> = first_ids.values().cloned().collect();
    expected.sort();
    assert_eq!(registered, expected, "the registry holds the two tabs");

    // The origin that is not listed: no CORS headers, so the browser fails
    // the EventSource (CLOSED) and the page never sees a frame.
    let refused = br
        .wait_until(Duration::from_secs(10), |s| {
            of(s, 1, "X", "error").iter().any(|e| e["readyState"] == 2)
        })
        .await;
    assert!(
        refused,
        "an unlisted origin's EventSource was not failed\n{}",
        logs(&br)
    );
    assert!(of(&br.seen, 1, "X", "connection_established").is_empty());
    assert!(of(&br.seen, 1, "X", "open").is_empty());
    // ... and the request the browser dropped leaves no record behind. (Not
    // at once: Chromium reads a refused response's body for up to 5 s, to
    // reuse the connection, before it closes it.)
    let refused_at = Instant::now();
    let gone = eventually(Duration::from_secs(15), || async {
        user_count(&node, "mallory").await == 0
    })
    .await;
    assert!(gone, "mallory's refused stream left records\n{}", logs(&br));
    println!(
        "refused origin: its stream's records were gone {:?} after the page saw the error",
        refused_at.elapsed()
    );

    // 1. all_connections: true reaches both tabs, once each, intact.
    let text = json!({"n": 1, "text": "línea 1\nlínea 2 ✓ 日本 😀", "quote": "\"</script>"});
    let (status, body) = send(
        &node.admin_url(""),
        json!({"to": "alice", "data": text, "all_connections": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 2, "{body}");
    let all_id = body["data"]["message_id"].as_str().unwrap().to_string();
    let ok = br
        .wait_until(Duration::from_secs(5), |s| {
            TABS.iter().all(|t| count_id(s, 0, t, &all_id) >= 1)
        })
        .await;
    assert!(
        ok,
        "all_connections message not in both tabs\n{}",
        logs(&br)
    );

    // 2. all_connections: false reaches exactly one tab, the oldest.
    let (status, body) = send(
        &node.admin_url(""),
        json!({"to": "alice", "event": "note.first", "data": {"n": 2}, "all_connections": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 1, "{body}");
    let first_only_id = body["data"]["message_id"].as_str().unwrap().to_string();
    let ok = br
        .wait_until(Duration::from_secs(5), |s| {
            TABS.iter().any(|t| count_id(s, 0, t, &first_only_id) >= 1)
        })
        .await;
    assert!(
        ok,
        "all_connections=false message not received\n{}",
        logs(&br)
    );

    // 3. A broadcast reaches both.
    let (status, body) = send(
        &node.admin_url(""),
        json!({"event": "announcement", "data": {"n": 3, "all": "🎉"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let broadcast_id = body["data"]["message_id"].as_str().unwrap().to_string();
    let ok = br
        .wait_until(Duration::from_secs(5), |s| {
            TABS.iter().all(|t| count_id(s, 0, t, &broadcast_id) >= 1)
        })
        .await;
    assert!(ok, "broadcast not in both tabs\n{}", logs(&br));
    br.settle(Duration::from_millis(500)).await; // time for any duplicate

    for tab in TABS {
        assert_eq!(
            count_id(&br.seen, 0, tab, &all_id),
            1,
            "tab {tab}\n{}",
            logs(&br)
        );
        assert_eq!(count_id(&br.seen, 0, tab, &broadcast_id), 1, "tab {tab}");
        let msg = of(&br.seen, 0, tab, "message");
        assert_eq!(msg.len(), 1, "tab {tab}: {msg:?}");
        assert_eq!(msg[0]["parsed"], text, "tab {tab}: decoded data");
        let ann = of(&br.seen, 0, tab, "announcement");
        assert_eq!(ann[0]["parsed"], json!({"n": 3, "all": "🎉"}));
    }
    let got_first: Vec<&str> = TABS
        .iter()
        .copied()
        .filter(|t| count_id(&br.seen, 0, t, &first_only_id) > 0)
        .collect();
    assert_eq!(got_first.len(), 1, "exactly one tab: {got_first:?}");
    assert_eq!(count_id(&br.seen, 0, got_first[0], &first_only_id), 1);
    assert_eq!(
        first_ids[got_first[0]], oldest,
        "all_connections=false went to tab {} but the oldest connection is {oldest}",
        got_first[0]
    );
    assert_eq!(
        of(&br.seen, 0, got_first[0], "note.first")[0]["parsed"],
        json!({"n": 2})
    );

    // 4. The daemon closes both streams (logout); a message is sent while
    // the browser is away (before its retry of 500 ms).
    let errors_before: HashMap<&str, usize> = TABS
        .iter()
        .map(|t| (*t, of(&br.seen, 0, t, "error").len()))
        .collect();
    let deleted_at = Instant::now();
    let (status, body) = admin(
        reqwest::Method::DELETE,
        &node.admin_url("/notifications/connections/alice/"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connection_count"], 2, "{body}");
    let missed = json!({"missed": "while away ✓", "lines": "a\nb\r\nc"});
    let (status, body) = send(
        &node.admin_url(""),
        json!({"to": "alice", "data": missed, "all_connections": true}),
    )
    .await;
    let sent_after = deleted_at.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["connections"], 0,
        "the message must be sent while no tab is connected (it took {sent_after:?}): {body}"
    );
    let missed_id = body["data"]["message_id"].as_str().unwrap().to_string();

    // The browser reconnects by itself (after `retry: 500`) and gets it.
    let back = br
        .wait_until(Duration::from_secs(15), |s| {
            TABS.iter().all(|t| {
                of(s, 0, t, "connection_established").len() >= 2
                    && count_id(s, 0, t, &missed_id) >= 1
            })
        })
        .await;
    let reconnected_after = deleted_at.elapsed();
    assert!(
        back,
        "the browser did not reconnect and receive the missed message\n{}",
        logs(&br)
    );
    br.settle(Duration::from_millis(1000)).await; // time for any duplicate

    let mut second_ids = Vec::new();
    for tab in TABS {
        // The stream end was seen as an error with the EventSource still
        // CONNECTING (it retries), not CLOSED.
        let errors = of(&br.seen, 0, tab, "error");
        assert!(
            errors.len() > errors_before[tab],
            "tab {tab}: no error event"
        );
        assert!(
            errors[errors_before[tab]..]
                .iter()
                .all(|e| e["readyState"] == 0),
            "tab {tab}: the EventSource closed instead of reconnecting\n{}",
            logs(&br)
        );
        let est = of(&br.seen, 0, tab, "connection_established");
        assert_eq!(est.len(), 2, "tab {tab}: one reconnection\n{}", logs(&br));
        // The browser's last event id when it reconnected, which it sends
        // as Last-Event-ID, was the broadcast's, the last message it had.
        assert_eq!(est[1]["lastEventId"], broadcast_id.as_str(), "tab {tab}");
        let id = est[1]["parsed"]["connection_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(id, first_ids[tab], "a new connection id after reconnecting");
        second_ids.push(id);
        // The missed message exactly once, with its data intact.
        assert_eq!(
            count_id(&br.seen, 0, tab, &missed_id),
            1,
            "tab {tab}: the missed message must arrive exactly once\n{}",
            logs(&br)
        );
        let replayed = of(&br.seen, 0, tab, "message")
            .into_iter()
            .find(|v| v["lastEventId"] == missed_id.as_str())
            .unwrap();
        assert_eq!(replayed["parsed"], missed, "tab {tab}");
        // It came after the new connection_established: replayed on the new
        // stream (the old one was closed before the send), which the daemon
        // only does for a request carrying Last-Event-ID.
        let pos = |v: &Value| br.seen.iter().position(|x| std::ptr::eq(x, v)).unwrap();
        assert!(pos(replayed) > pos(est[1]), "tab {tab}: replay order");
        // Nothing it had already seen came again (the Last-Event-ID was the
        // broadcast's, the last id the tab had), and no history gap.
        assert_eq!(
            count_id(&br.seen, 0, tab, &all_id),
            1,
            "tab {tab}: replayed twice"
        );
        assert_eq!(count_id(&br.seen, 0, tab, &broadcast_id), 1, "tab {tab}");
        assert!(of(&br.seen, 0, tab, "history_gap").is_empty(), "tab {tab}");
    }
    let first_total: usize = TABS
        .iter()
        .map(|t| count_id(&br.seen, 0, t, &first_only_id))
        .sum();
    assert_eq!(
        first_total, 1,
        "the all_connections=false message was replayed"
    );
    assert_ne!(second_ids[0], second_ids[1]);
    println!(
        "DELETE -> send answered after {sent_after:?}; both tabs reconnected and replayed within {reconnected_after:?}"
    );
    assert!(
        reconnected_after >= Duration::from_millis(400),
        "the browser reconnected after {reconnected_after:?}: retry: 500 not honoured?"
    );
    let mut registered = alice_connections(&node).await;
    registered.sort();
    second_ids.sort();
    assert_eq!(
        registered, second_ids,
        "the registry holds the new tabs only"
    );

    // 5. Live delivery goes on after the reconnection, once per tab.
    let (_, body) = send(
        &node.admin_url(""),
        json!({"to": "alice", "data": {"n": 5}}),
    )
    .await;
    let live_id = body["data"]["message_id"].as_str().unwrap().to_string();
    let ok = br
        .wait_until(Duration::from_secs(5), |s| {
            TABS.iter().all(|t| count_id(s, 0, t, &live_id) >= 1)
        })
        .await;
    assert!(ok, "live message after reconnect\n{}", logs(&br));
    br.settle(Duration::from_millis(500)).await;
    for tab in TABS {
        assert_eq!(count_id(&br.seen, 0, tab, &live_id), 1, "tab {tab}");
    }
    assert!(
        !br.seen.iter().any(|v| v["type"] == "pageerror"),
        "{}",
        logs(&br)
    );
    assert!(allowed.requests.load(Ordering::SeqCst) >= 1);

    // The browser closes: its streams' records go at once.
    let status = br.finish(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "run.mjs exit: {status:?}\n{}",
        logs(&br)
    );
    let gone = eventually(Duration::from_secs(5), || async {
        alice_connections(&node).await.is_empty()
    })
    .await;
    assert!(gone, "records left after the browser closed\n{}", logs(&br));
}

/// Sends to alice; returns the message id.
async fn send_alice(node: &BinaryNode, body: Value) -> String {
    let (status, resp) = send(&node.admin_url(""), body).await;
    assert_eq!(status, 200, "{resp}");
    resp["data"]["message_id"].as_str().unwrap().to_string()
}

/// Arms the browser to hold the next request of `tab`'s EventSource (its
/// reconnection) for `ms` (0: just watch it), and waits until it is armed.
async fn delay_next_request(br: &mut JsonChild, tab: &str, ms: u64) {
    let armed = br
        .seen
        .iter()
        .filter(|v| v["type"] == "armed" && v["tab"] == tab)
        .count();
    br.command(&json!({"page": 0, "delay": {"tab": tab, "ms": ms}}).to_string())
        .await;
    let ok = br
        .wait_until(Duration::from_secs(5), |s| {
            s.iter().any(|v| v["type"] == "fatal")
                || s.iter()
                    .filter(|v| v["type"] == "armed" && v["tab"] == tab)
                    .count()
                    > armed
        })
        .await;
    br.assert_no_fatal();
    assert!(ok, "delay of tab {tab} not armed\n{}", br.report());
}

/// How many requests of `tab` the browser held back (see
/// [`delay_next_request`]).
fn delayed_requests(seen: &[Value], tab: &str) -> usize {
    seen.iter()
        .filter(|v| v["type"] == "delayed" && v["tab"] == tab)
        .count()
}

/// A message for one tab (`all_connections: false`) reaches one of alice's
/// two tabs live; then the daemon closes both streams and both tabs come
/// back on their own, each with its own Last-Event-ID (the other tab's is
/// older than that message). The user must not see the message a second
/// time, in the other tab. Which tab the daemon registers first decides it,
/// so the browser is made to hold back one tab's reconnection: round 1 the
/// tab that showed the message (the other comes back first), round 2 the
/// other one.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_one_tab_message_not_shown_twice_after_reconnect() {
    let chromium = browser_tools();
    tokio::time::timeout(TIME_LIMIT + Duration::from_secs(15), async {
        let Setup {
            mut br,
            node,
            allowed: _allowed,
            _denied,
            _redis,
        } = Setup::start(&chromium, false).await;
        let logs =
            |br: &JsonChild| format!("{}\n--- sse-notify log\n{}", br.report(), node.log());
        let mut failures = Vec::new();
        for round in 1..=2 {
            // Both tabs have an id; then one tab gets a one-tab message.
            let both = send_alice(&node, json!({"to": "alice", "data": {"round": round}})).await;
            let one = send_alice(
                &node,
                json!({"to": "alice", "event": "note.first", "data": {"round": round},
                       "all_connections": false}),
            )
            .await;
            let ok = br
                .wait_until(Duration::from_secs(5), |s| {
                    TABS.iter().all(|t| count_id(s, 0, t, &both) == 1)
                        && TABS.iter().any(|t| count_id(s, 0, t, &one) == 1)
                })
                .await;
            assert!(ok, "round {round}: live delivery\n{}", logs(&br));
            let shown_in = *TABS
                .iter()
                .find(|t| count_id(&br.seen, 0, t, &one) == 1)
                .unwrap();
            let other = *TABS.iter().find(|t| **t != shown_in).unwrap();
            let (held, first_back) = if round == 1 {
                (shown_in, other)
            } else {
                (other, shown_in)
            };
            delay_next_request(&mut br, held, 1500).await;

            let established = |s: &[Value]| -> usize {
                TABS.iter()
                    .map(|t| of(s, 0, t, "connection_established").len())
                    .sum()
            };
            let before = established(&br.seen);
            let (status, body) = admin(
                reqwest::Method::DELETE,
                &node.admin_url("/notifications/connections/alice/"),
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            let back = br
                .wait_until(Duration::from_secs(10), |s| established(s) == before + 2)
                .await;
            assert!(back, "round {round}: the tabs did not come back\n{}", logs(&br));
            br.settle(Duration::from_millis(500)).await;
            assert_eq!(
                delayed_requests(&br.seen, held),
                round,
                "round {round}: tab {held}'s reconnection was not held back\n{}",
                logs(&br)
            );
            let shown: Vec<(&str, usize)> = TABS
                .iter()
                .map(|t| (*t, count_id(&br.seen, 0, t, &one)))
                .collect();
            println!(
                "round {round}: one-tab message {one} shown live in tab {shown_in}; tab {first_back} \
                 came back first; shown per tab now: {shown:?}"
            );
            if shown.iter().map(|(_, n)| n).sum::<usize>() != 1 {
                failures.push(format!(
                    "round {round}: the all_connections=false message {one}, shown live in tab \
                     {shown_in}, was replayed to tab {other} (its Last-Event-ID {both} is older) \
                     when that tab came back first: shown per tab {shown:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), logs(&br));
    })
    .await
    .expect("the browser test did not finish within its time limit");
}
