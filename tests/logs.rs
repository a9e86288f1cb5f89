//! The logs of the real binary as journald and a log shipper see them
//! (`[log]`): with `format = "json"` every line is one JSON object with a
//! level, a timestamp and a message; streams opening and closing are logged
//! with their connection id and username; secrets (`api.token`, the Redis
//! password) never appear, not even around failures; text logs written to a
//! file carry no ANSI colour codes.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Map, Value};

const API_TOKEN: &str = "s3cr3t-token-value";
const NEW_API_TOKEN: &str = "n3w-s3cr3t-after-reload";
const REDIS_PASSWORD: &str = "r3dis-pa55word-value";
const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// An admin request with an optional `Authorization` value; the status.
async fn admin_call(
    method: reqwest::Method,
    url: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> u16 {
    let mut req = http().request(method, url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .status()
        .as_u16()
}

/// Every non-empty line of a JSON log, parsed; panics naming the first line
/// that is not a JSON object with `level`, `timestamp` and `message`.
fn json_lines(log: &str) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for (i, line) in log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "log line {} is not JSON ({e}): {line:?}\nwhole log:\n{log}",
                i + 1
            )
        });
        let Value::Object(obj) = v else {
            panic!("log line {} is not a JSON object: {line:?}", i + 1);
        };
        let level = obj.get("level").and_then(Value::as_str).unwrap_or_default();
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "log line {}: level {level:?}: {line:?}",
            i + 1
        );
        let ts = obj
            .get("timestamp")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            looks_like_rfc3339(ts),
            "log line {}: timestamp {ts:?} is not RFC 3339: {line:?}",
            i + 1
        );
        let has_message = obj
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty());
        let has_fields = obj.get("fields").is_some_and(Value::is_object);
        assert!(
            has_message || has_fields,
            "log line {}: neither a message nor fields: {line:?}",
            i + 1
        );
        out.push(obj);
    }
    out
}

/// `2025-01-31T12:34:56.789Z` or with an offset: date, `T`, time.
fn looks_like_rfc3339(ts: &str) -> bool {
    let b = ts.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (ts.ends_with('Z') || ts[19..].contains('+') || ts[19..].contains('-'))
}

/// The message of a parsed line (top level, or under `fields`).
fn message(line: &Map<String, Value>) -> &str {
    line.get("message")
        .or_else(|| line.get("fields").and_then(|f| f.get("message")))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A field of a parsed line (top level, or under `fields`).
fn field<'a>(line: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    line.get(name)
        .or_else(|| line.get("fields").and_then(|f| f.get(name)))
}

fn assert_no_secret(log: &str, secrets: &[&str]) {
    for s in secrets {
        if let Some(line) = log.lines().find(|l| l.contains(s)) {
            panic!("the log holds the secret {s:?}: {line}\nwhole log:\n{log}");
        }
    }
}

async fn wait_for_log(node: &BinaryNode, needle: &str) -> bool {
    node.logged(needle, Duration::from_secs(5)).await
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_stream_fields_and_no_secrets() {
    let mut redis = RedisServer::start_with_password(REDIS_PASSWORD);
    let redis_url = redis.url();
    let extra = format!(
        "[log]\nformat = \"json\"\n\n[api]\ntoken = \"{API_TOKEN}\"\n\n[stream]\nheartbeat_secs = 1\n\n[sweep]\nstale_timeout_secs = 5\n\n[auth]\npublic_topics = [\"doc:*\"]\n"
    );
    let mut node = BinaryNode::spawn(&redis_url, &extra).await;
    let send_url = node.admin_url("/notifications/send/");
    let conns_url = node.admin_url("/notifications/connections/");

    // Admin requests: authorized, unauthorized (one of them a near miss that
    // holds the real token), /healthz without a token.
    use reqwest::Method;
    let right = bearer(API_TOKEN);
    assert_eq!(
        admin_call(Method::GET, &conns_url, Some(&right), None).await,
        200
    );
    assert_eq!(admin_call(Method::GET, &conns_url, None, None).await, 401);
    let near_miss = bearer(&format!("{API_TOKEN}x"));
    assert_eq!(
        admin_call(Method::GET, &conns_url, Some(&near_miss), None).await,
        401
    );
    let wrong_same_len = bearer(&"x".repeat(API_TOKEN.len()));
    assert_eq!(
        admin_call(Method::GET, &conns_url, Some(&wrong_same_len), None).await,
        401
    );
    assert_eq!(
        admin_call(Method::GET, &node.admin_url("/metrics"), Some(&right), None).await,
        200
    );
    assert_eq!(
        admin_call(Method::GET, &node.admin_url("/healthz"), None, None).await,
        200
    );

    // A stream opens (following two topics), gets a message, and closes.
    let (mut client, connection_id) = SseClient::connect_url(
        &format!("{}?topics=doc:2,doc:1", node.stream_url()),
        "alice",
    )
    .await;
    let (status, body) = {
        let resp = http()
            .post(&send_url)
            .header("Authorization", &right)
            .json(&json!({"to": "alice", "event": "greeting", "data": {"text": "hi"}}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 200, "send: {body}");
    assert_eq!(body["data"]["connections"], 1, "send: {body}");
    let ev = client
        .next_named("greeting", Duration::from_secs(5))
        .await
        .expect("the message reaches the stream");
    assert_eq!(ev.data, r#"{"text":"hi"}"#);
    // And one through the CLI, which reads api.token from the same file.
    let config = node.cli_config();
    let (code, out, err) = cli(&["send", "-c", &config, "--to", "alice", r#"{"n":2}"#]);
    assert_eq!(code, 0, "cli send: {out}{err}");
    drop(client);
    assert!(
        wait_for_log(&node, "stream closed").await,
        "no \"stream closed\" line after the client left; log:\n{}",
        node.log()
    );

    // A reload whose new file changes the token and the Redis password:
    // whatever it logs about the change must not name them.
    let text = std::fs::read_to_string(&node.config_path).unwrap();
    let new_redis_url = redis_url.replace(REDIS_PASSWORD, "an0ther-r3dis-pa55");
    let text = text
        .replace(API_TOKEN, NEW_API_TOKEN)
        .replace(&redis_url, &new_redis_url);
    std::fs::write(&node.config_path, text).unwrap();
    node.signal(SIGHUP);
    assert!(
        wait_for_log(&node, "reload: config applied").await,
        "reload not logged; log:\n{}",
        node.log()
    );
    let new_right = bearer(NEW_API_TOKEN);
    assert_eq!(
        admin_call(Method::GET, &conns_url, Some(&new_right), None).await,
        200
    );
    assert_eq!(
        admin_call(Method::GET, &conns_url, Some(&right), None).await,
        401
    );

    // A Redis outage: the errors logged about it must not carry the URL's
    // password either.
    let logged_before = node.log().len();
    redis.kill();
    let down = eventually(Duration::from_secs(10), || async {
        admin_call(
            Method::POST,
            &send_url,
            Some(&new_right),
            Some(json!({"data": 1})),
        )
        .await
            == 503
    })
    .await;
    assert!(down, "send did not answer 503 with Redis down");
    let outage_logged = eventually(Duration::from_secs(10), || async {
        let log = node.log();
        let since = log.get(logged_before..).unwrap_or_default();
        since.contains("\"ERROR\"") || since.contains("\"WARN\"")
    })
    .await;
    assert!(
        outage_logged,
        "the outage was never logged; log:\n{}",
        node.log()
    );

    node.signal(SIGTERM);
    assert_eq!(
        node.wait_exit(Duration::from_secs(20)),
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        node.log()
    );

    let log = node.log();
    let lines = json_lines(&log);
    assert!(!lines.is_empty(), "empty log");
    let with_id = |msg: &str| {
        lines
            .iter()
            .find(|l| {
                message(l) == msg
                    && field(l, "connection_id").and_then(Value::as_str) == Some(&connection_id)
            })
            .unwrap_or_else(|| {
                panic!("no {msg:?} line with connection_id {connection_id}; log:\n{log}")
            })
    };
    for msg in ["stream opened", "stream closed"] {
        let line = with_id(msg);
        assert_eq!(
            field(line, "username").and_then(Value::as_str),
            Some("alice"),
            "{msg}: {line:?}"
        );
        assert_eq!(
            line.get("level").and_then(Value::as_str),
            Some("INFO"),
            "{msg}: {line:?}"
        );
    }
    assert_eq!(
        field(with_id("stream opened"), "topics").and_then(Value::as_str),
        Some("doc:1,doc:2"),
        "the topics a stream follows are logged when it opens"
    );
    assert!(
        lines.iter().any(|l| message(l) == "sse-notify serving"),
        "no start line; log:\n{log}"
    );
    assert!(
        lines.iter().any(|l| message(l) == "stopped"),
        "no \"stopped\" line; log:\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.get("level").and_then(Value::as_str) == Some("ERROR")
                || l.get("level").and_then(Value::as_str) == Some("WARN")),
        "the Redis outage left no warning or error; log:\n{log}"
    );
    assert_no_secret(
        &log,
        &[
            API_TOKEN,
            NEW_API_TOKEN,
            REDIS_PASSWORD,
            "an0ther-r3dis-pa55",
        ],
    );
}

/// A node that cannot reach its Redis logs why and exits 1; the URL it
/// names has its password masked.
#[tokio::test]
async fn json_log_of_unreachable_redis_masks_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", free_port());
    let config = write_config(dir.path(), &url, "[log]\nformat = \"json\"\n");
    let (log, code) = run_to_exit(&config, Duration::from_secs(20));
    assert_eq!(code, Some(1), "exit code without Redis; log:\n{log}");
    let lines = json_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l.get("level").and_then(Value::as_str) == Some("ERROR")),
        "no ERROR line for the failure; log:\n{log}"
    );
    assert!(
        log.contains("127.0.0.1"),
        "the failure does not say which Redis; log:\n{log}"
    );
    assert_no_secret(&log, &[REDIS_PASSWORD]);
}

/// `serve -c FILE` with stdout and stderr to a file, until it exits.
fn run_to_exit(config: &Path, within: Duration) -> (String, Option<i32>) {
    let log_path = config.with_file_name("run.log");
    let mut child = spawn_serve(config, &log_path);
    let code = wait_exit(&mut child, within);
    (std::fs::read_to_string(&log_path).unwrap(), code)
}

#[tokio::test]
async fn text_logs_to_a_file_have_no_ansi_codes() {
    let redis = RedisServer::start();
    let mut node = BinaryNode::spawn(&redis.url(), "").await;
    let (client, connection_id) = SseClient::connect_url(&node.stream_url(), "bob").await;
    drop(client);
    assert!(
        wait_for_log(&node, "stream closed").await,
        "no \"stream closed\" line; log:\n{}",
        node.log()
    );
    // A reload logs a warning about a key that needs a restart: a coloured
    // WARN level would show.
    let text = std::fs::read_to_string(&node.config_path).unwrap();
    std::fs::write(
        &node.config_path,
        text.replace("[redis]", "[redis]\nkey_prefix = \"other\""),
    )
    .unwrap();
    node.signal(SIGHUP);
    assert!(
        wait_for_log(&node, "need a restart").await,
        "no restart warning on reload; log:\n{}",
        node.log()
    );
    node.signal(SIGTERM);
    assert_eq!(node.wait_exit(Duration::from_secs(20)), Some(0));
    let log = node.log();
    assert!(
        !log.contains("\x1b["),
        "ANSI escape codes in a text log written to a file:\n{log:?}"
    );
    let opened = log
        .lines()
        .find(|l| l.contains("stream opened"))
        .unwrap_or_else(|| panic!("no \"stream opened\" line; log:\n{log}"));
    assert!(opened.contains(" INFO "), "{opened}");
    assert!(
        opened.contains(&format!("connection_id={connection_id}")),
        "{opened}"
    );
    assert!(opened.contains("username=bob"), "{opened}");
    let closed = log
        .lines()
        .find(|l| l.contains("stream closed"))
        .unwrap_or_else(|| panic!("no \"stream closed\" line; log:\n{log}"));
    assert!(
        closed.contains(&format!("connection_id={connection_id}")),
        "{closed}"
    );
    // Not JSON: the text format is the default.
    assert!(serde_json::from_str::<Value>(opened).is_err(), "{opened}");
}

/// The `peer` field of "stream opened" is the client's address, as a log
/// shipper can use it (`127.0.0.1:4711`), not Rust's debug form of an
/// optional value (`Some(127.0.0.1:4711)`).
#[tokio::test]
async fn json_log_peer_field_is_a_plain_address() {
    let redis = RedisServer::start();
    let node = BinaryNode::spawn(&redis.url(), "[log]\nformat = \"json\"\n").await;
    let (client, connection_id) = SseClient::connect_url(&node.stream_url(), "dave").await;
    assert!(
        wait_for_log(&node, "stream opened").await,
        "no \"stream opened\" line; log:\n{}",
        node.log()
    );
    drop(client);
    let log = node.log();
    let lines = json_lines(&log);
    let opened = lines
        .iter()
        .find(|l| {
            message(l) == "stream opened"
                && field(l, "connection_id").and_then(Value::as_str) == Some(&connection_id)
        })
        .unwrap_or_else(|| panic!("no \"stream opened\" line for {connection_id}; log:\n{log}"));
    let peer = field(opened, "peer")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("\"stream opened\" without a peer field: {opened:?}"));
    let addr: std::net::SocketAddr = peer.parse().unwrap_or_else(|_| {
        panic!("peer {peer:?} is not an address like \"127.0.0.1:4711\": {opened:?}")
    });
    assert!(addr.ip().is_loopback(), "peer {peer}");
}
