//! sse-notify behind a real nginx configured from `etc/nginx/sse-notify.conf`:
//! identity from `auth_request`, a client-supplied `X-Remote-User` replaced,
//! frames passed on at once, records gone when the browser goes.
//!
//! The nginx config is not written by hand here: the stream location, the
//! auth location and the two upstreams are cut out of the shipped example and
//! only the upstream addresses are rewritten (to the daemon's public port and
//! to a stand-in for the Django auth view), so the test checks the example a
//! sysadmin copies. nginx is required: without it the test fails (CI installs
//! it in `.ci/run`).
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// A stand-in for the Django auth view: 200 with X-Remote-User for a known
// session cookie, 401 otherwise.

const UNICODE_USER: &str = "zoë 日本";

struct FakeAuth {
    addr: SocketAddr,
    /// The headers of every request it got (names lowercased).
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAuth {
    fn start() -> FakeAuth {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    let _ = Self::answer(conn, &s);
                }
            }
        });
        FakeAuth {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn answer(conn: TcpStream, seen: &Mutex<Vec<HashMap<String, String>>>) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut headers = HashMap::new();
        let mut line = String::new();
        reader.read_line(&mut line)?; // request line
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let session = headers
            .get("cookie")
            .into_iter()
            .flat_map(|c| c.split(';'))
            .filter_map(|kv| kv.trim().strip_prefix("sessionid="))
            .next()
            .map(str::to_string);
        seen.lock().unwrap().push(headers);
        let user = match session.as_deref() {
            Some("good") => Some(Some("alice")),
            Some("unicode") => Some(Some(UNICODE_USER)),
            Some("anonymous") => Some(None), // 200 but no username
            _ => None,
        };
        // The topics the app lets alice follow; the others get none.
        let topics = if user == Some(Some("alice")) {
            "X-Remote-Topics: doc:*, team:7\r\n"
        } else {
            ""
        };
        let mut conn = conn;
        let response = match user {
            Some(Some(name)) => format!(
                "HTTP/1.1 200 OK\r\nX-Remote-User: {name}\r\n{topics}Content-Length: 0\r\nConnection: close\r\n\r\n"
            ),
            Some(None) => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            None => "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .into(),
        };
        // Raw UTF-8 in the header value, as a WSGI server writes it.
        conn.write_all(response.as_bytes())
    }
}

impl Drop for FakeAuth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------

/// Opens the stream through nginx; returns it with the parsed
/// `connection_established` data.
async fn open_as(
    url: &str,
    headers: &[(&str, &str)],
    logs: &dyn Fn() -> String,
) -> (SseClient, Value) {
    let mut tab = SseClient::open(url, headers).await;
    assert_eq!(
        tab.status,
        200,
        "stream through nginx with {headers:?}\n{}",
        logs()
    );
    assert_eq!(tab.headers["content-type"], "text/event-stream");
    let ev = tab
        .next_event(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no first event through nginx\n{}", logs()));
    assert_eq!(ev.event, "connection_established");
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    (tab, data)
}

async fn status_of(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send()
        .await
        .expect("request through nginx")
        .status()
        .as_u16()
}

async fn user_connections(node: &BinaryNode, user: &str) -> Vec<String> {
    let path = format!(
        "/notifications/connections/{}/",
        percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, body) = admin(reqwest::Method::GET, &node.admin_url(&path), None).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["connection_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_behind_nginx_with_auth_request() {
    let _ = nginx_binary(); // fail first and clearly when nginx is missing
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), "").await; // auth.mode = "header"
    let auth = FakeAuth::start();
    let nginx = Nginx::start(node.public, auth.addr);
    let logs = || format!("{}\n--- sse-notify log\n{}", nginx.logs(), node.log());
    let url = nginx.url("/notifications/stream/");

    // Logged in: the stream opens as the user the auth view named.
    let (mut tab, established) = open_as(&url, &[("Cookie", "sessionid=good")], &logs).await;
    assert_eq!(established["username"], "alice", "{}", logs());
    let alice_id = established["connection_id"].as_str().unwrap().to_string();
    assert_eq!(user_connections(&node, "alice").await, vec![alice_id]);

    // A message sent through the admin API comes through nginx at once
    // (nothing buffers it): well under 100 ms from the send's answer.
    for n in 0..5 {
        let started = Instant::now();
        let (status, body) = send(
            &node.admin_url(""),
            json!({"to": "alice", "data": {"n": n}}),
        )
        .await;
        let answered = Instant::now();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["connections"], 1);
        let ev = tab
            .next_named("message", Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("message {n} did not come through nginx\n{}", logs()));
        let after_answer = answered.elapsed();
        assert_eq!(ev.data, format!(r#"{{"n":{n}}}"#));
        assert_eq!(ev.id, body["data"]["message_id"].as_str().unwrap());
        println!(
            "message {n}: {:?} after the send's answer, {:?} after the send started",
            after_answer,
            started.elapsed()
        );
        assert!(
            after_answer < Duration::from_millis(100),
            "message {n} took {after_answer:?} through nginx after the send answered"
        );
        // Send and delivery together: far from any buffering delay.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "message {n} took {:?} from the send through nginx",
            started.elapsed()
        );
    }

    // Not logged in (no cookie, or a session the app does not know): 401,
    // and no stream is registered.
    assert_eq!(status_of(&url, &[]).await, 401);
    assert_eq!(status_of(&url, &[("Cookie", "sessionid=bad")]).await, 401);
    // A client cannot name itself: without a session its header is not
    // enough...
    assert_eq!(status_of(&url, &[("X-Remote-User", "mallory")]).await, 401);
    // ... and with one, nginx replaces its header with the app's answer.
    let (mut spoofed, established) = open_as(
        &url,
        &[("Cookie", "sessionid=good"), ("X-Remote-User", "mallory")],
        &logs,
    )
    .await;
    assert_eq!(
        established["username"], "alice",
        "client X-Remote-User must be overwritten"
    );
    assert!(user_connections(&node, "mallory").await.is_empty());
    // ... nor does the client's header reach the auth view.
    {
        let seen = auth.seen.lock().unwrap();
        assert!(
            seen.iter()
                .any(|h| h.get("cookie").map(String::as_str) == Some("sessionid=good")),
            "the session cookie reaches the auth view: {seen:?}"
        );
        for h in seen.iter() {
            assert!(
                h.get("x-remote-user").is_none_or(|v| v.is_empty()),
                "a client X-Remote-User reached the auth view: {h:?}"
            );
        }
    }
    // The message to alice reaches both of her tabs, spoofed or not.
    let (_, body) = send(&node.admin_url(""), json!({"to": "alice", "data": "both"})).await;
    assert_eq!(body["data"]["connections"], 2);
    for t in [&mut tab, &mut spoofed] {
        let ev = t
            .next_named("message", Duration::from_secs(5))
            .await
            .expect("message");
        assert_eq!(ev.data, r#""both""#);
    }

    // The app answers 200 without a username: nginx sends no header, the
    // daemon refuses (as the example's comment says).
    let status = status_of(&url, &[("Cookie", "sessionid=anonymous")]).await;
    assert_eq!(status, 401, "{}", logs());

    // A non-ASCII username from the app, as raw UTF-8, arrives intact.
    let (mut zoe, established) = open_as(&url, &[("Cookie", "sessionid=unicode")], &logs).await;
    assert_eq!(established["username"], UNICODE_USER);
    let (_, body) = send(&node.admin_url(""), json!({"to": UNICODE_USER, "data": 1})).await;
    assert_eq!(body["data"]["connections"], 1, "{body}");
    assert_eq!(
        zoe.next_named("message", Duration::from_secs(5))
            .await
            .expect("message")
            .data,
        "1"
    );

    // The browser goes away: nginx drops the upstream connection and the
    // daemon removes the records at once (no zombies behind the proxy).
    drop(tab);
    drop(spoofed);
    drop(zoe);
    let gone = eventually(Duration::from_secs(5), || async {
        user_connections(&node, "alice").await.is_empty()
            && user_connections(&node, UNICODE_USER).await.is_empty()
    })
    .await;
    assert!(gone, "records left after the clients went away\n{}", logs());
}

/// The topics a stream may follow come from the app's answer only: nginx
/// copies its `X-Remote-Topics` and replaces any the client sent, and
/// without one from the app nothing is allowed.
#[tokio::test(flavor = "multi_thread")]
async fn topics_behind_nginx_are_the_ones_the_auth_view_names() {
    let _ = nginx_binary();
    let node = BinaryNode::spawn("", "").await; // embedded engine, header mode
    let auth = FakeAuth::start();
    let nginx = Nginx::start(node.public, auth.addr);
    let logs = || format!("{}\n--- sse-notify log\n{}", nginx.logs(), node.log());
    let url = |topics: &str| nginx.url(&format!("/notifications/stream/?topics={topics}"));
    let refused = |topic: &'static str| {
        let logs = &logs;
        move |status: u16, body: String| {
            assert_eq!(status, 403, "{body}\n{}", logs());
            assert!(body.contains(topic), "the 403 names {topic}: {body}");
        }
    };
    let get = |u: String, headers: Vec<(&'static str, &'static str)>| async move {
        let mut req = http().get(u);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("request through nginx");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    };

    let (mut tab, established) = open_as(
        &url("team:7,doc:42"),
        &[("Cookie", "sessionid=good")],
        &logs,
    )
    .await;
    assert_eq!(established["topics"], json!(["doc:42", "team:7"]));

    // Not granted by the app: refused, whatever the client claims.
    let (status, body) = get(url("team:8"), vec![("Cookie", "sessionid=good")]).await;
    refused("team:8")(status, body);
    let (status, body) = get(
        url("team:8"),
        vec![("Cookie", "sessionid=good"), ("X-Remote-Topics", "*")],
    )
    .await;
    refused("team:8")(status, body);
    let (status, body) = get(
        url("doc:1"),
        vec![("Cookie", "sessionid=unicode"), ("X-Remote-Topics", "*")],
    )
    .await;
    refused("doc:1")(status, body);
    {
        let seen = auth.seen.lock().unwrap();
        for h in seen.iter() {
            assert!(
                h.get("x-remote-topics").is_none_or(|v| v.is_empty()),
                "a client X-Remote-Topics reached the auth view: {h:?}"
            );
        }
    }

    // A topic message comes through nginx to the follower.
    let (status, body) = send(
        &node.admin_url(""),
        json!({"topic": "doc:42", "event": "new_comment", "data": {"id": 7}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["connections"], 1, "{body}");
    let ev = tab
        .next_named("new_comment", Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("the topic message did not come through nginx\n{}", logs()));
    assert_eq!(ev.data, r#"{"id":7}"#);
    assert_eq!(ev.id, body["data"]["message_id"].as_str().unwrap());
}

// ---------------------------------------------------------------------------
// `curl -N` through the same nginx: what a sysadmin types to watch a stream.

/// `curl -N ...` with its stdout read line by line, each line timestamped.
struct Curl {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Curl {
    fn start(args: &[&str]) -> Curl {
        let mut child = Command::new("curl")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("curl is not installed ({e}): `apt-get install curl` (.ci/run does)")
            });
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock()
                    .unwrap()
                    .push((Instant::now(), line.trim_end_matches('\n').to_string()));
                line.clear();
            }
        });
        Curl { child, lines }
    }

    /// When `line` (exactly) first appeared on curl's stdout, waiting at
    /// most `within`.
    fn wait_line(&self, line: &str, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((t, _)) = self.lines.lock().unwrap().iter().find(|(_, l)| l == line) {
                return Some(*t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect()
    }
}

impl Drop for Curl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_n_through_nginx_shows_each_frame_as_it_is_sent() {
    let _ = nginx_binary();
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), "").await; // auth.mode = "header"
    let auth = FakeAuth::start();
    let nginx = Nginx::start(node.public, auth.addr);
    let logs = || format!("{}\n--- sse-notify log\n{}", nginx.logs(), node.log());
    let url = nginx.url("/notifications/stream/");

    // The README's kind of command line, bounded in time.
    let curl = Curl::start(&[
        "-N",
        "-sS",
        "--max-time",
        "60",
        "-H",
        "Cookie: sessionid=good",
        "-H",
        "Accept: text/event-stream",
        &url,
    ]);
    let wait = |line: &'static str| {
        let curl = &curl;
        move || curl.wait_line(line, Duration::from_secs(10))
    };
    let established = tokio::task::block_in_place(wait("event: connection_established"));
    assert!(
        established.is_some(),
        "curl -N saw no connection_established through nginx:\n{}\n{}",
        curl.output(),
        logs()
    );
    assert!(
        curl.output().starts_with("retry: "),
        "first frame: {}",
        curl.output()
    );

    for n in 0..5 {
        let data = json!({"n": n, "text": "línea 1\nlínea 2 ✓"});
        let line = format!("data: {data}");
        let started = Instant::now();
        let (status, body) = send(
            &node.admin_url(""),
            json!({"to": "alice", "event": "tick", "data": data}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["connections"], 1, "{body}");
        let seen = tokio::task::block_in_place(|| curl.wait_line(&line, Duration::from_secs(5)));
        let Some(seen) = seen else {
            panic!(
                "frame {n} not on curl's stdout within 5 s:\n{}\n{}",
                curl.output(),
                logs()
            )
        };
        let took = seen.saturating_duration_since(started);
        println!("curl -N through nginx: frame {n} on stdout {took:?} after the send started");
        assert!(
            took < Duration::from_millis(200),
            "frame {n} took {took:?} to reach curl's stdout through nginx"
        );
        // The whole frame, in order: id, event, data.
        let out = curl.output();
        let id = body["data"]["message_id"].as_str().unwrap();
        assert!(
            out.contains(&format!("id: {id}\nevent: tick\n{line}\n")),
            "frame {n}:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(curl);
    let gone = eventually(Duration::from_secs(5), || async {
        user_connections(&node, "alice").await.is_empty()
    })
    .await;
    assert!(gone, "records left after curl went away\n{}", logs());
}
