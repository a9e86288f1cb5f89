//! The command line as a sysadmin uses it (README "Command line", "Configuration"): the real binary,
//! and, where the command talks to a node, a real `sse-notify serve`.
//! What a node answers runs on both engines (the embedded engine's
//! `cleanup`, `clear` and `connections` go through the node's admin API);
//! reading and writing Redis with no node running is Redis-only, on a
//! private redis-server.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the CLI with a chosen environment and working directory.
fn cli_with(args: &[&str], env_config: Option<&Path>, cwd: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("SSE_NOTIFY_CONFIG");
    if let Some(p) = env_config {
        cmd.env("SSE_NOTIFY_CONFIG", p);
    }
    let out = cmd.output().expect("run sse-notify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` as a config file in `dir` and returns its path.
fn config_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A config file for CLI commands against `redis_url` (ports unused).
fn cli_config(dir: &Path, redis_url: &str, extra: &str) -> PathBuf {
    write_config(dir, redis_url, extra)
}

/// Asserts the CLI error convention: the exit code, nothing on stdout,
/// exactly one non-empty line on stderr that contains every `needles`.
fn assert_one_line_error(out: &(i32, String, String), code: i32, needles: &[&str], what: &str) {
    let (rc, stdout, stderr) = out;
    assert_eq!(
        *rc, code,
        "{what}: exit code; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: exactly one line on stderr, got:\n{stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "{what}: stderr should name {n:?}, got: {stderr}"
        );
    }
}

fn keys(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> = redis::cmd("KEYS").arg(pattern).query(conn).unwrap();
    k.sort();
    k
}

fn users_set(conn: &mut redis::Connection) -> Vec<String> {
    let mut u: Vec<String> = redis::cmd("SMEMBERS").arg("sse:users").query(conn).unwrap();
    u.sort();
    u
}

fn parse_json(stdout: &str, what: &str) -> Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON document ({e}):\n{stdout}"))
}

fn parse_toml(stdout: &str, what: &str) -> toml::Table {
    toml::from_str(stdout).unwrap_or_else(|e| panic!("{what}: output is not TOML ({e}):\n{stdout}"))
}

fn toml_get<'a>(t: &'a toml::Table, section: &str, key: &str) -> &'a toml::Value {
    t.get(section)
        .and_then(|s| s.as_table())
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("effective config lacks {section}.{key}"))
}

/// A fixture of three records: alice has two (the second one older), bob one.
fn inject_fixture(conn: &mut redis::Connection) -> Value {
    let t = 1_700_000_000.25;
    inject_record(conn, "a-newer", "alice", t + 10.5, t + 20.125, "node-x");
    inject_record(conn, "a-older", "alice", t + 1.5, t + 19.75, "node-y");
    inject_record(conn, "b-only", "bob", t + 5.0, t + 21.0, "node-x");
    let rec = |id: &str, user: &str, ct: f64, hb: f64| json!({"connection_id": id, "username": user, "connection_time": ct, "last_heartbeat": hb, "topics": []});
    json!({
        "active_users": ["alice", "bob"],
        "user_count": 2,
        "total_connections": 3,
        "connection_details": {
            "alice": [rec("a-older", "alice", t + 1.5, t + 19.75), rec("a-newer", "alice", t + 10.5, t + 20.125)],
            "bob": [rec("b-only", "bob", t + 5.0, t + 21.0)],
        }
    })
}

// ----------------------------------------------------------- check-config

#[test]
fn check_config_of_the_sample_file_prints_the_effective_config() {
    let sample = manifest_dir().join("etc/sse-notify.toml");
    let (rc, stdout, stderr) = cli(&["check-config", "-c", sample.to_str().unwrap()]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let t = parse_toml(&stdout, "check-config sample");
    assert_eq!(
        toml_get(&t, "server", "listen").as_str(),
        Some("127.0.0.1:8090")
    );
    assert_eq!(
        toml_get(&t, "server", "admin_listen").as_str(),
        Some("127.0.0.1:8091")
    );
    assert_eq!(
        toml_get(&t, "stream", "heartbeat_secs").as_integer(),
        Some(15)
    );
    assert_eq!(toml_get(&t, "stream", "retry_ms").as_integer(), Some(3000));
    assert_eq!(
        toml_get(&t, "sweep", "stale_timeout_secs").as_integer(),
        Some(300)
    );
    assert_eq!(toml_get(&t, "startup", "clear").as_bool(), Some(true));
    assert_eq!(toml_get(&t, "redis", "url").as_str(), Some(""));
    assert!(
        stdout.contains("# engine: memory"),
        "check-config names the engine the sample selects: {stdout}"
    );
    // Every section of README "Configuration" is shown.
    for section in [
        "server", "redis", "stream", "sweep", "startup", "history", "auth", "api", "limits", "log",
    ] {
        assert!(
            t.contains_key(section),
            "section [{section}] missing:\n{stdout}"
        );
    }
}

#[test]
fn check_config_without_a_file_uses_the_defaults() {
    let etc = Path::new("/etc/sse-notify/sse-notify.toml");
    assert!(
        !etc.exists(),
        "{} exists on this machine: check-config would read it, and this test \
         checks the defaults used when there is no file; move it aside to run it",
        etc.display()
    );
    let cwd = tempfile::tempdir().unwrap();
    let (rc, stdout, stderr) = cli_with(&["check-config"], None, cwd.path());
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let defaults = parse_toml(&stdout, "check-config defaults");
    assert_eq!(
        toml_get(&defaults, "server", "listen").as_str(),
        Some("127.0.0.1:8090")
    );
    assert_eq!(
        toml_get(&defaults, "stream", "heartbeat_secs").as_integer(),
        Some(15)
    );
    assert_eq!(
        toml_get(&defaults, "sweep", "interval_secs").as_integer(),
        Some(60)
    );
    // The sample documents the defaults: same effective config.
    let sample = manifest_dir().join("etc/sse-notify.toml");
    let (rc, sample_out, _) = cli(&["check-config", "-c", sample.to_str().unwrap()]);
    assert_eq!(rc, 0);
    assert_eq!(defaults, parse_toml(&sample_out, "check-config sample"));
}

#[test]
fn check_config_honours_sse_notify_config_and_c_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let from_env = config_file(
        dir.path(),
        "env.toml",
        "[stream]\nheartbeat_secs = 7\n[sweep]\nstale_timeout_secs = 100\n",
    );
    let from_flag = config_file(dir.path(), "flag.toml", "[stream]\nretry_ms = 1234\n");

    let (rc, stdout, stderr) = cli_with(&["check-config"], Some(&from_env), dir.path());
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let t = parse_toml(&stdout, "check-config with $SSE_NOTIFY_CONFIG");
    assert_eq!(
        toml_get(&t, "stream", "heartbeat_secs").as_integer(),
        Some(7)
    );
    assert_eq!(
        toml_get(&t, "sweep", "stale_timeout_secs").as_integer(),
        Some(100)
    );

    // An invalid file named by the variable is an error: it is really read.
    let bad = config_file(dir.path(), "bad.toml", "[stream]\nheartbeat_sec = 3\n");
    let out = cli_with(&["check-config"], Some(&bad), dir.path());
    assert_one_line_error(&out, 2, &["heartbeat_sec"], "$SSE_NOTIFY_CONFIG invalid");

    // -c wins over the variable.
    let (rc, stdout, stderr) = cli_with(
        &["check-config", "-c", from_flag.to_str().unwrap()],
        Some(&bad),
        dir.path(),
    );
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let t = parse_toml(&stdout, "check-config -c over env");
    assert_eq!(toml_get(&t, "stream", "retry_ms").as_integer(), Some(1234));
    assert_eq!(
        toml_get(&t, "stream", "heartbeat_secs").as_integer(),
        Some(15)
    );
}

#[test]
fn check_config_rejects_an_unknown_key_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = config_file(dir.path(), "c.toml", "[stream]\nheartbeat_sec = 3\n");
    let out = cli(&["check-config", "-c", f.to_str().unwrap()]);
    assert_one_line_error(&out, 2, &["heartbeat_sec"], "unknown key");

    let f = config_file(dir.path(), "s.toml", "[strem]\nheartbeat_secs = 3\n");
    let out = cli(&["check-config", "-c", f.to_str().unwrap()]);
    assert_one_line_error(&out, 2, &["strem"], "unknown section");
}

#[test]
fn check_config_rejects_bad_values_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("[stream]\nheartbeat_secs = \"x\"\n", "heartbeat_secs"),
        ("[stream]\nheartbeat_secs = -1\n", "heartbeat_secs"),
        (
            "[stream]\nheartbeat_secs = 10\n[sweep]\nstale_timeout_secs = 20\n",
            "stale_timeout_secs",
        ),
        (
            "[stream]\nheartbeat_secs = 10\n[sweep]\nstale_timeout_secs = 5\n",
            "stale_timeout_secs",
        ),
        (
            "[auth]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "trusted_proxies",
        ),
        (
            "[auth]\ntrusted_proxies = [\"not-a-cidr\"]\n",
            "trusted_proxies",
        ),
        ("[server]\nlisten = \"nope\"\n", "listen"),
        ("[server]\nadmin_listen = \"127.0.0.1\"\n", "admin_listen"),
        ("[auth]\nmode = \"magic\"\n", "mode"),
        ("[log]\nformat = \"xml\"\n", "format"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let f = config_file(dir.path(), &format!("c{i}.toml"), text);
        let out = cli(&["check-config", "-c", f.to_str().unwrap()]);
        assert_one_line_error(&out, 2, &[key], &format!("config {text:?}"));
    }

    // Just above twice the heartbeat is fine.
    let f = config_file(
        dir.path(),
        "ok.toml",
        "[stream]\nheartbeat_secs = 10\n[sweep]\nstale_timeout_secs = 21\n",
    );
    let (rc, stdout, stderr) = cli(&["check-config", "-c", f.to_str().unwrap()]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[test]
fn check_config_of_a_missing_file_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = cli(&["check-config", "-c", missing.to_str().unwrap()]);
    assert_one_line_error(&out, 2, &["nope.toml"], "missing file");
}

#[test]
fn check_config_masks_the_api_token_and_the_redis_password() {
    let dir = tempfile::tempdir().unwrap();
    let f = config_file(
        dir.path(),
        "c.toml",
        "[api]\ntoken = \"hunter2-admin-token\"\n[redis]\nurl = \"redis://app:s3cr3t-pw@127.0.0.1:6379/0\"\n",
    );
    let (rc, stdout, stderr) = cli(&["check-config", "-c", f.to_str().unwrap()]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains("hunter2"), "token shown:\n{stdout}");
    assert!(
        !stdout.contains("s3cr3t"),
        "redis password shown:\n{stdout}"
    );
    assert!(!stderr.contains("hunter2") && !stderr.contains("s3cr3t"));
    let t = parse_toml(&stdout, "masked");
    let token = toml_get(&t, "api", "token").as_str().unwrap();
    assert!(
        !token.is_empty(),
        "a set token must show as set (masked), not as empty"
    );
    let url = toml_get(&t, "redis", "url").as_str().unwrap();
    assert!(url.contains("127.0.0.1:6379"), "{url}");
}

#[test]
fn check_config_refuses_a_bad_cluster_url_saying_why_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("redis+cluster://:s3cr3t-pw@10.0.0.1:7000/2", "database 0"),
        ("redis+cluster://:s3cr3t-pw@/", "host:port"),
        ("rediss+cluster://:s3cr3t-pw@10.0.0.1:7000", "TLS"),
    ];
    for (i, (url, why)) in cases.iter().enumerate() {
        let f = config_file(
            dir.path(),
            &format!("c{i}.toml"),
            &format!("[redis]\nurl = \"{url}\"\n"),
        );
        let out = cli(&["check-config", "-c", f.to_str().unwrap()]);
        assert_one_line_error(&out, 2, &["redis.url", why], url);
        assert!(!out.2.contains("s3cr3t"), "password shown: {}", out.2);
    }
}

#[test]
fn check_config_accepts_a_cluster_url_naming_the_engine_and_masking_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let f = config_file(
        dir.path(),
        "c.toml",
        // History is not kept on a cluster yet: check-config requires it off.
        "[redis]\nurl = \"redis+cluster://app:s3cr3t-pw@10.0.0.1:7000,10.0.0.2:7001/\"\n\
         [history]\nenabled = false\n",
    );
    let (rc, stdout, stderr) = cli(&["check-config", "-c", f.to_str().unwrap()]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("# engine: redis-cluster"), "{stdout}");
    assert!(!stdout.contains("s3cr3t") && !stderr.contains("s3cr3t"));
    let t = parse_toml(&stdout, "cluster");
    let url = toml_get(&t, "redis", "url").as_str().unwrap();
    assert_eq!(url, "redis+cluster://app:****@10.0.0.1:7000,10.0.0.2:7001/");
}

// ------------------------------------------------------------ connections

#[test]
fn connections_reads_redis_directly_without_a_node() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), &redis.url(), "");
    let cfg = cfg.to_str().unwrap();

    // Empty registry.
    let (rc, stdout, stderr) = cli(&["connections", "-c", cfg]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("0 connections of 0 users"),
        "empty registry in words:\n{stdout}"
    );
    let (rc, stdout, _) = cli(&["connections", "--json", "-c", cfg]);
    assert_eq!(rc, 0);
    assert_eq!(
        parse_json(&stdout, "empty --json"),
        json!({"active_users": [], "user_count": 0, "total_connections": 0, "connection_details": {}})
    );

    let mut conn = redis.conn();
    let expected = inject_fixture(&mut conn);

    let (rc, stdout, stderr) = cli(&["connections", "-c", cfg]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("3 connections of 2 users"),
        "counts in words:\n{stdout}"
    );
    for id in ["a-newer", "a-older", "b-only"] {
        assert!(stdout.contains(id), "{id} listed:\n{stdout}");
    }

    let (rc, stdout, stderr) = cli(&["connections", "--json", "-c", cfg]);
    assert_eq!(rc, 0, "stderr:\n{stderr}");
    assert_eq!(parse_json(&stdout, "connections --json"), expected);

    // One user.
    let (rc, stdout, _) = cli(&["connections", "alice", "-c", cfg]);
    assert_eq!(rc, 0);
    assert!(
        stdout.contains("2 connections"),
        "alice in words:\n{stdout}"
    );
    let (rc, stdout, _) = cli(&["connections", "alice", "--json", "-c", cfg]);
    assert_eq!(rc, 0);
    assert_eq!(
        parse_json(&stdout, "connections alice --json"),
        json!({
            "username": "alice",
            "connection_count": 2,
            "connection_ids": ["a-older", "a-newer"],
            "connections": expected["connection_details"]["alice"],
        })
    );
    let (rc, stdout, _) = cli(&["connections", "bob", "-c", cfg]);
    assert_eq!(rc, 0);
    assert!(stdout.contains("1 connection"), "bob in words:\n{stdout}");
    assert!(!stdout.contains("1 connections"), "singular:\n{stdout}");

    // Unknown user: count 0, empty lists, not an error.
    let (rc, stdout, _) = cli(&["connections", "carol", "--json", "-c", cfg]);
    assert_eq!(rc, 0);
    assert_eq!(
        parse_json(&stdout, "connections carol --json"),
        json!({"username": "carol", "connection_count": 0, "connection_ids": [], "connections": []})
    );
    let (rc, stdout, _) = cli(&["connections", "carol", "-c", cfg]);
    assert_eq!(rc, 0);
    assert!(stdout.contains("0 connections"), "{stdout}");
}

/// The `server.node_id` a node was started with (its config file).
fn node_id_of(node: &BinaryNode) -> String {
    let text = std::fs::read_to_string(&node.config_path).expect("config");
    let t = parse_toml(&text, "node config");
    toml_get(&t, "server", "node_id")
        .as_str()
        .expect("node_id")
        .to_string()
}

on_every_engine! {
    /// `--json` prints exactly the `data` of the API answer, read while a
    /// node serves live streams; the words and the table are the same in
    /// both engines (the NODE column names the node that holds the stream).
    async fn connections_json_equals_the_api_data_of_a_running_node(env: Env) {
        let node = BinaryNode::on(&env, "").await;
        let cfg = node.cli_config();

        // Empty registry.
        let (rc, stdout, stderr) = cli_async(&["connections", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!(stdout.trim(), "0 connections of 0 users", "empty registry in words");
        let (rc, stdout, stderr) = cli_async(&["connections", "--json", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stderr:\n{stderr}");
        assert_eq!(
            parse_json(&stdout, "empty --json"),
            json!({"active_users": [], "user_count": 0, "total_connections": 0, "connection_details": {}})
        );

        let (_a1, a1) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (_a2, a2) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (_b1, b1) = SseClient::connect_url(&node.stream_url(), "bob").await;

        let get = |path: &str| {
            let url = node.admin_url(path);
            async move { admin(reqwest::Method::GET, &url, None).await }
        };
        let mut matched = false;
        for _ in 0..5 {
            let (s1, api1) = get("/notifications/connections/").await;
            let (_, cli_out, _) = cli_async(&["connections", "--json", "-c", &cfg]).await;
            let (s2, api2) = get("/notifications/connections/").await;
            assert_eq!((s1, s2), (200, 200));
            if api1 != api2 {
                continue; // a heartbeat landed in between; read again
            }
            let data = &api1["data"];
            assert_eq!(data["total_connections"], 3);
            assert_eq!(data["active_users"], json!(["alice", "bob"]));
            let alice_ids: Vec<&str> = data["connection_details"]["alice"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["connection_id"].as_str().unwrap())
                .collect();
            assert_eq!(alice_ids, vec![a1.as_str(), a2.as_str()]);
            assert_eq!(
                data["connection_details"]["bob"][0]["connection_id"],
                b1.as_str()
            );
            assert_eq!(parse_json(&cli_out, "connections --json"), *data);

            let (_, u1) = get("/notifications/connections/alice/").await;
            let (_, cli_user, _) = cli_async(&["connections", "alice", "--json", "-c", &cfg]).await;
            let (_, u2) = get("/notifications/connections/alice/").await;
            if u1 != u2 {
                continue;
            }
            assert_eq!(
                parse_json(&cli_user, "connections alice --json"),
                u1["data"]
            );
            matched = true;
            break;
        }
        assert!(matched, "registry never stable long enough to compare");

        // Words: the counts, then one table row per connection; NODE names
        // the node that holds the stream, also when the CLI's config does
        // not say which node it is (a sysadmin's own file).
        let node_id = node_id_of(&node);
        let text = std::fs::read_to_string(&node.cli_config_path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let anonymous = config_file(
            dir.path(),
            "anonymous.toml",
            &text.replace(&format!("node_id = \"{node_id}\""), ""),
        );
        for file in [cfg.as_str(), anonymous.to_str().unwrap()] {
            let (rc, stdout, stderr) = cli_async(&["connections", "-c", file]).await;
            assert_eq!(rc, 0, "stderr:\n{stderr}");
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines.first(), Some(&"3 connections of 2 users"), "{stdout}");
            let header: Vec<&str> = lines[1].split_whitespace().collect();
            assert_eq!(
                header,
                ["USER", "CONNECTION_ID", "CONNECTED", "LAST_HEARTBEAT", "NODE"],
                "{stdout}"
            );
            let rows: Vec<Vec<&str>> = lines[2..].iter().map(|l| l.split_whitespace().collect()).collect();
            let got: Vec<(&str, &str, &str)> = rows
                .iter()
                .map(|r| (r[0], r[1], *r.last().unwrap()))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("alice", a1.as_str(), node_id.as_str()),
                    ("alice", a2.as_str(), node_id.as_str()),
                    ("bob", b1.as_str(), node_id.as_str()),
                ],
                "-c {file}:\n{stdout}"
            );
        }

        // One user, in words; an unknown one is a count of 0, not an error.
        let (rc, stdout, _) = cli_async(&["connections", "bob", "-c", &cfg]).await;
        assert_eq!(rc, 0);
        assert_eq!(stdout.lines().next(), Some("bob: 1 connection"), "{stdout}");
        let (rc, stdout, _) = cli_async(&["connections", "carol", "--json", "-c", &cfg]).await;
        assert_eq!(rc, 0);
        assert_eq!(
            parse_json(&stdout, "connections carol --json"),
            json!({"username": "carol", "connection_count": 0, "connection_ids": [], "connections": []})
        );
        let (rc, stdout, _) = cli_async(&["connections", "carol", "-c", &cfg]).await;
        assert_eq!(rc, 0);
        assert_eq!(stdout.trim(), "carol: 0 connections");

        // Any username reaches the node intact (the path is encoded); one
        // that no stream could have is a usage error, asked of nobody.
        let (rc, stdout, _) = cli_async(&["connections", "döra k/l?#%", "-c", &cfg]).await;
        assert_eq!(rc, 0);
        assert_eq!(stdout.trim(), "döra k/l?#%: 0 connections");
        let long = "x".repeat(151);
        let out = cli_async(&["connections", &long, "-c", &cfg]).await;
        assert_one_line_error(&out, 2, &["USER"], "151-character username");
    }
}

// ---------------------------------------------------------------- cleanup

#[test]
fn cleanup_removes_only_stale_records() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), &redis.url(), "");
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn();
    let t = now();
    inject_record(
        &mut conn,
        "stale-a1",
        "alice",
        t - 2000.0,
        t - 1000.0,
        "dead",
    );
    inject_record(
        &mut conn,
        "stale-a2",
        "alice",
        t - 2000.0,
        t - 900.0,
        "dead",
    );
    inject_record(&mut conn, "stale-b", "bob", t - 2000.0, t - 800.0, "dead");
    inject_record(&mut conn, "fresh-a", "alice", t - 100.0, t - 1.0, "live");
    inject_record(&mut conn, "fresh-c", "carol", t - 100.0, t - 10.0, "live");

    let (rc, stdout, stderr) = cli(&["cleanup", "--timeout", "300", "-c", cfg]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("removed 3 connections of 2 users"),
        "counts in words:\n{stdout}"
    );
    assert_eq!(
        registry_ids(&mut conn, "sse"),
        sorted(&["fresh-a", "fresh-c"])
    );
    // No orphans: bob is gone everywhere, alice keeps her live one.
    assert_eq!(users_set(&mut conn), sorted(&["alice", "carol"]));
    assert!(keys(&mut conn, "sse:user:bob").is_empty());
    assert_eq!(
        keys(&mut conn, "sse:conn:*"),
        sorted(&["sse:conn:fresh-a", "sse:conn:fresh-c"])
    );
    let alice: Vec<String> = redis::cmd("ZRANGE")
        .arg("sse:user:alice")
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .unwrap();
    assert_eq!(alice, vec!["fresh-a".to_string()]);

    // Nothing stale left: a second run removes nothing.
    let (rc, stdout, _) = cli(&["cleanup", "--timeout", "300", "-c", cfg]);
    assert_eq!(rc, 0);
    assert!(
        stdout.contains("removed 0 connections of 0 users"),
        "{stdout}"
    );
}

#[test]
fn cleanup_json_prints_counts_and_connection_ids() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), &redis.url(), "");
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn();
    let t = now();
    inject_record(&mut conn, "old-1", "alice", t - 500.0, t - 120.0, "dead");
    inject_record(&mut conn, "old-2", "bob", t - 500.0, t - 90.0, "dead");
    inject_record(&mut conn, "new-1", "bob", t - 500.0, t - 5.0, "live");

    let (rc, stdout, stderr) = cli(&["cleanup", "--timeout", "60", "--json", "-c", cfg]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let v = parse_json(&stdout, "cleanup --json");
    assert_eq!(v["connection_count"], 2, "{v}");
    assert_eq!(v["user_count"], 2, "{v}");
    let ids: BTreeSet<&str> = v["connection_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("connection_ids list: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["old-1", "old-2"]));
    assert_eq!(
        v.as_object().unwrap().len(),
        3,
        "exactly the API data fields: {v}"
    );
    assert_eq!(registry_ids(&mut conn, "sse"), vec!["new-1".to_string()]);
}

#[test]
fn cleanup_timeout_defaults_to_the_configured_stale_timeout() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(
        dir.path(),
        &redis.url(),
        "[sweep]\nstale_timeout_secs = 100\n",
    );
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn();
    let t = now();
    inject_record(
        &mut conn,
        "older-than-100",
        "alice",
        t - 500.0,
        t - 200.0,
        "dead",
    );
    inject_record(
        &mut conn,
        "younger-than-100",
        "alice",
        t - 500.0,
        t - 50.0,
        "live",
    );

    let (rc, stdout, stderr) = cli(&["cleanup", "-c", cfg]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("removed 1 connection of 1 user"),
        "{stdout}"
    );
    assert_eq!(
        registry_ids(&mut conn, "sse"),
        vec!["younger-than-100".to_string()]
    );
}

on_every_engine! {
    /// `cleanup` against the records of a running node: a timeout longer
    /// than their age removes nothing, a timeout of 0 removes them all and
    /// `--json` names them (the live ones are written back).
    async fn cleanup_with_a_running_node_counts_what_it_removes(env: Env) {
        // Heartbeats every 15 s (the default): no heartbeat rewrites a record
        // while the scenario runs.
        let node = BinaryNode::on(&env, "").await;
        let cfg = node.cli_config();
        let (_a1, a1) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (_a2, a2) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (_b1, b1) = SseClient::connect_url(&node.stream_url(), "bob").await;

        let (rc, stdout, stderr) = cli_async(&["cleanup", "--timeout", "3600", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert_eq!(stdout.trim(), "removed 0 connections of 0 users");
        let (rc, stdout, stderr) =
            cli_async(&["cleanup", "--timeout", "3600", "--json", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stderr:\n{stderr}");
        assert_eq!(
            parse_json(&stdout, "cleanup --json, nothing stale"),
            json!({"connection_count": 0, "user_count": 0, "connection_ids": []})
        );
        assert_eq!(listed_ids(&node.admin_base()).await, sorted(&[&a1, &a2, &b1]));

        let (rc, stdout, stderr) =
            cli_async(&["cleanup", "--timeout", "0", "--json", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stderr:\n{stderr}");
        let v = parse_json(&stdout, "cleanup --timeout 0 --json");
        assert_eq!(v["connection_count"], 3, "{v}");
        assert_eq!(v["user_count"], 2, "{v}");
        let ids: BTreeSet<&str> = v["connection_ids"]
            .as_array()
            .unwrap_or_else(|| panic!("connection_ids list: {v}"))
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(ids, BTreeSet::from([a1.as_str(), a2.as_str(), b1.as_str()]));
        assert_eq!(v.as_object().unwrap().len(), 3, "exactly the API data fields: {v}");
        // They were live: their node writes them back at once (README
        // "Remove stale records").
        listed_ids_become(&node.admin_base(), &[&a1, &a2, &b1]).await;

        let out = cli_async(&["cleanup", "--timeout=-5", "-c", &cfg]).await;
        assert_one_line_error(&out, 2, &["--timeout"], "negative --timeout");
    }
}

// ------------------------------------------------------------------ clear

#[test]
fn clear_without_force_refuses_and_changes_nothing() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), &redis.url(), "");
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn();
    inject_fixture(&mut conn);
    let before = keys(&mut conn, "*");

    let (rc, stdout, stderr) = cli(&["clear", "-c", cfg]);
    assert_eq!(rc, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("--force"), "tells how: {stderr}");
    assert!(!stdout.contains("removed"), "{stdout}");
    assert_eq!(keys(&mut conn, "*"), before);
    assert_eq!(
        registry_ids(&mut conn, "sse"),
        sorted(&["a-newer", "a-older", "b-only"])
    );
}

#[test]
fn clear_force_removes_every_record() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), &redis.url(), "");
    let cfg = cfg.to_str().unwrap();
    let mut conn = redis.conn();
    inject_fixture(&mut conn);
    // Something that is not a connection record stays.
    redis::cmd("SET")
        .arg("unrelated")
        .arg("1")
        .query::<()>(&mut conn)
        .unwrap();

    let (rc, stdout, stderr) = cli(&["clear", "--force", "-c", cfg]);
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("removed 3 connections of 2 users"),
        "counts in words:\n{stdout}"
    );
    assert!(registry_ids(&mut conn, "sse").is_empty());
    // Besides, the short-lived mark under which messages go to every node
    // while the running nodes re-register.
    assert_eq!(
        keys(&mut conn, "*"),
        vec!["sse:resyncing".to_string(), "unrelated".to_string()]
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg("sse:resyncing")
        .query(&mut conn)
        .unwrap();
    assert!(ttl > 0 && ttl <= 10_000, "the mark expires: {ttl} ms");

    // --json: counts.
    inject_fixture(&mut conn);
    let (rc, stdout, _) = cli(&["clear", "--force", "--json", "-c", cfg]);
    assert_eq!(rc, 0);
    let v = parse_json(&stdout, "clear --json");
    assert_eq!(v["connection_count"], 3, "{v}");
    assert_eq!(v["user_count"], 2, "{v}");
    assert!(registry_ids(&mut conn, "sse").is_empty());
}

on_every_engine! {
    /// `clear --force` while a node serves: every record goes (with Redis,
    /// a dead node's zombie too), the node lists its live streams again,
    /// and they still receive.
    async fn clear_force_with_a_running_node_leaves_exactly_its_live_connections(env: Env) {
        let node = BinaryNode::on(&env, "").await;
        let (mut a, a_id) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (mut b, b_id) = SseClient::connect_url(&node.stream_url(), "bob").await;
        let cfg = node.cli_config();
        let live = [a_id.as_str(), b_id.as_str()];

        let out = cli_async(&["clear", "-c", &cfg]).await;
        assert_one_line_error(&out, 2, &["--force"], "clear without --force");
        assert_eq!(listed_ids(&node.admin_base()).await, sorted(&live));

        // Only Redis can hold a record no node serves.
        if let Some(redis) = env.redis_server() {
            let t = now();
            inject_record(&mut redis.conn(), "zombie-1", "zed", t - 10.0, t - 1.0, "dead-node");
        }
        let (rc, stdout, stderr) = cli_async(&["clear", "--force", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        let want = match env.redis_server() {
            Some(_) => "removed 3 connections of 3 users",
            None => "removed 2 connections of 2 users",
        };
        assert_eq!(stdout.trim(), want, "live (and zombie) records counted");
        listed_ids_become(&node.admin_base(), &live).await;
        if let Some(redis) = env.redis_server() {
            let mut conn = redis.conn();
            assert_eq!(registry_ids(&mut conn, "sse"), sorted(&live));
            assert!(keys(&mut conn, "sse:conn:zombie-1").is_empty());
            assert!(keys(&mut conn, "sse:user:zed").is_empty());
            assert_eq!(users_set(&mut conn), sorted(&["alice", "bob"]));
        }

        // --json: the counts, the same fields in both engines.
        let (rc, stdout, stderr) = cli_async(&["clear", "--force", "--json", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stderr:\n{stderr}");
        assert_eq!(
            parse_json(&stdout, "clear --force --json"),
            json!({"connection_count": 2, "user_count": 2})
        );
        listed_ids_become(&node.admin_base(), &live).await;

        // And messages reach them.
        let (status, body) = send(
            &node.admin_url(""),
            json!({"to": "alice", "data": "after-clear"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["connections"], 1, "{body}");
        let ev = a.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some("\"after-clear\"".to_string()));
        let (status, _) = send(&node.admin_url(""), json!({"data": "all"})).await;
        assert_eq!(status, 200);
        let ev = b.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some("\"all\"".to_string()));
    }
}

// ------------------------------------------------- embedded engine, no node

/// A CLI config of the embedded engine whose admin address nobody
/// listens on.
fn memory_config_without_node(dir: &Path, extra: &str) -> PathBuf {
    let addr = || format!("127.0.0.1:{}", free_port());
    write_config_at(dir, &addr(), &addr(), "", 3, extra)
}

/// The registry commands of the embedded engine, as the CLI runs them.
const REGISTRY_COMMANDS: &[&[&str]] = &[
    &["connections"],
    &["connections", "--json"],
    &["connections", "alice"],
    &["cleanup"],
    &["cleanup", "--timeout", "10", "--json"],
    &["clear", "--force"],
    &["clear", "--force", "--json"],
];

#[test]
fn embedded_engine_without_a_running_node_is_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = memory_config_without_node(dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    for args in REGISTRY_COMMANDS {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-c", cfg]);
        let started = Instant::now();
        let out = cli(&full);
        assert_one_line_error(
            &out,
            1,
            &["no sse-notify node answers", "admin_listen"],
            &format!("{args:?} with no node"),
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_engine_commands_send_the_configured_api_token() {
    const TOKEN: &str = "t0ken-for-admin";
    let node = BinaryNode::spawn("", &format!("[api]\ntoken = \"{TOKEN}\"\n")).await;
    let (_tab, id) = SseClient::connect_url(&node.stream_url(), "alice").await;
    let cfg = node.cli_config();

    // The API really wants the token.
    let (status, body) = admin(
        reqwest::Method::GET,
        &node.admin_url("/notifications/connections/"),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // With it, the three commands work.
    let (rc, stdout, stderr) = cli_async(&["connections", "--json", "-c", &cfg]).await;
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let v = parse_json(&stdout, "connections --json with the token");
    assert_eq!(
        v["connection_details"]["alice"][0]["connection_id"],
        id.as_str(),
        "{v}"
    );
    let (rc, stdout, stderr) = cli_async(&["cleanup", "--timeout", "3600", "-c", &cfg]).await;
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.trim(), "removed 0 connections of 0 users");
    let (rc, stdout, stderr) = cli_async(&["clear", "--force", "-c", &cfg]).await;
    assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.trim(), "removed 1 connection of 1 user");
    listed_ids_become_with_token(&node, TOKEN, &[id.as_str()]).await;

    // A wrong token, or none, is refused: exit 1, one line, no token shown.
    let text = std::fs::read_to_string(&node.cli_config_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = config_file(
        dir.path(),
        "wrong.toml",
        &text.replace(TOKEN, "wr0ng-token"),
    );
    let none = config_file(
        dir.path(),
        "none.toml",
        &text.replace(&format!("token = \"{TOKEN}\""), ""),
    );
    for (what, file) in [("wrong token", &wrong), ("no token", &none)] {
        for args in REGISTRY_COMMANDS {
            let mut full: Vec<&str> = args.to_vec();
            full.extend(["-c", file.to_str().unwrap()]);
            let out = cli_async(&full).await;
            assert_one_line_error(&out, 1, &["401"], &format!("{args:?} with {what}"));
            assert!(
                !out.2.contains("t0ken") && !out.2.contains("wr0ng"),
                "{args:?} with {what}: the token is not shown: {}",
                out.2
            );
        }
    }
    // Nothing was removed by the refused commands.
    listed_ids_become_with_token(&node, TOKEN, &[id.as_str()]).await;
}

/// [`listed_ids_become`] for a node whose admin API wants `token`.
async fn listed_ids_become_with_token(node: &BinaryNode, token: &str, want: &[&str]) {
    let url = node.admin_url("/notifications/connections/");
    let want = sorted(want);
    let ids = || async {
        let resp = http()
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .expect("listing");
        assert_eq!(resp.status().as_u16(), 200, "listing with the token");
        let data: Value = resp.json().await.expect("listing JSON");
        let mut ids: Vec<String> = data["data"]["connection_details"]
            .as_object()
            .expect("connection_details")
            .values()
            .flat_map(|l| l.as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["connection_id"].as_str().map(String::from))
            .collect();
        ids.sort();
        ids
    };
    let ok = eventually(Duration::from_secs(10), || {
        let want = want.clone();
        async move { ids().await == want }
    })
    .await;
    assert!(
        ok,
        "the node never listed exactly {want:?}; it lists {:?}",
        ids().await
    );
}

// ------------------------------------------------------------------- send

on_every_engine! {
    async fn send_reaches_the_users_tabs_through_the_admin_api(env: Env) {
        let node = BinaryNode::on(&env, "").await;
        let (mut tab1, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (mut tab2, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (mut other, _) = SseClient::connect_url(&node.stream_url(), "bob").await;
        let cfg = node.cli_config();

        let (rc, stdout, stderr) =
            cli_async(&["send", "--to", "alice", r#"{"n":1}"#, "-c", &cfg]).await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.contains("2 connections"),
            "counts in words:\n{stdout}"
        );
        for tab in [&mut tab1, &mut tab2] {
            let ev = tab
                .next_named("message", Duration::from_secs(5))
                .await
                .expect("alice's tab receives the message");
            assert_eq!(ev.data, r#"{"n":1}"#);
        }

        // --json prints the response data; --event names the SSE event.
        let (rc, stdout, stderr) = cli_async(&[
            "send",
            "--to",
            "alice",
            "--event",
            "news",
            "--json",
            r#"[1,"two"]"#,
            "-c",
            &cfg,
        ])
        .await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        let v = parse_json(&stdout, "send --json");
        assert_eq!(v["to"], "alice", "{v}");
        assert_eq!(v["event"], "news", "{v}");
        assert_eq!(v["connections"], 2, "{v}");
        assert_eq!(v["all_connections"], true, "{v}");
        let ev = tab1
            .next_named("news", Duration::from_secs(5))
            .await
            .expect("news event");
        assert_eq!(ev.data, r#"[1,"two"]"#);
        let sent = v["message_id"].as_str().unwrap().to_string();
        assert_eq!(api_id(&ev.id, &sent), sent);

        // Bob got none of alice's messages: his next message is the broadcast.
        let (rc, stdout, stderr) =
            cli_async(&["send", "--event", "news", r#""hello all""#, "-c", &cfg]).await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.contains("3 connections"),
            "broadcast counts:\n{stdout}"
        );
        let ev = other
            .next_event(Duration::from_secs(5))
            .await
            .expect("bob receives the broadcast");
        assert_eq!(
            (ev.event.as_str(), ev.data.as_str()),
            ("news", r#""hello all""#)
        );
        for tab in [&mut tab1, &mut tab2] {
            let ev = tab
                .next_named("news", Duration::from_secs(5))
                .await
                .expect("broadcast reaches every tab");
            if ev.data == r#"[1,"two"]"# {
                // tab2 still had the earlier one queued
                let ev = tab
                    .next_named("news", Duration::from_secs(5))
                    .await
                    .unwrap();
                assert_eq!(ev.data, r#""hello all""#);
            } else {
                assert_eq!(ev.data, r#""hello all""#);
            }
        }
    }
}

on_every_engine! {
    async fn send_first_reaches_only_the_oldest_tab(env: Env) {
        let node = BinaryNode::on(&env, "").await;
        let (mut oldest, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let (mut newer, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let cfg = node.cli_config();

        let (rc, stdout, stderr) = cli_async(&[
            "send",
            "--to",
            "alice",
            "--first",
            "--json",
            r#"{"k":"first"}"#,
            "-c",
            &cfg,
        ])
        .await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        let v = parse_json(&stdout, "send --first --json");
        assert_eq!(v["connections"], 1, "{v}");
        assert_eq!(v["all_connections"], false, "{v}");
        let (rc, _, stderr) = cli_async(&["send", "--to", "alice", r#"{"k":"all"}"#, "-c", &cfg]).await;
        assert_eq!(rc, 0, "{stderr}");

        let ev = oldest.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some(r#"{"k":"first"}"#.to_string()));
        let ev = oldest.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some(r#"{"k":"all"}"#.to_string()));
        // The newer tab's first message is the one sent to all.
        let ev = newer.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some(r#"{"k":"all"}"#.to_string()));
    }
}

on_every_engine! {
    async fn send_with_invalid_json_is_a_usage_error_and_sends_nothing(env: Env) {
        let node = BinaryNode::on(&env, "").await;
        let (mut tab, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let cfg = node.cli_config();

        let out = cli_async(&["send", "--to", "alice", "{not json", "-c", &cfg]).await;
        assert_one_line_error(&out, 2, &["DATA_JSON"], "invalid DATA_JSON");
        // A bad event name is refused by the API: usage error too, nothing sent.
        let out = cli_async(&[
            "send",
            "--to",
            "alice",
            "--event",
            "bad event!",
            "1",
            "-c",
            &cfg,
        ])
        .await;
        assert_eq!(out.0, 2, "bad event name: {out:?}");
        assert!(out.2.contains("event"), "names the field: {}", out.2);

        let (rc, _, stderr) = cli_async(&["send", "--to", "alice", r#""marker""#, "-c", &cfg]).await;
        assert_eq!(rc, 0, "{stderr}");
        let ev = tab.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(
            ev.map(|e| e.data),
            Some(r#""marker""#.to_string()),
            "nothing was sent before the marker"
        );
    }
}

/// A node whose streams may follow any topic, with heartbeats far apart
/// (no record changes between two reads of the same listing).
const TOPICS_NODE: &str = "[auth]\npublic_topics = [\"*\"]\n\n[stream]\nheartbeat_secs = 60\n";

/// A stream of `user` following `topics` (comma-separated).
async fn follow(node: &BinaryNode, user: &str, topics: &str) -> (SseClient, String) {
    SseClient::connect_url(&format!("{}?topics={topics}", node.stream_url()), user).await
}

on_every_engine! {
    async fn send_topic_reaches_the_topics_followers_only(env: Env) {
        let node = BinaryNode::on(&env, TOPICS_NODE).await;
        let (mut alice, _) = follow(&node, "alice", "doc:42").await;
        let (mut bob, _) = follow(&node, "bob", "doc:42,team:7").await;
        let (mut carol, _) = follow(&node, "carol", "team:7").await;
        let cfg = node.cli_config();

        let (rc, stdout, stderr) =
            cli_async(&["send", "--topic", "doc:42", r#"{"n":1}"#, "-c", &cfg]).await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.contains("to topic doc:42: 2 connections"),
            "the topic and the count in words:\n{stdout}"
        );
        for tab in [&mut alice, &mut bob] {
            let ev = tab
                .next_named("message", Duration::from_secs(5))
                .await
                .expect("a follower receives the topic's message");
            assert_eq!(ev.data, r#"{"n":1}"#);
        }

        // --json prints the response data: the topic, no `to`.
        let (rc, stdout, stderr) = cli_async(&[
            "send", "--topic", "team:7", "--event", "standup", "--json", "[7]", "-c", &cfg,
        ])
        .await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        let v = parse_json(&stdout, "send --topic --json");
        let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["connections", "event", "message_id", "topic"]),
            "{v}"
        );
        assert_eq!((&v["topic"], &v["event"], &v["connections"]), (&json!("team:7"), &json!("standup"), &json!(2)));
        // Carol follows team:7 only: its message is the first she gets.
        let ev = carol.next_event(Duration::from_secs(5)).await.expect("carol's first message");
        let sent = v["message_id"].as_str().unwrap().to_string();
        assert_eq!((ev.event.as_str(), ev.data.as_str(), api_id(&ev.id, &sent).as_str()), ("standup", "[7]", sent.as_str()));

        // A topic with a user or --first, or a bad topic: usage errors,
        // nothing sent.
        let out = cli_async(&["send", "--topic", "doc:42", "--to", "alice", "1", "-c", &cfg]).await;
        assert_eq!(out.0, 2, "--topic with --to: {out:?}");
        let out = cli_async(&["send", "--topic", "doc:42", "--first", "1", "-c", &cfg]).await;
        assert_eq!(out.0, 2, "--topic with --first: {out:?}");
        let out = cli_async(&["send", "--topic", "doc 42", "1", "-c", &cfg]).await;
        assert_one_line_error(&out, 2, &["topic"], "a bad topic name");
        let (rc, _, stderr) = cli_async(&["send", "--topic", "doc:42", r#""marker""#, "-c", &cfg]).await;
        assert_eq!(rc, 0, "{stderr}");
        let ev = alice.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some(r#""marker""#.to_string()), "nothing was sent before the marker");
    }
}

on_every_engine! {
    /// `topics` in words and as the API's data, the whole list and one
    /// topic, through the node's admin API.
    async fn topics_lists_the_followed_topics_and_who_follows_one(env: Env) {
        let node = BinaryNode::on(&env, TOPICS_NODE).await;
        let cfg = node.cli_config();
        let (rc, stdout, stderr) = cli_async(&["topics", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stderr:\n{stderr}");
        assert_eq!(stdout.trim(), "0 topics followed");
        let (rc, stdout, _) = cli_async(&["topics", "--json", "-c", &cfg]).await;
        assert_eq!(rc, 0);
        assert_eq!(parse_json(&stdout, "topics --json"), json!({"topics": [], "topic_count": 0}));

        let (_a1, a1) = follow(&node, "alice", "doc:42,team/7").await;
        let (_a2, a2) = follow(&node, "alice", "doc:42").await;
        let (_b1, b1) = follow(&node, "bob", "doc:42").await;
        let (_c1, _) = SseClient::connect_url(&node.stream_url(), "carol").await;

        let (rc, stdout, stderr) = cli_async(&["topics", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stderr:\n{stderr}");
        let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(
            lines,
            vec![
                vec!["2", "topics", "followed"],
                vec!["TOPIC", "CONNECTIONS", "USERS"],
                vec!["doc:42", "3", "2"],
                vec!["team/7", "1", "1"],
            ],
            "{stdout}"
        );
        let get = |path: &str| {
            let url = node.admin_url(path);
            async move { admin(reqwest::Method::GET, &url, None).await }
        };
        let (status, api) = get("/notifications/topics/").await;
        assert_eq!(status, 200, "{api}");
        let (_, stdout, _) = cli_async(&["topics", "--json", "-c", &cfg]).await;
        assert_eq!(parse_json(&stdout, "topics --json"), api["data"]);

        let (rc, stdout, stderr) = cli_async(&["topics", "doc:42", "-c", &cfg]).await;
        assert_eq!(rc, 0, "stderr:\n{stderr}");
        let mut lines = stdout.lines();
        assert_eq!(lines.next(), Some("doc:42: 3 connections of 2 users"), "{stdout}");
        assert!(lines.next().unwrap_or("").starts_with("USER"), "{stdout}");
        let rows: Vec<(&str, &str)> = lines
            .map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                (cells[0], cells[1])
            })
            .collect();
        assert_eq!(
            rows,
            vec![("alice", a1.as_str()), ("alice", a2.as_str()), ("bob", b1.as_str())],
            "its connections, oldest first:\n{stdout}"
        );
        let (_, api) = get("/notifications/topics/doc:42/").await;
        let (_, stdout, _) = cli_async(&["topics", "doc:42", "--json", "-c", &cfg]).await;
        assert_eq!(parse_json(&stdout, "topics doc:42 --json"), api["data"]);
        assert_eq!(api["data"]["users"], json!(["alice", "bob"]), "{api}");

        // A slash in the name, and a topic nobody follows (zeros, not an
        // error).
        let (_, stdout, _) = cli_async(&["topics", "team/7", "--json", "-c", &cfg]).await;
        assert_eq!(parse_json(&stdout, "topics team/7 --json")["users"], json!(["alice"]));
        let (rc, stdout, _) = cli_async(&["topics", "doc:404", "-c", &cfg]).await;
        assert_eq!((rc, stdout.trim()), (0, "doc:404: 0 connections of 0 users"));
        let out = cli_async(&["topics", "doc 42", "-c", &cfg]).await;
        assert_one_line_error(&out, 2, &["TOPIC", "doc 42"], "a bad topic name");
    }
}

#[test]
fn topics_without_a_running_node_is_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cli_config(dir.path(), "redis://127.0.0.1:1/0", "");
    for args in [vec!["topics"], vec!["topics", "doc:42", "--json"]] {
        let mut args = args.clone();
        args.extend(["-c", cfg.to_str().unwrap()]);
        let out = cli(&args);
        assert_one_line_error(
            &out,
            1,
            &["no sse-notify node answers"],
            &format!("{args:?}"),
        );
    }
}

#[test]
fn send_without_a_running_node_is_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    // Nobody listens on the configured admin address.
    let cfg = cli_config(dir.path(), "redis://127.0.0.1:1/0", "");
    let started = Instant::now();
    let out = cli(&["send", "--to", "alice", "{}", "-c", cfg.to_str().unwrap()]);
    assert_one_line_error(&out, 1, &[], "node not running");
    assert!(started.elapsed() < Duration::from_secs(12));
}

on_every_engine! {
    async fn send_authenticates_with_the_configured_api_token(env: Env) {
        let node = BinaryNode::on(&env, "[api]\ntoken = \"t0ken-for-admin\"\n").await;
        let (mut tab, _) = SseClient::connect_url(&node.stream_url(), "alice").await;
        let cfg = node.cli_config();

        // The API really wants the token.
        let (status, body) = send(&node.admin_url(""), json!({"to": "alice", "data": 0})).await;
        assert_eq!(status, 401, "{body}");

        // A config without the token is refused, and nothing is delivered.
        let text = std::fs::read_to_string(&node.cli_config_path).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let no_token = config_file(
            dir.path(),
            "no-token.toml",
            &text.replace("token = \"t0ken-for-admin\"", ""),
        );
        let (rc, stdout, stderr) = cli_async(&[
            "send",
            "--to",
            "alice",
            r#""no token""#,
            "-c",
            no_token.to_str().unwrap(),
        ])
        .await;
        assert_ne!(rc, 0, "refused without the token; stdout:\n{stdout}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("t0ken"), "{stderr}");

        let (rc, stdout, stderr) =
            cli_async(&["send", "--to", "alice", r#""with token""#, "-c", &cfg]).await;
        assert_eq!(rc, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
        let ev = tab.next_named("message", Duration::from_secs(5)).await;
        assert_eq!(ev.map(|e| e.data), Some(r#""with token""#.to_string()));
    }
}

// ------------------------------------------------------- redis unreachable

#[test]
fn redis_unreachable_is_exit_1_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let cfg = cli_config(dir.path(), &url, "");
    let cfg = cfg.to_str().unwrap();
    let commands: &[&[&str]] = &[
        &["connections"],
        &["connections", "--json"],
        &["connections", "alice"],
        &["cleanup"],
        &["cleanup", "--timeout", "10", "--json"],
        &["clear", "--force"],
    ];
    for args in commands {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["-c", cfg]);
        let started = Instant::now();
        let out = cli(&full);
        assert_one_line_error(&out, 1, &["redis"], &format!("{args:?} with redis down"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

// ------------------------------------------------------------------- help

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in [
        "serve",
        "check-config",
        "cleanup",
        "clear",
        "connections",
        "send",
        "topics",
    ] {
        let (rc, stdout, stderr) = cli(&[sub, "--help"]);
        assert_eq!(rc, 0, "{sub} --help: {stderr}");
        assert!(
            stdout.contains("Example"),
            "{sub} --help shows an example:\n{stdout}"
        );
        assert!(stdout.contains("sse-notify"), "{stdout}");
    }
    let (rc, stdout, _) = cli(&["--help"]);
    assert_eq!(rc, 0);
    for sub in [
        "serve",
        "check-config",
        "cleanup",
        "clear",
        "connections",
        "send",
        "topics",
    ] {
        assert!(
            stdout.contains(sub),
            "top-level help lists {sub}:\n{stdout}"
        );
    }
}

#[test]
fn usage_errors_are_exit_2() {
    let (rc, _, stderr) = cli(&["cleanup", "--timeout", "soon"]);
    assert_eq!(rc, 2, "{stderr}");
    let (rc, _, stderr) = cli(&["no-such-command"]);
    assert_eq!(rc, 2, "{stderr}");
    let (rc, _, stderr) = cli(&["send"]);
    assert_eq!(rc, 2, "send needs DATA_JSON: {stderr}");
    for args in [
        ["send", "--topic", "doc:42", "--to", "alice", "1"].as_slice(),
        &["send", "--topic", "doc:42", "--first", "1"],
        &["send", "--topic", "doc:42", "--batch", "-"],
    ] {
        let (rc, _, stderr) = cli(args);
        assert_eq!(rc, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains("--topic"),
            "{args:?} names the clash: {stderr}"
        );
    }
}
