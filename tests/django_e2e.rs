//! The whole path, as a site runs it: the example Django site of
//! `clients/python/example` (a login, a page using the package's
//! `sse-notify.js`, a view that notifies) behind a real nginx configured from
//! `etc/nginx/sse-notify.conf` (`auth_request` to the site's auth view),
//! sse-notify behind it, and headless Chromium as the person: logged in with
//! two tabs, both get the view's notification, a first-connection-only one
//! reaches one tab, logging out closes both streams, and an anonymous
//! browser gets the login page and no stream. On both engines.
//!
//! And token mode without nginx: the page's helper fetches short-lived
//! tokens from the site and reopens its stream before each expires, with
//! the last event id, so that messages sent all along arrive exactly once.
//!
//! Needs python3 with Django, nginx, node with `npm ci --prefix
//! tests/browser` and Chromium: `tests/setup.sh` installs them; without them
//! the test fails.
#[path = "clients/child.rs"]
mod child;
mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use child::{browser_tools, JsonChild};
use common::*;
use serde_json::{json, Value};

const TIME_LIMIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "a password for the test";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/example")
}

/// The example site under `manage.py runserver` (threaded), with its own
/// SQLite file and the user alice.
struct Site {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Site {
    fn start(port: u16, env: &[(&str, String)]) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let manage = |args: &[&str], log: &str| -> Command {
            let mut cmd = Command::new("python3");
            cmd.arg("manage.py")
                .args(args)
                .current_dir(example_dir())
                .env(
                    "PYTHONPATH",
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/src"),
                )
                .env("EXAMPLE_DB", dir.path().join("db.sqlite3"))
                .env("PYTHONDONTWRITEBYTECODE", "1")
                .env("PYTHONUNBUFFERED", "1")
                .env_remove("DJANGO_SETTINGS_MODULE")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::null());
            let f = std::fs::File::create(dir.path().join(log)).expect("log");
            cmd.stdout(f.try_clone().expect("log")).stderr(f);
            cmd
        };
        for (args, log) in [
            (&["migrate", "--noinput"][..], "migrate.log"),
            (
                &[
                    "shell",
                    "-c",
                    &format!(
                        "from django.contrib.auth.models import User; \
                         User.objects.create_user('alice', password='{PASSWORD}')"
                    ),
                ][..],
                "user.log",
            ),
        ] {
            let status = manage(args, log)
                .status()
                .expect("python3 must be installed (tests/setup.sh)");
            let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
            assert!(status.success(), "manage.py {args:?}: {status}\n{text}");
        }
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = manage(
            &["runserver", "--noreload", "--insecure", &addr.to_string()],
            "runserver.log",
        )
        .spawn()
        .expect("runserver");
        let mut site = Site { child, addr, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = site.child.try_wait() {
                panic!("runserver exited ({status}):\n{}", site.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "runserver never listened on {addr}:\n{}",
                site.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        site
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runserver.log")).unwrap_or_default()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser, driven by `tests/browser/django_site.mjs`.
struct Browser {
    br: JsonChild,
}

impl Browser {
    async fn start(chromium: &Path) -> Browser {
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/django_site.mjs"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CHROMIUM", chromium);
        let mut br = JsonChild::spawn("node tests/browser/django_site.mjs", cmd, TIME_LIMIT);
        let ready = br
            .wait_until(Duration::from_secs(30), |s| {
                s.iter()
                    .any(|v| v["type"] == "ready" || v["type"] == "fatal")
            })
            .await;
        br.assert_no_fatal();
        assert!(ready, "Chromium did not start\n{}", br.report());
        Browser { br }
    }

    /// Runs one command; its result.
    async fn run(&mut self, cmd: Value) -> Value {
        let done_before = self.dones();
        self.br.command(&cmd.to_string()).await;
        let ok = self
            .br
            .wait_until(Duration::from_secs(30), |s| {
                s.iter().any(|v| v["type"] == "fatal")
                    || s.iter().filter(|v| v["type"] == "done").count() > done_before
            })
            .await;
        self.br.assert_no_fatal();
        assert!(ok, "command {cmd} did not finish\n{}", self.br.report());
        self.br
            .seen
            .iter()
            .rfind(|v| v["type"] == "done")
            .map(|v| v["result"].clone())
            .unwrap_or(Value::Null)
    }

    fn dones(&self) -> usize {
        self.br.seen.iter().filter(|v| v["type"] == "done").count()
    }

    /// What `tab` shows now.
    fn shown(&self, tab: &str) -> Value {
        shown_in(&self.br.seen, tab)
    }

    /// Waits until what `tab` shows satisfies `ok`; panics with `what`.
    async fn wait_shown(&mut self, tab: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let done = self
            .br
            .wait_until(Duration::from_secs(20), |s| ok(&shown_in(s, tab)))
            .await;
        assert!(done, "tab {tab} never showed {what}\n{}", self.br.report());
        self.shown(tab)
    }

    fn report(&self) -> String {
        self.br.report()
    }
}

fn shown_in(seen: &[Value], tab: &str) -> Value {
    seen.iter()
        .rfind(|v| v["type"] == "shown" && v["tab"] == tab)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The notes a tab shows with `text`: their ids.
fn notes(shown: &Value, text: &str) -> Vec<String> {
    shown["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["text"] == text)
        .map(|n| n["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn is_open(shown: &Value) -> bool {
    shown["state"] == "open" && shown["connectionId"].is_string()
}

async fn alice_ids(node: &BinaryNode) -> Vec<String> {
    listed_user(&node.admin_base(), "alice").await["connection_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

on_every_engine! {
    async fn django_site_behind_nginx_in_chromium(env: Env) {
        let chromium = browser_tools();
        let _ = nginx_binary();
        tokio::time::timeout(TIME_LIMIT, header_mode(env, chromium))
            .await
            .expect("the end-to-end test did not finish within its time limit");
    }
}

async fn header_mode(env: Env, chromium: PathBuf) {
    let node = BinaryNode::on(&env, "[stream]\nretry_ms = 500\n").await; // auth.mode = "header"
    let site_port = free_port();
    let nginx = Nginx::start_site(
        node.public,
        format!("127.0.0.1:{site_port}").parse().unwrap(),
    );
    let site = Site::start(
        site_port,
        &[
            ("SSE_NOTIFY_URL", node.admin_url("")),
            ("EXAMPLE_TRUSTED_ORIGINS", nginx.url("")),
        ],
    );
    let mut b = Browser::start(&chromium).await;
    let logs = |b: &Browser| {
        format!(
            "{}\n{}\n--- runserver\n{}\n--- sse-notify\n{}",
            b.report(),
            nginx.logs(),
            site.log(),
            node.log()
        )
    };

    // Alice logs in; her page opens the stream in tab A, then in tab B.
    b.run(json!({"op": "context", "name": "alice"})).await;
    let opened = b
        .run(json!({"op": "open", "context": "alice", "tab": "A", "url": nginx.url("/")}))
        .await;
    assert!(
        opened["url"]
            .as_str()
            .unwrap_or("")
            .contains("/accounts/login/"),
        "the page asks for a login first: {opened}"
    );
    b.run(json!({"op": "login", "tab": "A", "username": "alice", "password": PASSWORD}))
        .await;
    let a = b.wait_shown("A", "an open stream", is_open).await;
    b.run(json!({"op": "open", "context": "alice", "tab": "B", "url": nginx.url("/")}))
        .await;
    let bb = b.wait_shown("B", "an open stream", is_open).await;
    let (a_id, b_id) = (a["connectionId"].clone(), bb["connectionId"].clone());
    assert_ne!(a_id, b_id, "one connection per tab");
    assert_eq!(
        alice_ids(&node).await,
        vec![a_id.as_str().unwrap(), b_id.as_str().unwrap()],
        "the registry holds both tabs, A first\n{}",
        logs(&b)
    );

    // The view notifies: both tabs show it, with the same message id.
    b.run(json!({"op": "click", "tab": "A", "selector": "#notify-all"}))
        .await;
    let all = "to all my tabs";
    let a = b
        .wait_shown("A", "the notification", |s| notes(s, all).len() == 1)
        .await;
    let bb = b
        .wait_shown("B", "the notification", |s| notes(s, all).len() == 1)
        .await;
    assert_eq!(notes(&a, all), notes(&bb, all));

    // First connection only (clicked in B): tab A, the oldest, shows it;
    // B does not, also once a later notification has reached it.
    b.run(json!({"op": "click", "tab": "B", "selector": "#notify-first"}))
        .await;
    let first = "to my first tab";
    b.wait_shown("A", "the first-tab notification", |s| {
        notes(s, first).len() == 1
    })
    .await;
    b.run(json!({"op": "click", "tab": "B", "selector": "#notify-all"}))
        .await;
    let a = b
        .wait_shown("A", "the second notification", |s| notes(s, all).len() == 2)
        .await;
    let bb = b
        .wait_shown("B", "the second notification", |s| notes(s, all).len() == 2)
        .await;
    assert!(
        notes(&bb, first).is_empty(),
        "tab B got the first-tab notification\n{}",
        logs(&b)
    );
    assert_eq!(notes(&a, first).len(), 1);
    assert_eq!(a["notes"].as_array().unwrap().len(), 3, "{a}");

    // An anonymous browser: the login page instead of the page, and nginx
    // refuses it the stream (the auth view answers 401).
    b.run(json!({"op": "context", "name": "anonymous"})).await;
    let opened = b
        .run(json!({"op": "open", "context": "anonymous", "tab": "X", "url": nginx.url("/")}))
        .await;
    assert!(
        opened["url"]
            .as_str()
            .unwrap_or("")
            .contains("/accounts/login/?next=/"),
        "{opened}"
    );
    let refused = b
        .run(json!({"op": "eval", "tab": "X", "js":
            "new Promise((resolve) => { const es = new EventSource('/notifications/stream/'); \
             es.addEventListener('connection_established', () => resolve('opened')); \
             es.onerror = () => { if (es.readyState === EventSource.CLOSED) resolve('refused'); }; })"}))
        .await;
    assert_eq!(refused, "refused", "{}", logs(&b));
    let status = b
        .run(json!({"op": "eval", "tab": "X", "js": "fetch('/notifications/stream/').then((r) => r.status)"}))
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        alice_ids(&node).await.len(),
        2,
        "nothing registered for the anonymous tab"
    );

    // Logging out (from tab A's page, which stays open) closes both
    // streams; their reconnections are refused, so they stay closed.
    let logged_out = b
        .run(json!({"op": "eval", "tab": "A", "js":
            "fetch('/accounts/logout/', {method: 'POST', headers: {'X-CSRFToken': \
             document.querySelector('[name=csrfmiddlewaretoken]').value}}).then((r) => r.status)"}))
        .await;
    assert_eq!(
        logged_out,
        200,
        "logout answered {logged_out}\n{}",
        logs(&b)
    );
    for tab in ["A", "B"] {
        b.wait_shown(tab, "its stream closed", |s| s["state"] == "closed")
            .await;
    }
    assert!(alice_ids(&node).await.is_empty(), "{}", logs(&b));
    // The helper tries again later, and is refused again.
    let refusals = || {
        nginx
            .access_log()
            .lines()
            .filter(|l| l.contains("GET /notifications/stream/") && l.contains("\" 401 "))
            .count()
    };
    let before = refusals();
    let again = eventually(Duration::from_secs(20), || {
        let n = refusals();
        async move { n >= before + 2 }
    })
    .await;
    assert!(again, "the closed tabs did not try again\n{}", logs(&b));
    for tab in ["A", "B"] {
        assert_ne!(b.shown(tab)["state"], "open", "tab {tab}\n{}", logs(&b));
    }
    assert!(alice_ids(&node).await.is_empty());
    assert!(
        !b.br.seen.iter().any(|v| v["type"] == "pageerror"),
        "{}",
        logs(&b)
    );
    let status = b.br.finish(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        logs(&b)
    );
}

/// Token mode: the stream straight to the daemon (cross-origin, listed in
/// `stream.cors_origins`), tokens of 4 s from the site's token view; the
/// helper renews each a second before it expires. Messages sent every
/// 150 ms across several renewals arrive exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_renewal_misses_nothing() {
    let chromium = browser_tools();
    tokio::time::timeout(TIME_LIMIT, token_mode(chromium))
        .await
        .expect("the token mode test did not finish within its time limit");
}

async fn token_mode(chromium: PathBuf) {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("token.secret");
    std::fs::write(&secret, "a-secret-shared-by-the-site-and-the-daemon\n").unwrap();
    let site_port = free_port();
    let node = BinaryNode::on(
        &Env::memory(),
        &format!(
            "[stream]\nretry_ms = 500\ncors_origins = [\"http://127.0.0.1:{site_port}\"]\n\n\
             [auth]\nmode = \"token\"\ntoken_secret_file = \"{}\"\n\n\
             [limits]\nmax_connections_per_user = 2\n",
            secret.display()
        ),
    )
    .await;
    let site = Site::start(
        site_port,
        &[
            ("SSE_NOTIFY_URL", node.admin_url("")),
            (
                "EXAMPLE_TRUSTED_ORIGINS",
                format!("http://127.0.0.1:{site_port}"),
            ),
            ("EXAMPLE_TOKEN_MODE", "1".into()),
            ("EXAMPLE_STREAM_URL", node.stream_url()),
            ("SSE_NOTIFY_JWT_SECRET_FILE", secret.display().to_string()),
            ("SSE_NOTIFY_JWT_TTL", "4".into()),
        ],
    );
    let mut b = Browser::start(&chromium).await;
    let logs = |b: &Browser| {
        format!(
            "{}\n--- runserver\n{}\n--- sse-notify\n{}",
            b.report(),
            site.log(),
            node.log()
        )
    };
    b.run(json!({"op": "context", "name": "alice"})).await;
    b.run(
        json!({"op": "open", "context": "alice", "tab": "A", "url": format!("{}/", site.origin())}),
    )
    .await;
    b.run(json!({"op": "login", "tab": "A", "username": "alice", "password": PASSWORD}))
        .await;
    let first = b.wait_shown("A", "an open stream", is_open).await;
    // The first renewal's stream request is held 1.5 s: the messages sent
    // meanwhile reach no stream, and come only from the replay that the
    // renewed stream's last event id asks for.
    b.run(json!({"op": "delay", "tab": "A", "ms": 1500})).await;

    // Messages every 150 ms until the tab has shown three connections
    // (two renewals), then a few more.
    let mut sent = Vec::new();
    let mut while_held = 0;
    let mut connections = vec![first["connectionId"].clone()];
    let mut after = 0;
    while after < 5 {
        assert!(
            sent.len() < 200,
            "no two renewals within 30 s\n{}",
            logs(&b)
        );
        let text = format!("n{}", sent.len());
        let id = send_ok(
            &node.admin_base(),
            json!({"to": "alice", "event": "note", "data": {"text": text}}),
        )
        .await;
        sent.push((text, id));
        let held = b.br.seen.iter().any(|v| v["type"] == "delayed");
        b.br.settle(Duration::from_millis(150)).await;
        if held && connections.len() == 1 {
            while_held += 1;
        }
        let now = b.shown("A")["connectionId"].clone();
        if now.is_string() && !connections.contains(&now) {
            connections.push(now);
        }
        if connections.len() >= 3 {
            after += 1;
        }
    }
    let last = sent.last().unwrap().0.clone();
    let shown = b
        .wait_shown("A", "every message", |s| notes(s, &last).len() == 1)
        .await;
    let got: Vec<(String, String)> = shown["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["text"].as_str().unwrap_or_default().to_string(),
                n["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        sent,
        "each message exactly once, in order, across {} connections\n{}",
        connections.len(),
        logs(&b)
    );
    assert!(
        while_held >= 3,
        "only {while_held} messages were sent while the renewal was held\n{}",
        logs(&b)
    );
    println!(
        "token mode: {} messages over {} connections, {while_held} of them while a renewal was held",
        sent.len(),
        connections.len()
    );
    assert_eq!(
        alice_ids(&node).await.len(),
        1,
        "the replaced streams are closed"
    );

    // A reconnection with an id the daemon does not know: the page is told
    // (its onHistoryGap shows a line).
    b.run(
        json!({"op": "eval", "tab": "A", "js": "sse.lastEventId = 'not-an-id'; sse.renew(); true"}),
    )
    .await;
    b.wait_shown("A", "the history gap", |s| {
        s["notes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["text"] == "(some notifications may be missing)")
        })
    })
    .await;

    // Two more tabs with limits.max_connections_per_user = 2: the oldest
    // (A) is evicted, shows it, and stays closed (reopening it would evict
    // another tab in turn), while B and C go on renewing.
    for tab in ["B", "C"] {
        b.run(json!({"op": "open", "context": "alice", "tab": tab, "url": format!("{}/", site.origin())}))
            .await;
        b.wait_shown(tab, "an open stream", is_open).await;
    }
    b.wait_shown("A", "its eviction", |s| s["state"] == "evicted")
        .await;
    let c_first = b.shown("C")["connectionId"].clone();
    b.wait_shown("C", "a renewed stream", |s| {
        is_open(s) && s["connectionId"] != c_first
    })
    .await;
    assert_eq!(b.shown("A")["state"], "evicted", "{}", logs(&b));
    let mut ids = alice_ids(&node).await;
    ids.sort();
    let mut shown: Vec<String> = ["B", "C"]
        .iter()
        .map(|t| {
            b.shown(t)["connectionId"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    shown.sort();
    assert_eq!(ids, shown, "the registry holds B and C only\n{}", logs(&b));

    // Tab C stops renewing ahead (its next renewal 1000 s away): within the
    // wait only the daemon ends its stream, at exp (plus its leeway) with
    // token_expired, and the helper reopens it with a fresh token and the
    // last event id (the user-visible guarantee; a helper without the
    // token_expired handler would get there too, through the refused
    // reconnection and its backoff); a message sent before arrives once.
    let c_before = b
        .run(json!({"op": "eval", "tab": "C", "js":
            "sse.options.renewBefore = -1000; sse.renew(); new Promise((resolve) => \
             setTimeout(() => resolve(document.getElementById('connection-id').textContent), 1000))"}))
        .await;
    let c_before = b
        .wait_shown("C", "the stream reopened once more", |s| {
            is_open(s) && s["connectionId"] != c_before
        })
        .await["connectionId"]
        .clone();
    let text = "sent before the token ran out";
    send_ok(
        &node.admin_base(),
        json!({"to": "alice", "event": "note", "data": {"text": text}}),
    )
    .await;
    let after = b
        .wait_shown("C", "a stream reopened after token_expired", |s| {
            is_open(s) && s["connectionId"] != c_before && notes(s, text).len() == 1
        })
        .await;
    assert_eq!(notes(&after, text).len(), 1, "{}", logs(&b));
    let status = b.br.finish(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        logs(&b)
    );
}
