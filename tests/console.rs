//! The admin console (`GET {base}/admin/`, README "Admin console").
//!
//! In a real browser (Debian's Chromium driven by playwright-core through
//! `tests/browser/run.mjs`), against two real nodes sharing one Redis with
//! `api.token` set: the page asks for the token; a wrong one gets nothing
//! (the page shows no data and every console route answers it 401); with
//! the right one the page lists both nodes, watches a user's stream appear
//! (with the node holding it) and vanish, refuses a malformed message in
//! the form, sends one from the form that arrives on the user's stream,
//! names the registry's counts before a full clear, disconnects a user
//! (the stream ends), and lists a topic followed on both nodes with its
//! followers and sends to it from the form.
//!
//! Without the browser: the console's routes answer 401 without the token
//! (the page and its assets excepted), 404 on the public listener, and the
//! node's report in Redis comes and goes with the node.
#[path = "clients/child.rs"]
mod child;
mod common;

use std::path::Path;
use std::time::Duration;

use child::{browser_tools, JsonChild};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "console-s3cret";
const TIME_LIMIT: Duration = Duration::from_secs(90);

/// An admin request with the bearer `token` (none: `None`).
async fn with_token(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = http().request(method.clone(), url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// A 200 envelope's JSON.
async fn ok_json(resp: reqwest::Response, what: &str) -> Value {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (status, &body["code"]),
        (200, &json!(200)),
        "{what}: {body}"
    );
    body
}

/// The node id a node reports on `/healthz`.
async fn node_id(admin_base: &str) -> String {
    let resp = with_token(
        reqwest::Method::GET,
        &format!("{admin_base}/healthz"),
        None,
        None,
    )
    .await;
    let body: Value = resp.json().await.expect("healthz JSON");
    body["node_id"].as_str().expect("node_id").to_string()
}

// ---- the browser -----------------------------------------------------------

/// How many `evaluated` answers the page gave so far.
fn evaluated(seen: &[Value]) -> usize {
    seen.iter().filter(|v| v["type"] == "evaluated").count()
}

/// Runs the JavaScript expression `js` in the console page (a promise is
/// awaited) and returns its value.
async fn eval(br: &mut JsonChild, js: &str, within: Duration) -> Value {
    let before = evaluated(&br.seen);
    br.command(&json!({"page": 0, "eval": js}).to_string())
        .await;
    let answered = br
        .wait_until(within, |s| {
            s.iter().any(|v| v["type"] == "fatal") || evaluated(s) > before
        })
        .await;
    br.assert_no_fatal();
    assert!(answered, "the page did not answer {js}\n{}", br.report());
    br.seen
        .iter()
        .rev()
        .find(|v| v["type"] == "evaluated")
        .map(|v| v["result"].clone())
        .unwrap_or(Value::Null)
}

/// Waits in the page until the expression `cond` is truthy (re-evaluated
/// every 100 ms for at most `ms`) and returns its last value.
async fn page_until(br: &mut JsonChild, cond: &str, ms: u64) -> Value {
    let js = format!(
        "new Promise((resolve) => {{ const t0 = Date.now(); const f = () => {{ let v = null; \
         try {{ v = ({cond}); }} catch (e) {{ v = null; }} \
         if (v || Date.now() - t0 > {ms}) resolve(v === undefined ? null : v); \
         else setTimeout(f, 100); }}; f(); }})"
    );
    eval(br, &js, Duration::from_millis(ms + 5000)).await
}

/// `cond` must hold within `ms`, or the test fails naming `what`.
async fn expect_page(
    br: &mut JsonChild,
    what: &str,
    cond: &str,
    ms: u64,
    logs: &dyn Fn() -> String,
) -> Value {
    let v = page_until(br, cond, ms).await;
    let truthy = !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
    assert!(
        truthy,
        "{what}: never true within {ms} ms: {cond}\n{}\n{}",
        br.report(),
        logs()
    );
    v
}

/// Runs `action` in the page with `el` bound to the element `selector`.
async fn on_element(br: &mut JsonChild, selector: &str, action: &str) {
    let js = format!(
        "(() => {{ const el = document.querySelector({sel}); if (!el) return 'missing'; {action}; return 'done'; }})()",
        sel = json!(selector)
    );
    let r = eval(br, &js, Duration::from_secs(5)).await;
    assert_eq!(r, "done", "{action} on {selector}\n{}", br.report());
}

async fn click(br: &mut JsonChild, selector: &str) {
    on_element(br, selector, "el.click()").await;
}

/// Sets the value of the input `selector` (as typing would, with its
/// input event).
async fn fill(br: &mut JsonChild, selector: &str, value: &str) {
    let action = format!(
        "el.value = {}; el.dispatchEvent(new Event('input', {{bubbles: true}}))",
        json!(value)
    );
    on_element(br, selector, &action).await;
}

/// Submits the form `selector` as its button would.
async fn submit(br: &mut JsonChild, selector: &str) {
    on_element(br, selector, "el.requestSubmit()").await;
}

/// Types `token` into the page's token form and submits it.
async fn submit_token(br: &mut JsonChild, token: &str) {
    fill(br, "#token-input", token).await;
    submit(br, "#token-form").await;
}

/// Fills the send form's event and data and submits it.
async fn send_form(br: &mut JsonChild, event: &str, data: &str) {
    fill(br, "#send-event", event).await;
    fill(br, "#send-data", data).await;
    submit(br, "#send-form").await;
}

/// Waits until the console lists `user` with `count` connections (`None`:
/// until it is not listed).
async fn expect_user(
    br: &mut JsonChild,
    what: &str,
    user: &str,
    count: Option<&str>,
    logs: &dyn Fn() -> String,
) {
    let cond = format!("{} === {}", user_row(user), json!(count));
    expect_page(br, what, &cond, 15_000, logs).await;
}

/// The user's row in the console's user list: its connection count, or
/// null while it is not listed.
fn user_row(user: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('#users tbody tr[data-user=\"{user}\"]'); \
         return r ? r.cells[1].textContent : null; }})()"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn console_in_chromium() {
    let chromium = browser_tools();
    tokio::time::timeout(
        TIME_LIMIT + Duration::from_secs(15),
        browser_scenario(&chromium),
    )
    .await
    .expect("the console test did not finish within its time limit");
}

async fn browser_scenario(chromium: &Path) {
    let redis = RedisServer::start();
    let extra = format!(
        "[api]\ntoken = \"{TOKEN}\"\n\n[stream]\nheartbeat_secs = 1\n\n[auth]\nmode = \"none\"\npublic_topics = [\"*\"]\n"
    );
    let a = BinaryNode::spawn(&redis.url(), &extra).await;
    let b = BinaryNode::spawn(&redis.url(), &extra).await;
    let (id_a, id_b) = (
        node_id(&a.admin_url("")).await,
        node_id(&b.admin_url("")).await,
    );
    let logs = || format!("--- node a log\n{}\n--- node b log\n{}", a.log(), b.log());

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/run.mjs"))
        .arg(a.admin_url("/notifications/admin/"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CHROMIUM", chromium);
    let mut br = JsonChild::spawn("node tests/browser/run.mjs (console)", cmd, TIME_LIMIT);
    let up = br
        .wait_until(Duration::from_secs(30), |s| {
            s.iter()
                .any(|v| v["type"] == "fatal" || v["type"] == "ready")
        })
        .await;
    br.assert_no_fatal();
    assert!(
        up,
        "the console page did not load\n{}\n{}",
        br.report(),
        logs()
    );

    // 1. The page asks for the token; a wrong one gets nothing.
    expect_page(
        &mut br,
        "the page asks for the token",
        "document.getElementById('login').checkVisibility() && !document.getElementById('main').checkVisibility()",
        10_000,
        &logs,
    )
    .await;
    submit_token(&mut br, "wrong-token").await;
    expect_page(
        &mut br,
        "a wrong token is refused",
        "document.getElementById('login-error').textContent.includes('refused')",
        10_000,
        &logs,
    )
    .await;
    let shown = eval(
        &mut br,
        "({main_hidden: !document.getElementById('main').checkVisibility(), \
           nodes: document.querySelectorAll('#nodes tbody tr').length, \
           users: document.querySelectorAll('#users tbody tr').length, \
           serving: document.getElementById('serving').textContent, \
           kept: sessionStorage.length})",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        shown,
        json!({"main_hidden": true, "nodes": 0, "users": 0, "serving": "", "kept": 0}),
        "with a wrong token the page shows nothing and keeps no token\n{}",
        br.report()
    );
    // What the page's origin gets from each console route with that token.
    let statuses = eval(
        &mut br,
        "Promise.all(['/admin/events', '/admin/users?limit=5', '/admin/connections/alice', \
           '/connections/', '/send/'].map((p) => fetch(document.documentElement.dataset.base + p, \
           {headers: {Authorization: 'Bearer wrong-token'}}).then((r) => r.status)))",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        statuses,
        json!([401, 401, 401, 401, 401]),
        "a wrong token from the page's own origin\n{}",
        br.report()
    );

    // 2. The right token: both nodes of the deployment are listed.
    submit_token(&mut br, TOKEN).await;
    let nodes_js = format!(
        "(() => {{ const ids = [...document.querySelectorAll('#nodes tbody tr')].map((r) => r.dataset.node); \
         return ids.includes({a}) && ids.includes({b}) && \
         document.getElementById('live-state').textContent === 'live' && \
         document.getElementById('nodes').checkVisibility() && \
         !document.getElementById('login').checkVisibility() ? ids : null; }})()",
        a = json!(id_a),
        b = json!(id_b)
    );
    expect_page(&mut br, "both nodes listed, live", &nodes_js, 15_000, &logs).await;

    // 3. A user's stream (on node b) appears, with its node; then vanishes.
    let user = "console-watch";
    let (mut tab, conn_id) =
        SseClient::connect_url(&format!("{}?user={user}", b.stream_url()), user).await;
    expect_user(
        &mut br,
        "the new stream's user appears",
        user,
        Some("1"),
        &logs,
    )
    .await;
    click(
        &mut br,
        &format!("#users tbody tr[data-user=\"{user}\"] button"),
    )
    .await;
    let detail = expect_page(
        &mut br,
        "the user's connection with its node",
        &format!(
            "(() => {{ const r = document.querySelector('#user-connections tbody tr[data-connection=\"{conn_id}\"]'); \
             return r ? [r.cells[0].textContent, r.cells[1].textContent] : null; }})()"
        ),
        10_000,
        &logs,
    )
    .await;
    assert_eq!(detail, json!([conn_id, id_b]), "{}", br.report());
    drop(tab);
    expect_user(
        &mut br,
        "the closed stream's user vanishes",
        user,
        None,
        &logs,
    )
    .await;

    // 4. Send from the form to a user's stream: malformed input is refused
    // in the page (nothing sent), a good message arrives.
    let user = "console-target";
    let (t, conn_id) =
        SseClient::connect_url(&format!("{}?user={user}", a.stream_url()), user).await;
    tab = t;
    expect_user(&mut br, "the target user appears", user, Some("1"), &logs).await;
    fill(&mut br, "#send-to", user).await;
    send_form(&mut br, "console.test", "{\"from\": \"console\"").await;
    expect_page(
        &mut br,
        "malformed JSON refused in the page",
        "document.getElementById('send-error').textContent.startsWith('data:')",
        5_000,
        &logs,
    )
    .await;
    send_form(&mut br, "bad event", "{\"from\": \"console\", \"n\": 1}").await;
    expect_page(
        &mut br,
        "a bad event name refused in the page",
        "document.getElementById('send-error').textContent.startsWith('event:')",
        5_000,
        &logs,
    )
    .await;
    send_form(&mut br, "console.test", "{\"from\": \"console\", \"n\": 1}").await;
    let sent = expect_page(
        &mut br,
        "the form's send answered",
        "document.getElementById('send-result').dataset.messageId || null",
        10_000,
        &logs,
    )
    .await;
    let counted = eval(
        &mut br,
        "document.getElementById('send-result').dataset.connections",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        counted,
        "1",
        "routed to the user's one connection\n{}",
        br.report()
    );
    // The first thing on the stream after connection_established: the
    // refused attempts sent nothing.
    let ev = tab
        .next_event(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the form's message never reached {user}'s stream\n{}",
                logs()
            )
        });
    assert_eq!(ev.event, "console.test", "{ev:?}");
    assert_eq!(ev.id, sent.as_str().unwrap(), "{ev:?}");
    let data: Value = serde_json::from_str(&ev.data).expect("JSON data");
    assert_eq!(data, json!({"from": "console", "n": 1}));

    // 5. A full clear is confirmed with the registry's counts named
    // (cancelled here).
    click(&mut br, "#full-clear").await;
    let text = expect_page(
        &mut br,
        "the clear's confirmation",
        "document.getElementById('confirm').open && document.getElementById('confirm-text').textContent",
        5_000,
        &logs,
    )
    .await;
    assert!(
        text.as_str()
            .unwrap()
            .contains("all 1 connection record(s) of 1 user(s)"),
        "{text}"
    );
    click(&mut br, "#confirm-cancel").await;

    // 6. Disconnect the user from the console: its stream ends, it leaves
    // the list.
    click(
        &mut br,
        &format!("#users tbody tr[data-user=\"{user}\"] button"),
    )
    .await;
    expect_page(
        &mut br,
        "the target's connection shown",
        &format!(
            "!!document.querySelector('#user-connections tbody tr[data-connection=\"{conn_id}\"]')"
        ),
        10_000,
        &logs,
    )
    .await;
    click(&mut br, "#disconnect-user").await;
    let question = expect_page(
        &mut br,
        "the disconnect's confirmation",
        "document.getElementById('confirm').open && document.getElementById('confirm-text').textContent",
        5_000,
        &logs,
    )
    .await;
    assert!(question.as_str().unwrap().contains(user), "{question}");
    click(&mut br, "#confirm-ok").await;
    assert!(
        tab.ends_within(Duration::from_secs(5)).await,
        "the disconnected user's stream did not end\n{}",
        logs()
    );
    expect_page(
        &mut br,
        "the disconnect reported",
        "document.getElementById('detail-result').textContent.includes('1 connection(s) closed')",
        5_000,
        &logs,
    )
    .await;
    expect_user(&mut br, "the disconnected user vanishes", user, None, &logs).await;

    // 7. A topic followed on both nodes: listed with its counts, its
    // followers with their nodes, and a message sent to it from the form
    // reaches both streams (and not a stream of the same user that does
    // not follow it).
    let topic = "doc:console";
    let follow =
        |node: &BinaryNode, user: &str| format!("{}?user={user}&topics={topic}", node.stream_url());
    let (mut reader_a, ra) = SseClient::connect_url(&follow(&a, "reader-a"), "reader-a").await;
    let (mut reader_b, rb) = SseClient::connect_url(&follow(&b, "reader-b"), "reader-b").await;
    let (mut other, _) =
        SseClient::connect_url(&format!("{}?user=reader-a", a.stream_url()), "reader-a").await;
    let row = format!(
        "(() => {{ const r = document.querySelector('#topics tbody tr[data-topic=\"{topic}\"]'); \
         return r ? [r.cells[1].textContent, r.cells[2].textContent] : null; }})()"
    );
    let counts = expect_page(&mut br, "the topic listed", &row, 15_000, &logs).await;
    assert_eq!(
        counts,
        json!(["2", "2"]),
        "2 connections of 2 users\n{}",
        br.report()
    );
    click(
        &mut br,
        &format!("#topics tbody tr[data-topic=\"{topic}\"] button"),
    )
    .await;
    let followers = expect_page(
        &mut br,
        "the topic's followers with their nodes",
        "(() => { const rows = [...document.querySelectorAll('#topic-connections tbody tr')]; \
         return rows.length === 2 ? rows.map((r) => [r.cells[0].textContent, r.dataset.connection, r.cells[2].textContent]) : null; })()",
        10_000,
        &logs,
    )
    .await;
    assert_eq!(
        followers,
        json!([["reader-a", ra, id_a], ["reader-b", rb, id_b]]),
        "{}",
        br.report()
    );
    let chosen = eval(
        &mut br,
        "[document.querySelector('input[name=target]:checked').value, document.getElementById('send-topic').value]",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        chosen,
        json!(["topic", topic]),
        "clicking a topic picks it in the send form"
    );
    send_form(&mut br, "console.topic", "{\"to\": \"the topic\"}").await;
    let sent = expect_page(
        &mut br,
        "the form's topic send answered",
        "document.getElementById('send-result').textContent.includes('topic doc:console') && document.getElementById('send-result').dataset.messageId",
        10_000,
        &logs,
    )
    .await;
    for tab in [&mut reader_a, &mut reader_b] {
        let ev = tab
            .next_event(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("the topic's message never arrived\n{}", logs()));
        assert_eq!(
            (ev.event.as_str(), ev.id.as_str()),
            ("console.topic", sent.as_str().unwrap()),
            "{ev:?}"
        );
    }
    let counted = eval(
        &mut br,
        "document.getElementById('send-result').dataset.connections",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(counted, "2", "{}", br.report());
    // The same user's stream that does not follow it: its first message
    // is the one sent to its user after.
    let marker = with_token(
        reqwest::Method::POST,
        &a.admin_url("/notifications/send/"),
        Some(TOKEN),
        Some(json!({"to": "reader-a", "data": "marker"})),
    )
    .await;
    ok_json(marker, "marker").await;
    let ev = other
        .next_event(Duration::from_secs(5))
        .await
        .expect("the marker");
    assert_eq!(
        ev.data, "\"marker\"",
        "a stream not following the topic got {ev:?}"
    );

    let errors: Vec<&Value> = br
        .seen
        .iter()
        .filter(|v| v["type"] == "pageerror")
        .collect();
    assert!(errors.is_empty(), "errors in the page: {errors:?}");
    let status = br.finish(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "run.mjs exit: {status:?}\n{}",
        br.report()
    );
}

// ---- without a browser ----------------------------------------------------

/// Opens a stream of `user` following `topics` (comma-separated), allowed
/// by the proxy's header as nginx would pass it.
async fn follow(node: &impl Node, user: &str, topics: &str) -> (SseClient, String) {
    let url = format!("{}?topics={topics}", node.stream_url());
    let mut tab = SseClient::open(
        &url,
        &[("X-Remote-User", user), ("X-Remote-Topics", topics)],
    )
    .await;
    assert_eq!(tab.status, 200, "stream of {user} following {topics}");
    let ev = tab
        .next_event(Duration::from_secs(5))
        .await
        .expect("connection_established");
    let data: Value = serde_json::from_str(&ev.data).expect("connection_established JSON");
    (
        tab,
        data["connection_id"]
            .as_str()
            .expect("connection_id")
            .to_string(),
    )
}

on_every_engine! {
    async fn console_routes_need_the_token_but_the_page(env: Env) {
        let mut config = env.config();
        config.api.token = sse_notify::config::Secret(TOKEN.to_string());
        let node = TestNode::start(config).await;
        let base = node.admin_url("/notifications/admin");

        // The page and its assets: no data, no token needed.
        for (path, kind) in [("/", "text/html"), ("", "text/html"), ("/console.js", "text/javascript"), ("/console.css", "text/css")] {
            let resp = with_token(reqwest::Method::GET, &format!("{base}{path}"), None, None).await;
            assert_eq!(resp.status(), 200, "{path}");
            let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with(kind), "{path}: {ct}");
            let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_string();
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        }
        let page = with_token(reqwest::Method::GET, &format!("{base}/"), None, None).await.text().await.unwrap();
        assert!(page.contains("src=\"/notifications/admin/console.js\""), "{page}");

        // Everything else: 401 without the token or with a wrong one.
        for path in ["/events", "/users", "/users?limit=5", "/connections/alice", "/topics", "/topics/doc:1", "/nope"] {
            for token in [None, Some("wrong")] {
                let resp = with_token(reqwest::Method::GET, &format!("{base}{path}"), token, None).await;
                let body = expect_envelope(resp, 401, &format!("{path} with {token:?}")).await;
                assert!(body["data"].is_null(), "{path}: {body}");
            }
        }

        // With it: the live stream starts with the ring, then ticks.
        let resp = with_token(reqwest::Method::GET, &format!("{base}/events"), Some(TOKEN), None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut stream = RawStream::of(resp);
        assert!(stream.wait_for("event: hello", Duration::from_secs(5)).await, "{}", stream.text());
        assert!(stream.wait_for("event: tick", Duration::from_secs(5)).await, "{}", stream.text());
        let text = stream.text();
        let tick = text
            .split("event: tick\ndata: ")
            .nth(1)
            .and_then(|rest| rest.split('\n').next())
            .expect("a tick's data line");
        let tick: Value = serde_json::from_str(tick).expect("tick JSON");
        let me = node.daemon.node_id().to_string();
        assert_eq!(tick["node_id"], me.as_str());
        assert_eq!(tick["nodes"][0]["node_id"], me.as_str(), "{tick}");
        assert_eq!(tick["nodes"][0]["engine"], env.engine(), "{tick}");
        assert_eq!(tick["users"], 0, "{tick}");

        // A user's connections with the node that holds them; the list.
        let (_tab, id) = SseClient::connect(&node, "carol").await;
        let resp = with_token(reqwest::Method::GET, &format!("{base}/connections/carol"), Some(TOKEN), None).await;
        let body = ok_json(resp, "console user").await;
        assert_eq!(body["data"]["connections"][0]["connection_id"], id.as_str(), "{body}");
        assert_eq!(body["data"]["connections"][0]["node_id"], me.as_str(), "{body}");
        let resp = with_token(reqwest::Method::GET, &format!("{base}/users?prefix=car"), Some(TOKEN), None).await;
        let body = ok_json(resp, "console users").await;
        assert_eq!(body["data"]["users"], json!([{"username": "carol", "connection_count": 1}]), "{body}");
    }

    async fn console_user_search_pages_by_prefix(env: Env) {
        let node = TestNode::start(env.config()).await;
        let mut tabs = Vec::new();
        for user in ["al", "albert", "alice", "alina", "bob", "ak"] {
            tabs.push(SseClient::connect(&node, user).await);
        }
        let (_second_tab, _) = SseClient::connect(&node, "alice").await;
        // Every page of a search, by the cursors the console is given.
        let search = |prefix: &'static str, limit: usize| {
            let base = node.admin_url("/notifications/admin/users");
            async move {
                let mut pages = Vec::new();
                let mut cursor = String::new();
                loop {
                    let url = format!("{base}?prefix={prefix}&limit={limit}&cursor={cursor}");
                    let resp = with_token(reqwest::Method::GET, &url, None, None).await;
                    let data = ok_json(resp, &url).await["data"].clone();
                    let page: Vec<(String, u64)> = data["users"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|u| (u["username"].as_str().unwrap().to_string(), u["connection_count"].as_u64().unwrap()))
                        .collect();
                    pages.push(page);
                    match data["next_cursor"].as_str() {
                        Some(next) => cursor = next.to_string(),
                        None => return pages,
                    }
                    assert!(pages.len() < 10, "no end to the pages of {prefix}: {pages:?}");
                }
            }
        };
        let pages = search("al", 2).await;
        let names: Vec<Vec<&str>> = pages.iter().map(|p| p.iter().map(|(u, _)| u.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["al", "albert"], vec!["alice", "alina"]], "{pages:?}");
        assert_eq!(pages[1][0].1, 2, "alice's two connections: {pages:?}");
        let pages = search("", 4).await;
        let all: Vec<&str> = pages.iter().flatten().map(|(u, _)| u.as_str()).collect();
        assert_eq!(all, ["ak", "al", "albert", "alice", "alina", "bob"], "{pages:?}");
        assert_eq!(search("zed", 3).await, vec![Vec::new()]);
        assert_eq!(search("b", 1).await.concat(), [("bob".to_string(), 1)]);
    }

    async fn console_lists_topics_by_prefix_with_their_followers(env: Env) {
        let node = TestNode::start(env.config()).await;
        let me = node.daemon.node_id().to_string();
        let (_a1, a1) = follow(&node, "alice", "doc:1,doc:2").await;
        let (_a2, a2) = follow(&node, "alice", "doc:1").await;
        let (_b, b) = follow(&node, "bob", "doc:1").await;
        let (carol, _) = follow(&node, "carol", "team/7").await;
        let (_dave, _) = SseClient::connect(&node, "dave").await;
        let admin = node.admin_url("/notifications/admin");
        let get = |path: String| {
            let url = format!("{admin}{path}");
            async move { ok_json(with_token(reqwest::Method::GET, &url, None, None).await, &url).await["data"].clone() }
        };

        let all = get("/topics".into()).await;
        assert_eq!(
            all,
            json!({"topics": [
                {"topic": "doc:1", "connection_count": 3, "user_count": 2},
                {"topic": "doc:2", "connection_count": 1, "user_count": 1},
                {"topic": "team/7", "connection_count": 1, "user_count": 1}],
              "topic_count": 3, "next_cursor": null}),
            "every followed topic with its counts, by name"
        );
        // A search, a page at a time by the cursors given.
        let mut names = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = get(format!("/topics?prefix=doc:&limit=1&cursor={cursor}")).await;
            let topics = page["topics"].as_array().unwrap().clone();
            assert!(topics.len() <= 1, "{page}");
            names.extend(topics.iter().map(|t| t["topic"].as_str().unwrap().to_string()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = next.to_string(),
                None => break,
            }
            assert!(names.len() < 5, "no end to the pages: {names:?}");
        }
        assert_eq!(names, ["doc:1", "doc:2"]);
        let exact = get("/topics?prefix=team/7".into()).await;
        assert_eq!(exact["topics"], json!([{"topic": "team/7", "connection_count": 1, "user_count": 1}]), "{exact}");
        for none in ["zz", "doc%20"] {
            let page = get(format!("/topics?prefix={none}")).await;
            assert_eq!(page["topics"], json!([]), "prefix {none}: {page}");
        }

        // One topic's followers, each stream with its user and node.
        let doc1 = get("/topics/doc%3A1".into()).await;
        assert_eq!((doc1["topic"].clone(), doc1["connection_count"].clone(), doc1["user_count"].clone()), (json!("doc:1"), json!(3), json!(2)), "{doc1}");
        assert_eq!(doc1["users"], json!(["alice", "bob"]), "{doc1}");
        let followers: Vec<(String, String, String)> = doc1["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["connection_id"].as_str().unwrap().into(), c["username"].as_str().unwrap().into(), c["node_id"].as_str().unwrap().into()))
            .collect();
        assert_eq!(
            followers,
            [(a1, "alice".into(), me.clone()), (a2, "alice".into(), me.clone()), (b, "bob".into(), me.clone())],
            "oldest first"
        );
        let team = get("/topics/team%2F7".into()).await;
        assert_eq!(team["users"], json!(["carol"]), "a topic with a slash, encoded: {team}");
        assert_eq!(
            get("/topics/doc:404".into()).await,
            json!({"topic": "doc:404", "connection_count": 0, "user_count": 0, "users": [], "connections": []}),
            "a topic nobody follows: zeros"
        );
        let url = format!("{admin}/topics/doc%2042");
        let bad = expect_envelope(with_token(reqwest::Method::GET, &url, None, None).await, 400, &url).await;
        assert!(bad["message"].as_str().unwrap().contains("topic"), "{bad}");

        // A topic goes with its last follower.
        drop(carol);
        let gone = eventually(Duration::from_secs(5), || {
            let list = get("/topics".into());
            async move { list.await["topic_count"] == json!(2) }
        })
        .await;
        assert!(gone, "team/7 still listed after its one stream closed");
    }

    async fn console_is_not_on_the_public_listener(env: Env) {
        let node = TestNode::start(env.config()).await;
        for path in ["/notifications/admin/", "/notifications/admin/events", "/notifications/admin/console.js"] {
            let resp = http()
                .get(format!("http://{}{path}", node.public))
                .send()
                .await
                .expect("public listener");
            expect_envelope(resp, 404, path).await;
        }
        // ... while the admin listener serves it.
        let resp = http().get(node.admin_url("/notifications/admin/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
}

/// The node's report in Redis (README "Redis layout"): in the nodes set
/// and its own hash with an expiry while it runs, gone once it stopped;
/// a full clear of the registry leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_report_in_redis_comes_and_goes_with_the_node() {
    let env = Env::redis();
    let mut node = TestNode::start(env.config()).await;
    let me = node.daemon.node_id().to_string();
    let mut conn = env.redis_server().unwrap().conn();
    let listed = eventually(Duration::from_secs(5), || {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg("sse:nodes")
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap();
        let listed = ids.contains(&me);
        async move { listed }
    })
    .await;
    assert!(listed, "{me} never appeared in sse:nodes");
    let (clear_status, _) = admin(
        reqwest::Method::POST,
        &node.admin_url("/notifications/connections/"),
        None,
    )
    .await;
    assert_eq!(clear_status, 200);
    let key = format!("sse:node:{me}");
    let h: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap();
    assert_eq!(h.get("node_id"), Some(&me), "{h:?}");
    assert_eq!(h.get("engine").map(String::as_str), Some("redis"), "{h:?}");
    assert_eq!(
        h.get("version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION")),
        "{h:?}"
    );
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
    assert!(ttl > 0 && ttl <= 30, "TTL of {key}: {ttl}");

    node.stop().await;
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg("sse:nodes")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert!(
        !ids.contains(&me),
        "{me} still listed after it stopped: {ids:?}"
    );
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut conn).unwrap();
    assert_eq!(exists, 0, "{key} left after the node stopped");
}
